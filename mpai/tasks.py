"""Celery tasks: thin wrappers over services (scheduled in the project's beat schedule)."""

from __future__ import annotations

from celery import shared_task

from mpai.chat.retention import delete_expired_history
from mpai.chat.titles import generate_titles
from mpai.conf import mpai_settings


@shared_task(name="mpai.cleanup_chat_history")
def cleanup_chat_history() -> dict[str, int]:
    """Apply the chat-history retention; returns the counts of rows touched."""
    result = delete_expired_history()
    return {
        "messages_deleted": result.messages_deleted,
        "conversations_deleted": result.conversations_deleted,
        "stale_streams_closed": result.stale_streams_closed,
    }


@shared_task(name="mpai.generate_conversation_titles")
def generate_conversation_titles() -> int:
    """Title up to ``MPAI["TITLE_BATCH_SIZE"]`` conversations still named after their first
    message (:func:`mpai.chat.titles.generate_titles`); returns how many were renamed."""
    return generate_titles(limit=mpai_settings.TITLE_BATCH_SIZE)
