"""Resends: a ``client_id`` the user already sent gets the earlier exchange again.

A resend never creates a second exchange (the idempotency key pattern of HTTP APIs
such as Stripe's ``Idempotency-Key``): it finds the saved exchange and replays its
reply, waiting while the reply is still being written. The wait is bounded (README,
"Resends and replays").
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from mpai.chat import leases
from mpai.chat import trace as points
from mpai.chat.saving import release_db_connection
from mpai.chat.trace import Trace
from mpai.chat.turns import ChatTurn, Delta, TurnResult
from mpai.conf import mpai_settings
from mpai.exceptions import MpaiError, ProviderTimeout
from mpai.models import Message
from mpai.providers import Usage


def find_exchange(user: Any, client_id: str, trace: Trace) -> ChatTurn | None:
    """Return the replayed turn of ``user``'s earlier send with ``client_id``, or None."""
    user_message = (
        Message.objects.select_related("conversation")
        .filter(owner=user, client_id=client_id)
        .first()
    )
    if user_message is None:
        return None
    assistant_message = (
        Message.objects.filter(
            conversation=user_message.conversation_id,
            role=Message.Role.ASSISTANT,
            pk__gt=user_message.pk,
        )
        .order_by("pk")
        .first()
    )
    if assistant_message is None:
        return None
    trace.replayed = True
    return ChatTurn(
        user,
        user_message.conversation,
        user_message,
        assistant_message,
        trace,
        replayed=True,
        client_id=client_id,
    )


def replay(turn: ChatTurn) -> Generator[Delta, None, TurnResult]:
    """Yield the saved reply of an earlier send, waiting while it is still streaming.

    The wait ends when the reply is saved, when the turn is cancelled (the client
    left), when no live turn in any process owns the reply any more
    (:mod:`mpai.chat.leases`: the reply is then marked ``error``), or after
    ``MPAI["REPLAY_TIMEOUT_SECONDS"]`` (``provider_timeout``, the reply left as it is).
    No database connection is held between reads.

    Returns:
        The result, as the generator's return value.
    """
    message = turn.assistant_message
    deadline = time.monotonic() + float(mpai_settings.REPLAY_TIMEOUT_SECONDS)
    poll = float(mpai_settings.REPLAY_POLL_SECONDS)
    timed_out = False
    while message.status == Message.Status.STREAMING and not turn.cancelled:
        if leases.fail_if_orphaned(message.pk):
            message.refresh_from_db()
            break
        if time.monotonic() >= deadline:
            timed_out = True
            break
        release_db_connection()
        turn.wait_cancelled(min(poll, max(deadline - time.monotonic(), 0.0)))
        message.refresh_from_db()
    trace = turn.trace
    trace.mark(points.CONTEXT_BUILT)
    if message.content:
        trace.mark(points.FIRST_DELTA)
        yield Delta(message.content)
    trace.mark_once(points.FIRST_DELTA)
    trace.mark(points.LAST_DELTA)
    trace.mark(points.SAVED)
    trace.mark(points.REQUEST_COMPLETE)
    error: MpaiError | None = None
    if timed_out:
        error = ProviderTimeout(
            "The original reply is still being written; it will be in the history when it is done."
        )
    elif message.status == Message.Status.ERROR:
        error = MpaiError.for_code(message.error_code or MpaiError.code)
        error.detail = "The original reply failed."
    usage = None
    if message.prompt_tokens is not None and message.completion_tokens is not None:
        usage = Usage(
            message.prompt_tokens,
            message.completion_tokens,
            message.prompt_tokens + message.completion_tokens,
        )
    return TurnResult(
        message=message,
        status=message.status,
        finish_reason=message.finish_reason or None,
        usage=usage,
        cached=message.cached,
        replayed=True,
        timings_ms=trace.timings_ms(),
        error=error,
        user_message_id=turn.user_message.pk,
    )
