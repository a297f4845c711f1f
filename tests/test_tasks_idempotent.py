"""Every mpai task is idempotent, and two runs of one task never overlap (mpai.tasks).

The lock is PostgreSQL's advisory lock: these tests hold it from another real
connection (another worker's run) or run the task twice at once in two threads.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from django.db import connection

from mpai import tasks
from mpai.health.models import TaskHeartbeat

pytestmark = pytest.mark.django_db(transaction=True)

#: Task -> (module, attribute) of the service it runs.
SERVICES = {
    "cleanup_chat_history": ("mpai.chat.cleanup", "cleanup_chat_history"),
    "maintain_chat_tables": ("mpai.chat.maintenance", "maintain_chat_tables"),
    "generate_conversation_titles": ("mpai.tasks", "generate_titles"),
    "run_health_checks": ("mpai.health.runner", "run_checks"),
    "cleanup_usage": ("mpai.usage.cleanup", "cleanup_usage"),
}


def other_session() -> psycopg.Connection[Any]:
    db = connection.settings_dict
    return psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"] or "postgres",
        password=db["PASSWORD"] or "",
        dbname=db["NAME"],
        autocommit=True,
    )


@pytest.fixture
def service_calls(monkeypatch) -> dict[str, int]:
    """Replace each task's service by a counter (the tasks' own code is unchanged)."""
    import importlib

    calls = dict.fromkeys(SERVICES, 0)

    def fake(task: str) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            calls[task] += 1
            if task == "run_health_checks":
                return SimpleNamespace(pk=1, status="ok")
            return 0 if task == "generate_conversation_titles" else {"ran": True}

        return run

    for task, (module, attribute) in SERVICES.items():
        monkeypatch.setattr(importlib.import_module(module), attribute, fake(task))
    monkeypatch.setattr(tasks, "asdict", lambda value: value)
    return calls


@pytest.mark.parametrize("task", sorted(SERVICES))
def test_a_run_while_another_holds_the_lock_does_nothing(task, service_calls) -> None:
    name = f"mpai.{task}"
    with other_session() as session:
        assert session.execute(
            "SELECT pg_try_advisory_lock(%s)", [tasks.task_lock_key(name)]
        ).fetchone() == (True,)
        result = getattr(tasks, task).apply().get()
        assert result == (0 if task == "generate_conversation_titles" else {"skipped": True})
        assert service_calls[task] == 0
        assert not TaskHeartbeat.objects.filter(task=name).exists()
    # The other run's session ended (its worker died, say): the lock is free again.
    getattr(tasks, task).apply().get()
    assert service_calls[task] == 1
    assert TaskHeartbeat.objects.get(task=name).last_succeeded_at is not None


def test_two_runs_at_once_run_the_service_once(monkeypatch) -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_cleanup() -> Any:
        calls.append(threading.current_thread().name)
        entered.set()
        assert release.wait(30)
        return {"messages_deleted": 0}

    monkeypatch.setattr("mpai.chat.cleanup.cleanup_chat_history", slow_cleanup)
    monkeypatch.setattr(tasks, "asdict", lambda value: value)
    results: dict[str, Any] = {}

    def run(label: str) -> None:
        results[label] = tasks.cleanup_chat_history.apply().get()

    first = threading.Thread(target=run, args=("first",), name="first")
    first.start()
    assert entered.wait(30)
    run("second")  # while the first holds the lock
    release.set()
    first.join(30)
    assert results["second"] == {"skipped": True}
    assert results["first"]["messages_deleted"] == 0
    assert calls == ["first"]
    run("third")  # the lock was released
    assert len(calls) == 2
    assert results["third"] == {"messages_deleted": 0}


def test_a_second_run_finds_nothing_left_to_do(make_user) -> None:
    import datetime

    from django.utils import timezone

    from mpai.models import Conversation, Message

    user = make_user()
    conversation = Conversation.objects.create(owner=user, title="old")
    message = Message.objects.create(conversation=conversation, owner=user, role="user")
    old = timezone.now() - datetime.timedelta(days=400)
    Message.objects.filter(pk=message.pk).update(created_at=old)
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=old)
    first = tasks.cleanup_chat_history.apply().get()
    second = tasks.cleanup_chat_history.apply().get()
    assert first["messages_deleted"] == 1
    assert second["messages_deleted"] == 0
    assert second["conversations_deleted"] == 0
    assert tasks.cleanup_usage.apply().get()["usage_rows_deleted"] == 0


def test_the_lock_key_is_stable_and_per_task() -> None:
    keys = {tasks.task_lock_key(f"mpai.{task}") for task in SERVICES}
    assert len(keys) == len(SERVICES)
    assert all(-(2**63) <= key < 2**63 for key in keys)
    assert tasks.task_lock_key("mpai.cleanup_usage") == tasks.task_lock_key("mpai.cleanup_usage")
