"""Task heartbeats (mpai.health.heartbeats) and the mpai tasks that carry them."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from django.db import DatabaseError
from django.test import override_settings
from django.utils import timezone

from mpai import tasks
from mpai.health import checks
from mpai.health.heartbeats import ERROR_MAX_CHARS, heartbeat
from mpai.health.models import HealthSnapshot, TaskHeartbeat
from mpai.health.results import Status

pytestmark = pytest.mark.django_db


def test_decorator_records_start_success_and_duration():
    @heartbeat("mpai.example")
    def job(x: int) -> int:
        return x * 2

    before = timezone.now()
    assert job(21) == 42
    beat = TaskHeartbeat.objects.get(task="mpai.example")
    assert beat.last_started_at >= before
    assert beat.last_succeeded_at >= beat.last_started_at
    assert beat.last_failed_at is None
    assert beat.last_duration_ms >= 0
    assert job.__name__ == "job"
    job(1)
    assert TaskHeartbeat.objects.filter(task="mpai.example").count() == 1


def test_a_failure_is_recorded_truncated_and_re_raised():
    @heartbeat("mpai.failing")
    def job() -> None:
        raise ValueError("x" * 2000)

    with pytest.raises(ValueError, match="xxx"):
        job()
    beat = TaskHeartbeat.objects.get(task="mpai.failing")
    assert beat.last_failed_at is not None
    assert beat.last_succeeded_at is None
    assert beat.last_error.startswith("ValueError: xxx")
    assert len(beat.last_error) == ERROR_MAX_CHARS


def test_a_success_after_a_failure_keeps_the_failure_time():
    with pytest.raises(RuntimeError), heartbeat("mpai.flaky"):
        raise RuntimeError("once")
    with heartbeat("mpai.flaky"):
        pass
    beat = TaskHeartbeat.objects.get(task="mpai.flaky")
    assert beat.last_succeeded_at > beat.last_failed_at


def test_a_heartbeat_write_that_fails_never_reaches_the_task(monkeypatch):
    def fail(*args: Any, **kwargs: Any) -> None:
        raise DatabaseError("table gone")

    monkeypatch.setattr(TaskHeartbeat.objects, "bulk_create", fail)

    @heartbeat("mpai.unrecorded")
    def job() -> str:
        return "done"

    assert job() == "done"


def test_mpai_tasks_carry_heartbeats(monkeypatch):
    monkeypatch.setattr(tasks, "generate_titles", lambda limit: 0)
    tasks.generate_conversation_titles.apply().get()
    tasks.cleanup_chat_history.apply().get()
    assert set(TaskHeartbeat.objects.values_list("task", flat=True)) == {
        "mpai.generate_conversation_titles",
        "mpai.cleanup_chat_history",
    }


def test_run_health_checks_task_stores_a_snapshot(monkeypatch):
    calls: list[Any] = []
    module = types.ModuleType("mpai.health.alerts")
    module.process_snapshot = calls.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mpai.health.alerts", module)
    health = {"CHECKS": ["mpai.health.checks.DiskCheck"]}
    with override_settings(MPAI={"HEALTH": health}):
        result = tasks.run_health_checks.apply().get()
    snapshot = HealthSnapshot.objects.get(pk=result["snapshot"])
    assert snapshot.trigger == "schedule"
    assert result["status"] == snapshot.status
    assert calls == [snapshot]
    assert TaskHeartbeat.objects.get(task="mpai.run_health_checks").last_succeeded_at


def test_the_demo_schedule_runs_the_health_checks_hourly():
    from config import settings as demo

    entry = demo.CELERY_BEAT_SCHEDULE["mpai-run-health-checks"]
    assert entry == {"task": "mpai.run_health_checks", "schedule": 3600.0}


def test_heartbeats_feed_the_scheduled_tasks_check():
    schedule = {"t": {"task": "mpai.cleanup_chat_history", "schedule": 24 * 3600.0}}
    tasks.cleanup_chat_history.apply().get()
    with override_settings(CELERY_BEAT_SCHEDULE=schedule):
        result = checks.ScheduledTasksCheck().run()
    assert result.status is Status.OK, result
    assert result.details["tasks"]["mpai.cleanup_chat_history"]["state"] == "ok"
