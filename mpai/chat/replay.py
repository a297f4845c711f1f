"""Resends: a ``client_id`` the user already sent gets the earlier exchange again.

A resend never creates a second exchange (the idempotency key pattern of HTTP APIs
such as Stripe's ``Idempotency-Key``): it finds the saved exchange and replays its
reply. A reply still being generated, in this process or another, is followed through
its Redis stream (:mod:`mpai.chat.reply_stream`): the text so far at once, then the
rest as it is written, each character once. Without the stream (no Redis, Redis out,
the stream expired) the resend waits for the save, reading the database every
``MPAI["REPLAY_POLL_SECONDS"]``. A resend may carry ``resume_from``, the characters of
the reply the client already has: it then gets only the text after them. The wait is
bounded (README, "Resends and replays").
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from mpai.chat import leases, reply_stream
from mpai.chat import trace as points
from mpai.chat.saving import release_db_connection
from mpai.chat.trace import Trace
from mpai.chat.turns import ChatTurn, Delta, TurnResult
from mpai.conf import mpai_settings
from mpai.exceptions import MpaiError, ProviderTimeout
from mpai.models import Message
from mpai.providers import Usage


def find_exchange(
    user: Any, client_id: str, trace: Trace, *, resume_from: int = 0
) -> ChatTurn | None:
    """Return the replayed turn of ``user``'s earlier send with ``client_id``, or None.

    Args:
        resume_from: characters of the reply the client already has (validated:
            :func:`mpai.chat.validation.validate_resume_from`); the replay skips them.
    """
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
        resume_from=resume_from,
    )


class _Position:
    """The characters of the reply the client has: the first ``resume_from``, then
    everything yielded."""

    __slots__ = ("chars",)

    def __init__(self, resume_from: int) -> None:
        self.chars = max(int(resume_from), 0)

    def unseen(self, offset: int, text: str) -> str:
        """Return the part of ``text`` (reply characters from ``offset`` on) the client
        does not have yet, and count it as had."""
        end = offset + len(text)
        if end <= self.chars:
            return ""
        piece = text[max(self.chars - offset, 0) :]
        self.chars = end
        return piece


def replay(turn: ChatTurn) -> Generator[Delta, None, TurnResult]:
    """Yield the reply of an earlier send (after ``turn.resume_from`` characters).

    A saved reply: its text at once. A reply still streaming: through its stream, the
    text so far as one delta, then each new batch as it comes (``MPAI["REPLAY_BATCH_MS"]``
    apart at most); without one, the text once the reply is saved. The deltas joined
    are the saved reply after its first ``resume_from`` characters, exactly.

    The wait ends when the reply is saved, when the turn is cancelled (the client
    left), when no live turn in any process owns the reply any more
    (:mod:`mpai.chat.leases`: the reply is then marked ``error``), or after
    ``MPAI["REPLAY_TIMEOUT_SECONDS"]`` (``provider_timeout``, the reply left as it is).
    No database connection is held while waiting.

    Returns:
        The result, as the generator's return value.
    """
    message = turn.assistant_message
    trace = turn.trace
    trace.mark(points.CONTEXT_BUILT)
    position = _Position(turn.resume_from)
    timed_out = False
    if message.status == Message.Status.STREAMING and not turn.cancelled:
        timed_out = yield from _wait(turn, position)
    tail = position.unseen(0, message.content)
    if tail:
        trace.mark_once(points.FIRST_DELTA)
        yield Delta(tail)
    trace.mark_once(points.FIRST_DELTA)
    trace.mark(points.LAST_DELTA)
    trace.mark(points.SAVED)
    trace.mark(points.REQUEST_COMPLETE)
    return _result(turn, timed_out)


def _wait(turn: ChatTurn, position: _Position) -> Generator[Delta, None, bool]:
    """Follow the reply until it is saved (or the wait ends); return whether it timed
    out. ``turn.assistant_message`` is left as last read."""
    message = turn.assistant_message
    deadline = time.monotonic() + float(mpai_settings.REPLAY_TIMEOUT_SECONDS)
    poll = float(mpai_settings.REPLAY_POLL_SECONDS)
    follower = reply_stream.follow_reply(message.pk)
    streamed: list[str] = []  # the reply's text read from its stream, from the start
    release_db_connection()
    while not turn.cancelled:
        if follower is not None and not follower.failed:
            block = None if not follower.found else reply_stream.BLOCK_MS
            left_ms = int((deadline - time.monotonic()) * 1000)
            offset, text = follower.read(None if block is None else min(block, max(left_ms, 1)))
            streamed.append(text)
            piece = position.unseen(offset, text)
            if piece:
                turn.trace.mark_once(points.FIRST_DELTA)
                yield Delta(piece)
            if follower.ended:
                message.refresh_from_db()
                return False
            if follower.found and not follower.failed:
                if text:
                    continue  # a live stream: read on, no database read
                if time.monotonic() >= deadline:
                    return True
                # A quiet read: the reply may be saved with its stream cut (Redis out).
                message.refresh_from_db()
                if message.status != Message.Status.STREAMING:
                    return False
                if leases.fail_if_orphaned(message.pk):
                    _keep_streamed_text(message.pk, "".join(streamed))
                    message.refresh_from_db()
                    return False
                release_db_connection()
                continue
        # No stream (yet): read the database every `poll` seconds.
        if leases.fail_if_orphaned(message.pk):
            message.refresh_from_db()
            return False
        if time.monotonic() >= deadline:
            return True
        release_db_connection()
        turn.wait_cancelled(min(poll, max(deadline - time.monotonic(), 0.0)))
        message.refresh_from_db()
        if message.status != Message.Status.STREAMING:
            return False
    return False


def _keep_streamed_text(message_id: int, text: str) -> None:
    """Save ``text`` (what the reply's stream carried) as the partial text of a reply
    whose writer died before saving any: the resend showed it, so it is kept."""
    if text:
        Message.objects.filter(pk=message_id, status=Message.Status.ERROR, content="").update(
            content=text
        )


def _result(turn: ChatTurn, timed_out: bool) -> TurnResult:
    message = turn.assistant_message
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
        timings_ms=turn.trace.timings_ms(),
        error=error,
        user_message_id=turn.user_message.pk,
    )
