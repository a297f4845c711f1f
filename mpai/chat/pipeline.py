"""The chat pipeline: one service used by every interface (websocket, HTTP, tasks).

A turn has two steps so that an interface can tell the client the ids before the
reply streams:

1. :meth:`ChatPipeline.start` validates the input and saves the user message and an
   empty assistant message (status ``streaming``) in one transaction;
2. :meth:`ChatPipeline.run` builds the context, calls the provider with streaming,
   hands each delta to ``on_delta`` as it arrives, and saves the reply, also when it
   is interrupted (partial text with status ``error`` or ``cancelled``: nothing the
   user saw is lost).

Both are blocking (ORM and ``requests``): async callers run them in a thread.
Signals are sent at each measurement point (``mpai.signals``, CONTRACTS.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction
from django.dispatch import Signal
from django.utils import timezone

from mpai import signals
from mpai.chat import trace as points
from mpai.chat.trace import Trace
from mpai.chat.validation import validate_client_id, validate_content
from mpai.conf import mpai_settings
from mpai.exceptions import ConversationNotFound, MpaiError
from mpai.models import Conversation, Message
from mpai.providers import ChatProvider, ChatRequest, ChatStream, Usage, get_provider

logger = logging.getLogger(__name__)

DeltaCallback = Callable[[str], None]


@dataclass
class ChatTurn:
    """One exchange: the saved user message and the assistant message being written."""

    user: Any
    conversation: Conversation
    user_message: Message
    assistant_message: Message
    trace: Trace
    replayed: bool = False
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    _stream: ChatStream | None = field(default=None, repr=False)

    def cancel(self) -> None:
        """Stop the reply (the stop button); safe to call from any thread."""
        self._cancelled.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class TurnResult:
    """How a turn ended.

    Attributes:
        status: ``complete``, ``cancelled`` or ``error`` (the saved message's status).
        error: the error for status ``error``, else None.
        usage: provider usage figures, when sent.
        timings_ms: stage timings in ms (``Trace.timings_ms``).
    """

    message: Message
    status: str
    finish_reason: str | None
    usage: Usage | None
    cached: bool
    replayed: bool
    timings_ms: dict[str, float]
    error: MpaiError | None = None


def send_robust(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal`` from the pipeline; a receiver's exception is logged, never raised."""
    for receiver, response in signal.send_robust(sender=ChatPipeline, **kwargs):
        if isinstance(response, Exception):
            logger.error("mpai signal receiver %r raised", receiver, exc_info=response)


class ChatPipeline:
    """Run chat turns against a provider (default: ``MPAI["PROVIDER"]``)."""

    #: Seconds between database reads while a replay waits for a reply in progress.
    replay_poll_interval = 0.1

    def __init__(self, provider: ChatProvider | None = None) -> None:
        self._provider = provider

    @property
    def provider(self) -> ChatProvider:
        return self._provider or get_provider()

    # -- step 1 ------------------------------------------------------------------------

    def start(
        self,
        *,
        user: Any,
        content: object,
        conversation_id: object = None,
        client_id: object = None,
    ) -> ChatTurn:
        """Validate a message and save it with an empty assistant reply.

        A ``client_id`` the user already sent returns the earlier exchange with
        ``replayed=True`` instead of saving a second one.

        Raises:
            InvalidMessage, MessageTooLong: bad content or client_id.
            ConversationNotFound: no such conversation of this user.
        """
        trace = Trace()
        text = validate_content(content)
        cid = validate_client_id(client_id)
        if cid is not None:
            earlier = self._find_replay(user, cid, trace)
            if earlier is not None:
                return earlier
        conversation = self._conversation(user, conversation_id, text)
        try:
            with transaction.atomic():
                user_message = Message.objects.create(
                    conversation=conversation,
                    owner=user,
                    role=Message.Role.USER,
                    content=text,
                    client_id=cid,
                )
                assistant_message = Message.objects.create(
                    conversation=conversation,
                    owner=user,
                    role=Message.Role.ASSISTANT,
                    status=Message.Status.STREAMING,
                )
                Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
        except IntegrityError:
            # Two sends with one client_id raced: the other one won.
            earlier = self._find_replay(user, cid, trace) if cid is not None else None
            if earlier is None:
                raise
            return earlier
        return ChatTurn(user, conversation, user_message, assistant_message, trace)

    def _conversation(self, user: Any, conversation_id: object, text: str) -> Conversation:
        if conversation_id is None:
            return Conversation.objects.create(
                owner=user, title=" ".join(text.split())[: mpai_settings.TITLE_LENGTH]
            )
        try:
            pk = int(conversation_id)  # type: ignore[call-overload]
            return Conversation.objects.get(pk=pk, owner=user)
        except (TypeError, ValueError, OverflowError, Conversation.DoesNotExist) as exc:
            raise ConversationNotFound() from exc

    def _find_replay(self, user: Any, client_id: str, trace: Trace) -> ChatTurn | None:
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
            user, user_message.conversation, user_message, assistant_message, trace, replayed=True
        )

    # -- step 2 ------------------------------------------------------------------------

    def run(
        self,
        turn: ChatTurn,
        *,
        on_delta: DeltaCallback,
        on_complete: Callable[[TurnResult], None] | None = None,
    ) -> TurnResult:
        """Stream the reply of ``turn`` to ``on_delta`` and save it.

        ``on_delta`` gets each non-empty text delta in order; an exception in it is
        logged and the reply goes on (a closed connection is not a cancel).
        ``on_complete`` gets the result after the save, before ``request_complete``.

        Returns:
            The :class:`TurnResult`; provider errors are reported in it, not raised.
        """
        result = self._replay(turn, on_delta) if turn.replayed else self._generate(turn, on_delta)
        if on_complete is not None:
            on_complete(result)
        send_robust(
            signals.request_complete,
            trace=turn.trace,
            user=turn.user,
            conversation=turn.conversation,
            message=result.message,
            status=result.status,
            error_code=result.error.code if result.error else None,
            timings_ms=result.timings_ms,
        )
        return result

    def build_messages(self, turn: ChatTurn) -> list[dict[str, str]]:
        """Return the provider messages: system prompt, recent history, the new message."""
        history = (
            Message.objects.filter(
                conversation=turn.conversation,
                status__in=[Message.Status.COMPLETE, Message.Status.CANCELLED],
                pk__lt=turn.user_message.pk,
            )
            .exclude(content="")
            .order_by("-created_at", "-pk")
            .values_list("role", "content")[: 2 * mpai_settings.MEMORY_MAX_PAIRS + 5]
        )
        messages = [{"role": "system", "content": mpai_settings.SYSTEM_PROMPT}]
        messages += [{"role": role, "content": content} for role, content in reversed(history)]
        messages.append({"role": "user", "content": turn.user_message.content})
        return messages

    def _generate(self, turn: ChatTurn, on_delta: DeltaCallback) -> TurnResult:
        trace, common = turn.trace, {"user": turn.user, "conversation": turn.conversation}
        model = mpai_settings.MODEL
        messages = self.build_messages(turn)
        trace.mark(points.CONTEXT_BUILT)
        send_robust(signals.context_built, trace=trace, messages=messages, model=model, **common)

        request = ChatRequest(model=model, messages=messages)
        parts: list[str] = []
        finish_reason: str | None = None
        usage: Usage | None = None
        error: MpaiError | None = None
        trace.mark(points.API_REQUEST_SENT)
        send_robust(signals.api_request_sent, trace=trace, request=request, **common)
        try:
            stream = self.provider.open_stream(request)
        except MpaiError as exc:
            error = exc
        except Exception as exc:
            logger.exception("mpai provider failed to open a stream")
            error = MpaiError()
            error.__cause__ = exc
        else:
            trace.attempts = stream.attempts
            trace.mark(points.API_RESPONSE_RECEIVED)
            send_robust(
                signals.api_response_received, trace=trace, attempts=stream.attempts, **common
            )
            turn._stream = stream
            try:
                if turn.cancelled:
                    stream.close()
                for chunk in stream:
                    if turn.cancelled:
                        break
                    if chunk.text:
                        trace.mark_once(points.FIRST_DELTA)
                        trace.mark(points.LAST_DELTA)
                        parts.append(chunk.text)
                        self._deliver(on_delta, chunk.text)
                    finish_reason = chunk.finish_reason or finish_reason
                    usage = chunk.usage or usage
            except MpaiError as exc:
                error = exc
            except Exception as exc:
                if not turn.cancelled:
                    logger.exception("mpai provider stream failed")
                    error = MpaiError()
                    error.__cause__ = exc
            finally:
                stream.close()
        return self._finish(turn, "".join(parts), finish_reason, usage, error, model=model)

    @staticmethod
    def _deliver(on_delta: DeltaCallback, text: str) -> None:
        try:
            on_delta(text)
        except Exception:
            logger.warning("mpai delta callback failed; the reply goes on", exc_info=True)

    def _finish(
        self,
        turn: ChatTurn,
        text: str,
        finish_reason: str | None,
        usage: Usage | None,
        error: MpaiError | None,
        *,
        model: str,
    ) -> TurnResult:
        trace = turn.trace
        trace.mark_once(points.FIRST_DELTA)
        trace.mark_once(points.LAST_DELTA)
        trace.mark(points.RESPONSE_PROCESSED)
        send_robust(
            signals.response_processed,
            trace=trace,
            user=turn.user,
            conversation=turn.conversation,
            text=text,
            finish_reason=finish_reason,
            usage=usage,
        )
        if turn.cancelled:
            status, error, finish_reason = Message.Status.CANCELLED, None, None
        elif error is not None:
            status = Message.Status.ERROR
        else:
            status = Message.Status.COMPLETE
        message = turn.assistant_message
        message.content = text
        message.status = status
        message.model = model
        message.finish_reason = finish_reason or ""
        message.error_code = error.code if error else ""
        message.prompt_tokens = usage.prompt_tokens if usage else None
        message.completion_tokens = usage.completion_tokens if usage else None
        message.cached = trace.cached
        message.save(
            update_fields=[
                "content",
                "status",
                "model",
                "finish_reason",
                "error_code",
                "prompt_tokens",
                "completion_tokens",
                "cached",
            ]
        )
        trace.mark(points.SAVED)
        trace.mark(points.REQUEST_COMPLETE)
        return TurnResult(
            message=message,
            status=status,
            finish_reason=finish_reason,
            usage=usage,
            cached=trace.cached,
            replayed=False,
            timings_ms=trace.timings_ms(),
            error=error,
        )

    def _replay(self, turn: ChatTurn, on_delta: DeltaCallback) -> TurnResult:
        """Send the saved reply of an earlier send, waiting while it is still streaming."""
        message = turn.assistant_message
        while message.status == Message.Status.STREAMING and not turn.cancelled:
            time.sleep(self.replay_poll_interval)
            message.refresh_from_db()
        trace = turn.trace
        trace.mark(points.CONTEXT_BUILT)
        if message.content:
            trace.mark(points.FIRST_DELTA)
            self._deliver(on_delta, message.content)
        trace.mark_once(points.FIRST_DELTA)
        trace.mark(points.LAST_DELTA)
        trace.mark(points.SAVED)
        trace.mark(points.REQUEST_COMPLETE)
        error = None
        if message.status == Message.Status.ERROR:
            error = MpaiError("The original reply failed.")
            error.code = message.error_code or MpaiError.code
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
        )
