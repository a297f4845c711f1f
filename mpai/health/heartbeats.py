"""Heartbeats of the mpai beat tasks: when each last started, succeeded, failed.

Usage, as a decorator (under ``@shared_task``) or a context manager::

    @shared_task(name="mpai.cleanup_chat_history")
    @heartbeat("mpai.cleanup_chat_history")
    def cleanup_chat_history(): ...

    with heartbeat("mpai.some_job"):
        ...

Each of the start and the end is one upsert of the task's
:class:`~mpai.health.models.TaskHeartbeat` row, in a savepoint when inside a
transaction. A heartbeat write that fails is logged on ``mpai.health`` and never
reaches the task; the task's own exception is recorded and re-raised unchanged.

This module imports no Django model at import time.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

logger = logging.getLogger("mpai.health")

P = ParamSpec("P")
R = TypeVar("R")

#: Characters of an error kept in ``TaskHeartbeat.last_error``.
ERROR_MAX_CHARS = 500

__all__ = ["ERROR_MAX_CHARS", "heartbeat", "record_heartbeat"]


def record_heartbeat(task: str, **fields: Any) -> bool:
    """Upsert ``TaskHeartbeat(task=task, **fields)`` in one statement (only ``fields``
    are updated on an existing row); return False (logged, never raised) on failure."""
    from django.db import transaction

    from mpai.health.models import TaskHeartbeat

    try:
        with transaction.atomic():
            TaskHeartbeat.objects.bulk_create(
                [TaskHeartbeat(task=task, **fields)],
                update_conflicts=True,
                unique_fields=["task"],
                update_fields=list(fields),
            )
        return True
    except Exception:
        logger.warning("mpai health: recording the heartbeat of %s failed", task, exc_info=True)
        return False


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 1] + "…"


class heartbeat:
    """Record a task's start, success or failure and duration (ms) in its heartbeat.

    Args:
        task: the task's name, e.g. ``"mpai.cleanup_chat_history"`` (as in the beat
            schedule; the ``scheduled_tasks`` check reads the row by this name).

    Usable as a decorator (each call gets its own record) or a context manager (one
    instance per ``with``).
    """

    def __init__(self, task: str) -> None:
        self.task = task
        self._started = 0.0

    def __enter__(self) -> heartbeat:
        from django.utils import timezone

        self._started = time.perf_counter()
        record_heartbeat(self.task, last_started_at=timezone.now())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        from django.utils import timezone

        duration_ms = round((time.perf_counter() - self._started) * 1000, 3)
        if exc is None:
            record_heartbeat(
                self.task, last_succeeded_at=timezone.now(), last_duration_ms=duration_ms
            )
        else:
            record_heartbeat(
                self.task,
                last_failed_at=timezone.now(),
                last_duration_ms=duration_ms,
                last_error=_error_text(exc),
            )

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        task = self.task

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with heartbeat(task):
                return func(*args, **kwargs)

        return wrapper
