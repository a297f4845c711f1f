"""The history cleanup's batches, indexes, per-user retention rule and dry run."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from mpai import tasks
from mpai.chat.cleanup import cleanup_chat_history, retention_days
from mpai.models import Conversation, Message

pytestmark = pytest.mark.django_db

ASKED: list[str] = []


def plan_rule(user):
    """A per-plan rule: premium keeps a year, free a week, everyone else the default."""
    ASKED.append(user.username)
    return {"premium": 365, "free": 7, "zero": 0}.get(user.username)


def bad_rule(user):
    return "forever"


@pytest.fixture(autouse=True)
def _clear_asked():
    ASKED.clear()


def message(user, conversation, age: timedelta, **fields):
    msg = Message.objects.create(
        conversation=conversation, owner=user, role="user", content="x", **fields
    )
    Message.objects.filter(pk=msg.pk).update(created_at=timezone.now() - age)
    return msg


def idle(conversation, age: timedelta):
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now() - age)


def days(n: float) -> timedelta:
    return timedelta(days=n)


def test_removes_exactly_what_expired(user):
    expired_only = Conversation.objects.create(owner=user)
    mixed = Conversation.objects.create(owner=user)
    empty_old = Conversation.objects.create(owner=user)
    empty_new = Conversation.objects.create(owner=user)
    message(user, expired_only, days(45))
    message(user, mixed, days(31))
    kept = [message(user, mixed, days(29)), message(user, mixed, days(1))]
    for conv in (expired_only, mixed, empty_old):
        idle(conv, days(31))

    result = cleanup_chat_history()

    assert (result.messages_deleted, result.conversations_deleted) == (2, 2)
    assert sorted(Message.objects.values_list("pk", flat=True)) == sorted(m.pk for m in kept)
    # The conversation with messages inside the period stays, however idle it looks.
    assert set(Conversation.objects.values_list("pk", flat=True)) == {mixed.pk, empty_new.pk}
    assert result.duration_ms > 0
    assert not result.dry_run


def test_five_expired_rows_in_batches_of_two_take_three_batches(user):
    conversation = Conversation.objects.create(owner=user)
    for _ in range(5):
        message(user, conversation, days(40))
    message(user, conversation, days(2))  # keeps the conversation

    with CaptureQueriesContext(connection) as queries:
        result = cleanup_chat_history(batch_size=2)

    assert (result.messages_deleted, result.batches) == (5, 3)
    assert Message.objects.count() == 1
    deletes = [q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "mpai_message"')]
    assert len(deletes) == 3
    assert all('WHERE "mpai_message"."id" IN' in sql for sql in deletes)
    selects = [
        q["sql"]
        for q in queries
        if q["sql"].startswith("SELECT")
        and 'FROM "mpai_message" WHERE (("mpai_message"."id" > 0) AND' in q["sql"]
    ]
    assert len(selects) == 3
    assert all('ORDER BY "mpai_message"."created_at" ASC LIMIT 2' in sql for sql in selects)


def _plan_of(sql: str, params, *, without: str | None = None) -> str:
    """EXPLAIN of ``sql`` with sequential scans off (and index ``without`` dropped, inside
    the test's transaction, which rolls the drop back)."""
    with connection.cursor() as cursor:
        if without:
            cursor.execute(f"DROP INDEX {without}")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_each_batch_finds_its_rows_through_the_expiry_index(user):
    conversation = Conversation.objects.create(owner=user)
    message(user, conversation, days(40))
    with CaptureQueriesContext(connection) as queries:
        cleanup_chat_history(batch_size=1000)
    sql = next(
        q["sql"]
        for q in queries
        if q["sql"].startswith("SELECT") and "LIMIT 1000" in q["sql"] and "created_at" in q["sql"]
    )
    assert '"mpai_message"."id" > 0' in sql  # the predicate, as a constant
    plan = _plan_of(sql, ())
    assert "mpai_msg_expiry_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


@pytest.mark.parametrize("view", ["page", "cursor"])
def test_history_can_never_be_planned_on_the_expiry_index(user, view):
    """A user's history page is never read through the retention index, even with the
    owner index gone: at 1M rows, for a user owning the oldest rows, the planner once
    read the retention index backwards and discarded 400,000 other users' rows."""
    from mpai.chat.history import message_history

    conversation = Conversation.objects.create(owner=user)
    message(user, conversation, days(1))
    qs = message_history(user=user)
    if view == "cursor":
        newest = qs.first()
        qs = qs.filter(
            Q(created_at__lt=newest.created_at) | Q(created_at=newest.created_at, pk__lt=newest.pk)
        )
    sql, params = qs[:10].query.sql_with_params()
    plan = _plan_of(sql, params)
    assert "mpai_msg_owner_created_idx" in plan, plan
    plan = _plan_of(sql, params, without="mpai_msg_owner_created_idx")
    assert "mpai_msg_expiry_idx" not in plan, plan


def test_stale_streaming_sweep_reads_the_streaming_index(user):
    conversation = Conversation.objects.create(owner=user)
    message(user, conversation, days(1), status=Message.Status.STREAMING)
    with CaptureQueriesContext(connection) as queries:
        assert cleanup_chat_history().stale_streams_closed == 1
    sql = next(q["sql"] for q in queries if q["sql"].startswith('UPDATE "mpai_message"'))
    plan = _plan_of(sql, ())
    assert "mpai_msg_streaming_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_empty_conversations_are_found_through_indexes(user):
    conversation = Conversation.objects.create(owner=user)
    idle(conversation, days(40))
    with CaptureQueriesContext(connection) as queries:
        assert cleanup_chat_history().conversations_deleted == 1
    sql = next(
        q["sql"] for q in queries if 'FROM "mpai_conversation"' in q["sql"] and "EXISTS" in q["sql"]
    )
    assert '"mpai_conversation"."updated_at" <' in sql
    assert sql.endswith("LIMIT 1000")
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "mpai_conv_updated_idx" in plan, plan
    # NOT EXISTS probes an index on the message's conversation (the FK's, or
    # mpai_msg_conv_created_idx), never the whole table.
    assert "Seq Scan" not in plan, plan
    deletes = [q["sql"] for q in queries if q["sql"].startswith('DELETE FROM "mpai_conversation"')]
    assert len(deletes) == 1
    assert "NOT EXISTS" in deletes[0]


def test_rule_gives_each_user_their_own_retention(make_user, settings):
    settings.MPAI = {
        **settings.MPAI,
        "HISTORY_RETENTION_RULE": "tests.chat.test_cleanup_batches.plan_rule",
        "HISTORY_RETENTION_MIN_DAYS": 5,
    }
    users = {name: make_user(name) for name in ("premium", "free", "basic", "fresh")}
    convs = {name: Conversation.objects.create(owner=u) for name, u in users.items()}
    ages = {"premium": [400, 40, 10, 1], "free": [40, 10, 6, 1], "basic": [40, 10, 1], "fresh": [2]}
    made = {
        name: {age: message(users[name], convs[name], days(age)).pk for age in user_ages}
        for name, user_ages in ages.items()
    }

    result = cleanup_chat_history(batch_size=2)

    left = set(Message.objects.values_list("pk", flat=True))
    kept = {
        name: sorted(age for age, pk in by_age.items() if pk in left)
        for name, by_age in made.items()
    }
    assert kept == {"premium": [1, 10, 40], "free": [1, 6], "basic": [1, 10], "fresh": [2]}
    assert result.messages_deleted == 1 + 2 + 1
    assert result.users_with_own_retention == 2
    # Asked only about owners of messages older than min(30, 5) days, once each.
    assert sorted(ASKED) == ["basic", "free", "premium"]


def test_rule_answers_below_the_minimum_are_raised_to_it(make_user, settings):
    settings.MPAI = {
        **settings.MPAI,
        "HISTORY_RETENTION_RULE": plan_rule,
        "HISTORY_RETENTION_MIN_DAYS": 5,
    }
    zero = make_user("zero")
    conversation = Conversation.objects.create(owner=zero)
    young = message(zero, conversation, days(3))
    message(zero, conversation, days(6))
    assert retention_days(zero) == 5
    assert cleanup_chat_history().messages_deleted == 1
    assert list(Message.objects.values_list("pk", flat=True)) == [young.pk]


def test_a_bad_rule_answer_is_refused(user, settings):
    settings.MPAI = {**settings.MPAI, "HISTORY_RETENTION_RULE": bad_rule}
    message(user, Conversation.objects.create(owner=user), days(40))
    with pytest.raises(ImproperlyConfigured, match="HISTORY_RETENTION_RULE"):
        cleanup_chat_history()
    assert Message.objects.count() == 1


def test_days_override_ignores_the_rule(make_user, settings):
    settings.MPAI = {**settings.MPAI, "HISTORY_RETENTION_RULE": plan_rule}
    premium = make_user("premium")
    message(premium, Conversation.objects.create(owner=premium), days(40))
    assert cleanup_chat_history(days=30).messages_deleted == 1
    assert ASKED == []


def test_kept_rows_of_users_with_a_longer_retention_do_not_stall_the_batches(make_user, settings):
    settings.MPAI = {**settings.MPAI, "HISTORY_RETENTION_RULE": plan_rule}
    premium, basic = make_user("premium"), make_user("basic")
    pconv, bconv = (
        Conversation.objects.create(owner=premium),
        Conversation.objects.create(owner=basic),
    )
    for i in range(6):
        message(premium, pconv, days(60 + i))
        message(basic, bconv, days(40 + i))
    message(basic, bconv, days(1))
    result = cleanup_chat_history(batch_size=2)
    assert result.messages_deleted == 6
    assert result.batches == 3
    assert Message.objects.filter(owner=premium).count() == 6


def test_dry_run_counts_without_deleting(make_user, settings, capsys):
    settings.MPAI = {**settings.MPAI, "HISTORY_RETENTION_RULE": plan_rule}
    free, basic = make_user("free"), make_user("basic")
    fconv, bconv, gone = (
        Conversation.objects.create(owner=free),
        Conversation.objects.create(owner=basic),
        Conversation.objects.create(owner=basic),
    )
    message(free, fconv, days(10))
    message(basic, bconv, days(40))
    message(basic, bconv, days(3))
    message(basic, gone, days(40))
    for conv in (fconv, bconv, gone):
        idle(conv, days(8))
    before = (Message.objects.count(), Conversation.objects.count())

    dry = cleanup_chat_history(dry_run=True)
    assert (Message.objects.count(), Conversation.objects.count()) == before
    assert dry.dry_run
    assert dry.batches == 0

    call_command("mpai_cleanup", "--dry-run")
    assert "would delete 3 messages and 2 empty conversations" in capsys.readouterr().out
    assert (Message.objects.count(), Conversation.objects.count()) == before

    real = cleanup_chat_history()
    assert (dry.messages_deleted, dry.conversations_deleted) == (3, 2)
    assert (real.messages_deleted, real.conversations_deleted) == (3, 2)
    assert set(Conversation.objects.values_list("pk", flat=True)) == {bconv.pk}


def test_command_reports_batches_and_the_task_its_figures(user, capsys):
    conversation = Conversation.objects.create(owner=user)
    for _ in range(3):
        message(user, conversation, days(40))
    idle(conversation, days(40))
    call_command("mpai_cleanup", "--batch-size", "2")
    out = capsys.readouterr().out
    assert "Deleted 3 messages and 1 empty conversations" in out
    assert "3 batches" in out
    result = tasks.cleanup_chat_history.delay().get()
    assert set(result) >= {"messages_deleted", "conversations_deleted", "batches", "duration_ms"}


def test_command_refuses_a_bad_batch_size():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("mpai_cleanup", "--batch-size", "0")
