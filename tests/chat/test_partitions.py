"""The opt-in monthly layout of ``mpai_message`` (``mpai.chat.partitions``) on the real
PostgreSQL: the switch from the plain table, what keeps working on it, and retention by
whole partitions. Each test's DDL runs inside its transaction and is rolled back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from mpai.chat import partitions
from mpai.chat.cleanup import cleanup_chat_history
from mpai.chat.history import history_count, message_history
from mpai.models import Conversation, Feedback, Message

pytestmark = pytest.mark.django_db


def message(user, conversation, age: timedelta, **fields) -> Message:
    """A message created ``age`` ago (a negative ``age``: in the future)."""
    msg = Message.objects.create(
        conversation=conversation, owner=user, role="user", content="x", **fields
    )
    Message.objects.filter(pk=msg.pk).update(created_at=timezone.now() - age)
    msg.refresh_from_db()
    return msg


def relkind(name: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [name])
        row = cursor.fetchone()
    return row[0] if row else None


@pytest.fixture
def history(make_user):
    """Two users; messages 150 and 80 days old, and new ones; feedback on an old one."""
    alice, bob = make_user(), make_user()
    rows = {}
    for user in (alice, bob):
        conversation = Conversation.objects.create(owner=user, title="t")
        rows[user.pk] = {
            "old": message(user, conversation, timedelta(days=150)),
            "mid": message(user, conversation, timedelta(days=80)),
            "new": message(user, conversation, timedelta(minutes=5), client_id="c-1"),
        }
    Feedback.objects.create(user=alice, message=rows[alice.pk]["old"], rating="up")
    return alice, bob, rows


def test_the_switch_keeps_every_row_id_key_and_count(history):
    alice, bob, _rows = history
    before = {
        u.pk: list(message_history(user=u).values_list("pk", flat=True)) for u in (alice, bob)
    }
    counts = {u.pk: history_count(user=u) for u in (alice, bob)}
    created = partitions.partition_table()

    assert partitions.is_partitioned()
    assert relkind(partitions.PARENT) == "p"
    assert relkind(partitions.ARCHIVE) == "r"
    assert created[0] == partitions.ARCHIVE
    assert created[-1] == partitions.DEFAULT_PARTITION
    assert next(p.name for p in partitions.partitions()) == partitions.ARCHIVE
    for user in (alice, bob):
        assert list(message_history(user=user).values_list("pk", flat=True)) == before[user.pk]
        assert history_count(user=user) == counts[user.pk]
    # Every index of the plain table is on the parent, under its name, with one child
    # per partition (the archive's own index attached, not rebuilt).
    with connection.cursor() as cursor:
        for name in (
            "mpai_msg_owner_created_idx",
            "mpai_msg_conv_created_idx",
            "mpai_msg_expiry_idx",
            "mpai_msg_streaming_idx",
            "mpai_msg_content_fts_idx",
        ):
            cursor.execute("SELECT count(*) FROM pg_partition_tree(%s::regclass)", [name])
            assert cursor.fetchone()[0] == len(partitions.partitions()) + 1, name
        cursor.execute(
            "SELECT count(*) FROM pg_partition_tree('mpai_msg_owner_created_idx'::regclass) t "
            "JOIN pg_class c ON c.oid = t.relid WHERE c.relname = %s",
            ["mpai_msg_owner_created_idx_archive"],
        )
        assert cursor.fetchone()[0] == 1


def test_new_rows_get_new_ids_land_in_their_month_and_are_counted(history):
    alice, _bob, rows = history
    partitions.partition_table()
    later = timezone.now() + timedelta(days=45)
    partitions.ensure_partitions(now=later)
    top = max(r.pk for user_rows in rows.values() for r in user_rows.values())
    count = history_count(user=alice)
    fresh = message(alice, rows[alice.pk]["new"].conversation, -timedelta(days=45))
    assert fresh.pk > top
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT tableoid::regclass::text FROM {partitions.PARENT} WHERE id = %s", [fresh.pk]
        )
        (table,) = cursor.fetchone()
    assert table == f"{partitions.PARENT}_p{later.year:04d}m{later.month:02d}"
    assert history_count(user=alice) == count + 1


def test_rows_caught_by_the_default_partition_move_to_their_month(history):
    alice, _bob, rows = history
    partitions.partition_table(months_ahead=0)
    stray = message(alice, rows[alice.pk]["new"].conversation, -timedelta(days=70))
    count = history_count(user=alice)
    created = partitions.ensure_partitions(now=timezone.now() + timedelta(days=70))
    assert created
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT tableoid::regclass::text FROM {partitions.PARENT} WHERE id = %s", [stray.pk]
        )
        (table,) = cursor.fetchone()
    assert table in created
    assert history_count(user=alice) == count


def test_client_id_stays_unique_per_user_across_partitions(history):
    alice, bob, rows = history
    partitions.partition_table()
    conversation = rows[alice.pk]["new"].conversation
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(
            conversation=conversation, owner=alice, role="user", content="again", client_id="c-1"
        )
    # Another user's same client_id is theirs to use.
    other = Message.objects.create(
        conversation=rows[bob.pk]["new"].conversation,
        owner=bob,
        role="user",
        content="mine",
        client_id="c-2",
    )
    assert other.pk


def test_retention_drops_whole_months_then_deletes_rows(history):
    """Partitioned now; 100 days later (cutoff 30 days before that) the archive and the
    months wholly before the cutoff are dropped, rows older than it in the month that
    straddles it are deleted, and the rest stays."""
    alice, bob, rows = history
    partitions.partition_table()
    now = timezone.now()
    then = now + timedelta(days=100)
    partitions.ensure_partitions(now=then)
    kept = {}
    for user in (alice, bob):
        conversation = rows[user.pk]["new"].conversation
        message(user, conversation, -timedelta(days=35))  # a month wholly expired
        message(user, conversation, then - now - timedelta(days=30, hours=1) - timedelta(0))
        kept[user.pk] = message(user, conversation, -timedelta(days=90)).pk
    parts_before = {p.name for p in partitions.partitions()}

    dry = cleanup_chat_history(now=then, days=30, dry_run=True)
    assert dry.partitions_dropped >= 1
    assert dry.messages_deleted == 2 * 5
    assert {p.name for p in partitions.partitions()} == parts_before  # nothing changed

    result = cleanup_chat_history(now=then, days=30)
    assert result.partitions_dropped >= 1
    assert result.messages_deleted == 2 * 5
    assert partitions.ARCHIVE not in {p.name for p in partitions.partitions()}
    for user in (alice, bob):
        assert list(message_history(user=user).values_list("pk", flat=True)) == [kept[user.pk]]
        assert history_count(user=user) == 1
    assert not Feedback.objects.exists()  # the dropped archive's feedback went with it


def test_a_partition_is_kept_while_anyone_keeps_a_row_of_it(history, settings):
    alice, _bob, rows = history
    partitions.partition_table()
    settings.MPAI = {
        **getattr(settings, "MPAI", {}),
        "HISTORY_RETENTION_RULE": "tests.chat.test_partitions.alice_keeps_a_year",
    }
    KEEPERS.add(alice.pk)
    try:
        result = cleanup_chat_history(now=timezone.now() + timedelta(days=100))
    finally:
        KEEPERS.discard(alice.pk)
    assert result.partitions_dropped == 0
    assert Message.objects.filter(pk=rows[alice.pk]["old"].pk).exists()


KEEPERS: set[int] = set()


def alice_keeps_a_year(user):
    return 365 if user.pk in KEEPERS else None


def test_the_command_switches_once_and_then_only_adds_months(history):
    call_command("mpai_partition_messages", months_ahead=1, verbosity=0)
    assert partitions.is_partitioned()
    names = [p.name for p in partitions.partitions()]
    call_command("mpai_partition_messages", months_ahead=1, verbosity=0)
    assert [p.name for p in partitions.partitions()] == names
    call_command("mpai_partition_messages", months_ahead=3, verbosity=0)
    assert len(partitions.partitions()) == len(names) + 2


def test_month_start():
    from datetime import UTC, datetime

    moment = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert partitions.month_start(moment) == datetime(2026, 12, 1, tzinfo=UTC)
    assert partitions.month_start(moment, 1) == datetime(2027, 1, 1, tzinfo=UTC)
    assert partitions.month_start(moment, -12) == datetime(2025, 12, 1, tzinfo=UTC)
