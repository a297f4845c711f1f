"""Celery tasks: thin wrappers over services (scheduled in the project's beat schedule)."""

from __future__ import annotations

from dataclasses import asdict

from celery import shared_task

from mpai.chat import cleanup
from mpai.chat.titles import generate_titles
from mpai.conf import mpai_settings


@shared_task(name="mpai.cleanup_chat_history")
def cleanup_chat_history() -> dict[str, int]:
    """Run :func:`mpai.chat.cleanup.cleanup_chat_history` (README, "The chat pipeline").

    Returns ``{"messages_deleted", "conversations_deleted", "stale_streams_closed"}``
    (counts of rows).
    """
    return asdict(cleanup.cleanup_chat_history())


@shared_task(name="mpai.generate_conversation_titles")
def generate_conversation_titles() -> int:
    """Title up to ``MPAI["TITLE_BATCH_SIZE"]`` conversations still named after their first
    message (:func:`mpai.chat.titles.generate_titles`); returns how many were renamed."""
    return generate_titles(limit=mpai_settings.TITLE_BATCH_SIZE)
