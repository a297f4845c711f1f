"""History cleanup: delete chat history older than the retention period (30 days by default).

Run daily by the Celery task ``mpai.cleanup_chat_history`` and by ``python manage.py
mpai_cleanup`` (README, "The chat pipeline").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from mpai.chat import leases
from mpai.conf import mpai_settings
from mpai.models import Conversation, Message

#: A reply still ``streaming`` this long after it started lost its process.
STALE_STREAMING = timedelta(hours=1)


@dataclass(frozen=True)
class CleanupResult:
    """Rows touched by :func:`cleanup_chat_history`."""

    messages_deleted: int
    conversations_deleted: int
    stale_streams_closed: int


def cleanup_chat_history(*, now: datetime | None = None, days: int | None = None) -> CleanupResult:
    """Delete messages older than the retention period and conversations left empty.

    Also marks replies stuck in ``streaming`` with no live writer (their lease expired,
    ``mpai.chat.leases``, or they started over an hour ago) as ``error`` with code
    ``internal_error``, keeping their text.

    Args:
        now: the current time (injectable for tests); default ``timezone.now()``.
        days: retention in days; default ``MPAI["HISTORY_RETENTION_DAYS"]`` (30).
    """
    now = now or timezone.now()
    cutoff = now - timedelta(
        days=days if days is not None else mpai_settings.HISTORY_RETENTION_DAYS
    )
    with transaction.atomic():
        # Streaming replies with no live writer: their lease expired, or (rows of a
        # process that kept no heartbeat) they started over an hour ago.
        stale = (
            Message.objects.filter(
                Q(status=Message.Status.STREAMING, created_at__lt=now - STALE_STREAMING)
                | leases.orphaned()
            )
            .exclude(pk__in=leases.held())
            .update(status=Message.Status.ERROR, error_code="internal_error")
        )
        messages, _ = Message.objects.filter(created_at__lt=cutoff).delete()
        conversations, _ = Conversation.objects.filter(
            updated_at__lt=cutoff, messages__isnull=True
        ).delete()
    return CleanupResult(messages, conversations, stale)
