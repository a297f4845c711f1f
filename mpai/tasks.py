"""Celery tasks: thin wrappers over services (scheduled in the project's beat schedule).

Every task is idempotent: run again, it finds nothing left to do (the cleanups delete
by age, titles are saved by a conditional ``UPDATE``, ``VACUUM`` twice is ``VACUUM``
once), and two runs of one task never overlap, even with several workers or two beat
processes: each run first takes a lock named after the task (:func:`one_at_a_time`),
and a run that finds it taken returns at once, doing nothing (``{"skipped": True}``,
or ``0`` for the titles). On PostgreSQL the lock is a session advisory lock
(``pg_try_advisory_lock``, PostgreSQL's "Advisory Locks") on a connection of its own,
released when the run ends or its connection dies; elsewhere a Django cache
``add()`` with a timeout (:data:`CACHE_LOCK_SECONDS`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, ParamSpec, TypeVar

from celery import shared_task
from django.core.cache import caches
from django.db import DEFAULT_DB_ALIAS, connections

from mpai.chat import cleanup
from mpai.chat.titles import generate_titles
from mpai.conf import mpai_settings
from mpai.health.heartbeats import heartbeat

logger = logging.getLogger("mpai.tasks")

P = ParamSpec("P")
R = TypeVar("R")

#: Seconds a cache lock (databases other than PostgreSQL) outlives a run that died
#: without releasing it; longer than any run.
CACHE_LOCK_SECONDS = 6 * 3600
#: What a skipped run of a task returning a dict returns.
SKIPPED: dict[str, Any] = {"skipped": True}


def task_lock_key(task: str) -> int:
    """The advisory lock key of ``task``: a signed 64-bit integer from its name's SHA-1."""
    digest = hashlib.sha1(f"mpai.task:{task}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def task_lock(task: str) -> Iterator[bool]:
    """Try to take ``task``'s lock; yield True when this run holds it, False when another
    run does. Released on exit.

    PostgreSQL: ``pg_try_advisory_lock(task_lock_key(task))`` on a new connection to
    the ``default`` database (the run's own queries may close theirs); other databases:
    ``add()`` on ``MPAI["CACHE_ALIAS"]`` with :data:`CACHE_LOCK_SECONDS`.

    Raises:
        django.db.DatabaseError: the lock's connection cannot be opened.
    """
    if connections[DEFAULT_DB_ALIAS].vendor != "postgresql":
        cache = caches[mpai_settings.CACHE_ALIAS]
        key, token = f"mpai:task-lock:{task}", uuid.uuid4().hex
        held = bool(cache.add(key, token, timeout=CACHE_LOCK_SECONDS))
        try:
            yield held
        finally:
            if held and cache.get(key) == token:
                cache.delete(key)
        return
    lock_connection = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with lock_connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [task_lock_key(task)])
            held = bool(cursor.fetchone()[0])
        try:
            yield held
        finally:
            if held:
                with lock_connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [task_lock_key(task)])
    finally:
        lock_connection.close()


def one_at_a_time(
    task: str, skipped: Callable[[], R]
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a task body so overlapping runs skip: the body runs only while this run
    holds :func:`task_lock` ``(task)``; otherwise ``skipped()`` is returned (logged at
    INFO) and the task's heartbeat is left alone."""

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with task_lock(task) as held:
                if not held:
                    logger.info("mpai: %s is already running elsewhere; skipped", task)
                    return skipped()
                return func(*args, **kwargs)

        return wrapper

    return decorate


def _skipped() -> dict[str, Any]:
    return dict(SKIPPED)


@shared_task(name="mpai.cleanup_chat_history")
@one_at_a_time("mpai.cleanup_chat_history", _skipped)
@heartbeat("mpai.cleanup_chat_history")
def cleanup_chat_history() -> dict[str, Any]:
    """Run :func:`mpai.chat.cleanup.cleanup_chat_history` (README, "The chat pipeline").

    Returns ``{"messages_deleted", "conversations_deleted", "stale_streams_closed",
    "batches", "users_with_own_retention"}`` (counts), ``"duration_ms"`` (float) and
    ``"dry_run"`` (False); ``{"skipped": True}`` while another run holds the lock.
    """
    return asdict(cleanup.cleanup_chat_history())


@shared_task(name="mpai.maintain_chat_tables")
@one_at_a_time("mpai.maintain_chat_tables", _skipped)
@heartbeat("mpai.maintain_chat_tables")
def maintain_chat_tables() -> dict[str, Any]:
    """Run :func:`mpai.chat.maintenance.maintain_chat_tables` (weekly): ``VACUUM
    (ANALYZE)`` of mpai's tables on PostgreSQL, nothing elsewhere.

    Returns ``{"vendor": str, "vacuumed": [table], "skipped": [table],
    "duration_ms": float}``, or ``{"skipped": True}`` while another run holds the lock.
    """
    from mpai.chat.maintenance import maintain_chat_tables as maintain

    return asdict(maintain())


@shared_task(name="mpai.generate_conversation_titles")
@one_at_a_time("mpai.generate_conversation_titles", lambda: 0)
@heartbeat("mpai.generate_conversation_titles")
def generate_conversation_titles() -> int:
    """Title up to ``MPAI["TITLE_BATCH_SIZE"]`` conversations still named after their first
    message (:func:`mpai.chat.titles.generate_titles`); returns how many were renamed
    (0 while another run holds the lock)."""
    return generate_titles(limit=mpai_settings.TITLE_BATCH_SIZE)


@shared_task(name="mpai.run_health_checks")
@one_at_a_time("mpai.run_health_checks", _skipped)
@heartbeat("mpai.run_health_checks")
def run_health_checks() -> dict[str, Any]:
    """Run the health checks (:func:`mpai.health.runner.run_checks`, trigger
    ``"schedule"``); returns ``{"snapshot": id, "status": "ok"|"warning"|"error"}``, or
    ``{"skipped": True}`` while another run holds the lock (two overlapping runs would
    count one failing round twice toward ``FAILURES_TO_FIRE``)."""
    from mpai.health.runner import run_checks

    snapshot = run_checks(trigger="schedule")
    return {"snapshot": snapshot.pk, "status": snapshot.status}


@shared_task(name="mpai.cleanup_usage")
@one_at_a_time("mpai.cleanup_usage", _skipped)
@heartbeat("mpai.cleanup_usage")
def cleanup_usage() -> dict[str, Any]:
    """Run :func:`mpai.usage.cleanup.cleanup_usage` (daily): delete usage rows and quota
    rejection counts older than ``MPAI["USAGE_RETENTION_DAYS"]``.

    Returns ``{"usage_rows_deleted", "rejection_rows_deleted"}`` (counts) and
    ``"before"`` (the first day kept, ISO date); ``{"skipped": True}`` while another
    run holds the lock.
    """
    from mpai.usage.cleanup import cleanup_usage as cleanup

    return cleanup()
