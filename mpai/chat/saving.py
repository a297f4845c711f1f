"""Saving a turn's reply so that it is never lost, and not holding connections meanwhile."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from mpai.conf import mpai_settings
from mpai.models import Conversation, Message

logger = logging.getLogger(__name__)


def release_db_connection() -> None:
    """Give this thread's database connection back while a provider streams.

    A stream takes seconds and does no database work; holding the connection meanwhile
    starves psycopg's pool (found by mpai_loadtest: 10 users made the context stage wait
    2-4 s for a pooled connection). The save after the stream takes one again. Skipped
    inside a transaction, and for persistent connections (``CONN_MAX_AGE`` > 0 without a
    pool), which belong to their thread anyway.
    """
    if connection.in_atomic_block:
        return
    pooled = bool((connection.settings_dict.get("OPTIONS") or {}).get("pool"))
    if pooled or connection.settings_dict.get("CONN_MAX_AGE") == 0:
        connection.close()


#: The fields the end of a turn writes on its reply.
REPLY_FIELDS = (
    "content",
    "status",
    "model",
    "finish_reason",
    "error_code",
    "prompt_tokens",
    "completion_tokens",
    "cached",
    "tool_calls",
)


def save_reply(message: Message, *, attempts: int | None = None) -> bool:
    """Save the end of a turn, retrying on a fresh database connection: the reply's
    fields (:data:`REPLY_FIELDS`), then its conversation's ``updated_at``.

    Returns False, saving nothing, when the reply's row is gone: its conversation was
    deleted, or its user erased their history, while it streamed (another process did,
    or the cancel of an erase came too late). The turn still ends normally; what it
    would have saved is what its user asked to delete.

    A pooled connection may have died while the provider streamed (a database restart,
    ``pg_terminate_backend``, a failover): the reply the user saw must not be lost with
    it. Each failed attempt closes the connection, which psycopg's pool discards when
    broken, and the next one takes another, with a short exponential back-off.

    Args:
        attempts: most attempts (default ``MPAI["SAVE_ATTEMPTS"]``, 5).

    Raises:
        django.db.OperationalError, django.db.InterfaceError: every attempt failed.
    """
    retrying = Retrying(
        stop=stop_after_attempt(int(attempts or mpai_settings.SAVE_ATTEMPTS)),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        retry=retry_if_exception_type((OperationalError, InterfaceError)),
        before_sleep=lambda state: _discard_connection(state.outcome),
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            if not write_reply(message):
                logger.info("mpai reply %s was deleted while it streamed; not saved", message.pk)
                return False
            # The conversation's latest activity (the conversation list's order).
            Conversation.objects.filter(pk=message.conversation_id).update(
                updated_at=timezone.now()
            )
    return True


def write_reply(message: Message) -> int:
    """One ``UPDATE`` of the reply's :data:`REPLY_FIELDS`; returns the rows written (0:
    the row is gone)."""
    fields = {name: getattr(message, name) for name in REPLY_FIELDS}
    return Message.objects.filter(pk=message.pk).update(**fields)


def _discard_connection(outcome: Any) -> None:
    logger.warning(
        "mpai could not save a reply; retrying on a new connection: %s",
        outcome.exception() if outcome else None,
    )
    with contextlib.suppress(Exception):  # Django forgets the connection either way
        connection.close()
