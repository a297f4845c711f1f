"""Weekly table maintenance: VACUUM (ANALYZE) of mpai's tables on PostgreSQL."""

from __future__ import annotations

import pytest
from django.db import connection

from mpai import tasks
from mpai.chat.maintenance import maintain_chat_tables, mpai_tables
from mpai.models import Conversation, Message
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db


def vacuumed_at(table: str):
    with connection.cursor() as cursor:
        # Statistics are read once per transaction unless the snapshot is dropped.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables WHERE relname = %s",
            [table],
        )
        return cursor.fetchone()


def test_tables_are_mpai_models_tables():
    tables = mpai_tables()
    assert {"mpai_message", "mpai_conversation", "mpai_cache"} <= set(tables)
    assert all(t.startswith("mpai_") for t in tables)
    assert tables == sorted(tables)


def test_vacuum_analyze_runs_on_postgresql_inside_a_transaction(user):
    # The test runs inside a transaction, where VACUUM is refused: the maintenance
    # uses a connection of its own in autocommit.
    conversation = Conversation.objects.create(owner=user)
    Message.objects.create(conversation=conversation, owner=user, role="user", content="x")
    before = vacuumed_at("mpai_message")

    result = maintain_chat_tables()

    assert result.vendor == "postgresql"
    assert set(result.vacuumed) == set(mpai_tables())
    assert result.skipped == []
    assert result.duration_ms > 0
    wait_until(
        lambda: (
            (after := vacuumed_at("mpai_message")) is not None
            and after[0] is not None
            and after[1] is not None
            and (before is None or before[0] is None or after[0] > before[0])
        ),
        timeout=15,
        what="pg_stat_user_tables.last_vacuum of mpai_message moved",
    )


def test_a_no_op_on_other_databases(monkeypatch):
    monkeypatch.setattr(connection, "vendor", "sqlite")
    result = maintain_chat_tables()
    assert result.vendor == "sqlite"
    assert result.vacuumed == []


def test_the_task_and_its_weekly_schedule():
    result = tasks.maintain_chat_tables.delay().get()
    assert "mpai_message" in result["vacuumed"]
    assert isinstance(result["duration_ms"], float)
    from config.settings import CELERY_BEAT_SCHEDULE

    weekly = [e for e in CELERY_BEAT_SCHEDULE.values() if e["task"] == "mpai.maintain_chat_tables"]
    assert weekly == [{"task": "mpai.maintain_chat_tables", "schedule": 7 * 24 * 3600.0}]
