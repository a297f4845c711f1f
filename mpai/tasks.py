"""Celery tasks: thin wrappers over services (scheduled in the project's beat schedule)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from celery import shared_task

from mpai.chat import cleanup
from mpai.chat.titles import generate_titles
from mpai.conf import mpai_settings
from mpai.health.heartbeats import heartbeat


@shared_task(name="mpai.cleanup_chat_history")
@heartbeat("mpai.cleanup_chat_history")
def cleanup_chat_history() -> dict[str, Any]:
    """Run :func:`mpai.chat.cleanup.cleanup_chat_history` (README, "The chat pipeline").

    Returns ``{"messages_deleted", "conversations_deleted", "stale_streams_closed",
    "batches", "users_with_own_retention"}`` (counts), ``"duration_ms"`` (float) and
    ``"dry_run"`` (False).
    """
    return asdict(cleanup.cleanup_chat_history())


@shared_task(name="mpai.maintain_chat_tables")
@heartbeat("mpai.maintain_chat_tables")
def maintain_chat_tables() -> dict[str, Any]:
    """Run :func:`mpai.chat.maintenance.maintain_chat_tables` (weekly): ``VACUUM
    (ANALYZE)`` of mpai's tables on PostgreSQL, nothing elsewhere.

    Returns ``{"vendor": str, "vacuumed": [table], "skipped": [table],
    "duration_ms": float}``.
    """
    from mpai.chat.maintenance import maintain_chat_tables as maintain

    return asdict(maintain())


@shared_task(name="mpai.generate_conversation_titles")
@heartbeat("mpai.generate_conversation_titles")
def generate_conversation_titles() -> int:
    """Title up to ``MPAI["TITLE_BATCH_SIZE"]`` conversations still named after their first
    message (:func:`mpai.chat.titles.generate_titles`); returns how many were renamed."""
    return generate_titles(limit=mpai_settings.TITLE_BATCH_SIZE)


@shared_task(name="mpai.run_health_checks")
@heartbeat("mpai.run_health_checks")
def run_health_checks() -> dict[str, Any]:
    """Run the health checks (:func:`mpai.health.runner.run_checks`, trigger
    ``"schedule"``); returns ``{"snapshot": id, "status": "ok"|"warning"|"error"}``."""
    from mpai.health.runner import run_checks

    snapshot = run_checks(trigger="schedule")
    return {"snapshot": snapshot.pk, "status": snapshot.status}


@shared_task(name="mpai.cleanup_usage")
@heartbeat("mpai.cleanup_usage")
def cleanup_usage() -> dict[str, Any]:
    """Run :func:`mpai.usage.cleanup.cleanup_usage` (daily): delete usage rows and quota
    rejection counts older than ``MPAI["USAGE_RETENTION_DAYS"]``.

    Returns ``{"usage_rows_deleted", "rejection_rows_deleted"}`` (counts) and
    ``"before"`` (the first day kept, ISO date).
    """
    from mpai.usage.cleanup import cleanup_usage as cleanup

    return cleanup()
