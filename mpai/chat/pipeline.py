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

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.dispatch import Signal
from django.utils import timezone
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from mpai import signals
from mpai.chat import history_cache, leases, response_cache
from mpai.chat import trace as points
from mpai.chat.context import ContextBuilder, ContextRequest, budget_tokens
from mpai.chat.memory import ConversationMemory
from mpai.chat.model_choice import choose_model
from mpai.chat.ratelimit import enforce
from mpai.chat.titles import default_title
from mpai.chat.trace import Trace
from mpai.chat.validation import validate_client_id, validate_content, validate_page
from mpai.conf import mpai_settings
from mpai.exceptions import ConversationNotFound, MessageTooLong, MpaiError, ProviderTimeout
from mpai.models import Conversation, Message
from mpai.providers import ChatProvider, ChatRequest, ChatStream, Usage, get_provider

logger = logging.getLogger(__name__)

DeltaCallback = Callable[[str], None]

#: Cache group of a conversation's recent messages (seed: conversation context, 15 min).
CONVERSATION_CONTEXT = "conversation_context"

#: Turns being generated in this process (for server shutdown).
_active_turns: weakref.WeakSet[ChatTurn] = weakref.WeakSet()


def cancel_all_turns() -> int:
    """Cancel every reply being generated in this process (server shutdown).

    Each is saved with its partial text and status ``cancelled`` by the thread that
    runs it. Returns the number of turns cancelled.
    """
    turns = list(_active_turns)
    for turn in turns:
        turn.cancel()
    return len(turns)


def active_turns() -> int:
    """Return the number of replies being generated in this process."""
    return len(_active_turns)


@dataclass(eq=False)  # identity semantics: turns live in a WeakSet
class ChatTurn:
    """One exchange: the saved user message and the assistant message being written."""

    user: Any
    conversation: Conversation
    user_message: Message
    assistant_message: Message
    trace: Trace
    replayed: bool = False
    page: dict[str, Any] | None = None
    use_cache: bool = True
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    _stream: ChatStream | None = field(default=None, repr=False)
    # The reply's text so far, kept on the turn so an unexpected failure still saves it.
    parts: list[str] = field(default_factory=list, repr=False)
    model: str = ""
    # The model refused (Chat Completions ``delta.refusal``): its refusal is the reply.
    refusal: bool = False

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
    refusal: bool = False

    @property
    def partial_message_id(self) -> int | None:
        """The reply's id when an error left partial text saved, else None."""
        return self.message.pk if self.error is not None and self.message.content else None

    def summary(self) -> dict[str, Any]:
        """Return the fields ``chat.completed`` reports (CONTRACTS.md), JSON-ready."""
        return {
            "message": self.message.pk,
            "status": self.status,
            "finish_reason": self.finish_reason,
            "cached": self.cached,
            "replayed": self.replayed,
            "usage": self.usage.as_dict() if self.usage else None,
            "timings_ms": self.timings_ms,
            **({"refusal": True} if self.refusal else {}),
        }


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
)


def save_reply(message: Message, *, attempts: int | None = None) -> None:
    """Save the end of a turn, retrying on a fresh database connection.

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
            message.save(update_fields=REPLY_FIELDS)


def _discard_connection(outcome: Any) -> None:
    logger.warning(
        "mpai could not save a reply; retrying on a new connection: %s",
        outcome.exception() if outcome else None,
    )
    with contextlib.suppress(Exception):  # Django forgets the connection either way
        connection.close()


def send_robust(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal`` from the pipeline; a receiver's exception is logged, never raised."""
    for receiver, response in signal.send_robust(sender=ChatPipeline, **kwargs):
        if isinstance(response, Exception):
            logger.error("mpai signal receiver %r raised", receiver, exc_info=response)


class ChatPipeline:
    """Run chat turns against a provider (default: ``MPAI["PROVIDER"]``)."""

    def __init__(self, provider: ChatProvider | None = None) -> None:
        self._provider = provider
        # Live memory per conversation id; a websocket connection keeps one pipeline.
        self.memories: dict[int, ConversationMemory] = {}

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
        page: object = None,
        use_cache: object = True,
    ) -> ChatTurn:
        """Validate a message and save it with an empty assistant reply.

        A ``client_id`` the user already sent returns the earlier exchange with
        ``replayed=True`` instead of saving a second one.

        Args:
            page: optional ``{"url": str, "title": str}`` of the page the user is on.
            use_cache: False skips the response cache for this request.

        Raises:
            InvalidMessage, MessageTooLong: bad content or client_id; a message whose
                tokens alone exceed the context budget is too long.
            RateLimited: the user's token bucket is empty (``retry_after`` in seconds);
                a resend counts like a new message (each one may wait for a reply).
            ConversationNotFound: no such conversation of this user.
        """
        trace = Trace()
        text = validate_content(content)
        if ContextBuilder().estimate(text) > budget_tokens():
            raise MessageTooLong("The message alone is longer than the model's context budget.")
        cid = validate_client_id(client_id)
        page = validate_page(page)
        enforce(user=user)
        if cid is not None:
            earlier = self._find_replay(user, cid, trace)
            if earlier is not None:
                return earlier
        try:
            # One transaction: a client_id race leaves no empty conversation behind.
            with transaction.atomic():
                conversation = self._conversation(user, conversation_id, text)
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
                    heartbeat_at=timezone.now(),
                )
                Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
        except IntegrityError:
            # Two sends with one client_id raced: the other one won.
            earlier = self._find_replay(user, cid, trace) if cid is not None else None
            if earlier is None:
                raise
            return earlier
        return ChatTurn(
            user,
            conversation,
            user_message,
            assistant_message,
            trace,
            page=page,
            use_cache=use_cache is not False,
        )

    def _conversation(self, user: Any, conversation_id: object, text: str) -> Conversation:
        if conversation_id is None:
            return Conversation.objects.create(owner=user, title=default_title(text))
        # Ids are the integers we sent (or their decimal strings); anything else is unknown.
        if isinstance(conversation_id, bool) or not isinstance(conversation_id, int | str):
            raise ConversationNotFound()
        try:
            return Conversation.objects.get(pk=int(conversation_id), owner=user)
        except (ValueError, OverflowError, Conversation.DoesNotExist) as exc:
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
        _active_turns.add(turn)
        if not turn.replayed:
            leases.hold(turn.assistant_message.pk)
        try:
            if turn.replayed:
                result = self._replay(turn, on_delta)
            else:
                try:
                    result = self._generate(turn, on_delta)
                except Exception as exc:
                    # A started turn always ends saved: the text so far, status error.
                    logger.exception("mpai chat turn failed; saving its partial reply")
                    error = MpaiError()
                    error.__cause__ = exc
                    result = self._finish(
                        turn, "".join(turn.parts), None, None, error, model=turn.model
                    )
        finally:
            _active_turns.discard(turn)
            leases.release(turn.assistant_message.pk)
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

    def memory(self, conversation: Conversation, *, before: int) -> ConversationMemory:
        """Return the live memory of ``conversation`` with its current messages.

        The messages come from the cached conversation context (15 minutes, shared by
        every connection and process, so two tabs on one conversation agree); without
        one, from this connection's live memory unless the conversation moved on since
        (another tab or device) or it sat idle past ``MEMORY_IDLE_SECONDS``, which also
        drops the cached context; else from the database, taking only messages saved
        before ``before`` (the current user message's id).
        """
        memory = self.memories.get(conversation.pk)
        if memory is not None and memory.idle_for() > mpai_settings.MEMORY_IDLE_SECONDS:
            del self.memories[conversation.pk]
            history_cache.delete_conversation_context(conversation)
            memory = None
        cached = history_cache.read_conversation_context(conversation)
        if cached is None and memory is not None and not self._moved_on(conversation, memory):
            return memory
        if memory is None:
            memory = ConversationMemory(max_pairs=mpai_settings.MEMORY_MAX_PAIRS)
            self.memories[conversation.pk] = memory
        memory.messages = (
            list(cached)
            if cached is not None
            else self.load_history(conversation, limit=memory.safe_size, before=before)
        )
        memory.synced_at = timezone.now()
        return memory

    @staticmethod
    def _moved_on(conversation: Conversation, memory: ConversationMemory) -> bool:
        """True when the conversation was updated after ``memory`` was last synced."""
        return memory.synced_at is not None and conversation.updated_at > memory.synced_at

    @staticmethod
    def load_history(
        conversation: Conversation, *, limit: int, before: int
    ) -> list[dict[str, str]]:
        """Return the newest ``limit`` shown messages of ``conversation`` with ids below
        ``before``, oldest first."""
        rows = (
            Message.objects.filter(
                conversation=conversation,
                status__in=[Message.Status.COMPLETE, Message.Status.CANCELLED],
                pk__lt=before,
            )
            .exclude(content="")
            .order_by("-created_at", "-pk")
            .values_list("role", "content")[:limit]
        )
        return [{"role": role, "content": content} for role, content in reversed(rows)]

    def _remember(self, turn: ChatTurn, memory: ConversationMemory, reply: str) -> None:
        memory.append(Message.Role.USER.value, turn.user_message.content)
        if reply:
            memory.append(Message.Role.ASSISTANT.value, reply)
        memory.end_turn()
        memory.synced_at = timezone.now()
        history_cache.write_conversation_context(turn.conversation, turn.user, memory.messages)

    def _generate(self, turn: ChatTurn, on_delta: DeltaCallback) -> TurnResult:
        trace, common = turn.trace, {"user": turn.user, "conversation": turn.conversation}
        memory = self.memory(turn.conversation, before=turn.user_message.pk)
        builder = ContextBuilder()
        query = turn.user_message.content
        context = builder.build(
            ContextRequest(turn.user, turn.conversation, query, turn.page), memory.messages
        )
        model = turn.model = choose_model(query=query, prompt_tokens=context.tokens)
        messages = context.messages
        trace.mark(points.CONTEXT_BUILT)
        send_robust(signals.context_built, trace=trace, messages=messages, model=model, **common)

        request = ChatRequest(model=model, messages=messages)
        use_cache = turn.use_cache and mpai_settings.RESPONSE_CACHE_ENABLED
        cached = response_cache.lookup(request) if use_cache else None
        if cached is not None:
            trace.cached = True
            size = max(int(mpai_settings.CACHED_DELTA_CHARS), 1)
            for start in range(0, len(cached.text), size):
                if turn.cancelled:
                    break
                trace.mark_once(points.FIRST_DELTA)
                turn.parts.append(cached.text[start : start + size])
                self._deliver(on_delta, turn.parts[-1])
                trace.mark(points.LAST_DELTA)
            text = "".join(turn.parts)
            result = self._finish(turn, text, cached.finish_reason, cached.usage, None, model=model)
        else:
            release_db_connection()  # the stream does no database work, for seconds
            text, finish_reason, usage, error = self._stream(turn, request, on_delta)
            result = self._finish(turn, text, finish_reason, usage, error, model=model)
            if use_cache and result.status == Message.Status.COMPLETE and not turn.refusal:
                response_cache.store(request, text=text, finish_reason=finish_reason, usage=usage)
        self._remember(turn, memory, result.message.content)
        return result

    def _stream(
        self, turn: ChatTurn, request: ChatRequest, on_delta: DeltaCallback
    ) -> tuple[str, str | None, Usage | None, MpaiError | None]:
        """Call the provider and relay deltas; returns (text, finish_reason, usage, error)."""
        trace, common = turn.trace, {"user": turn.user, "conversation": turn.conversation}
        parts = turn.parts
        finish_reason: str | None = None
        usage: Usage | None = None
        error: MpaiError | None = None
        trace.mark(points.API_REQUEST_SENT)
        send_robust(signals.api_request_sent, trace=trace, request=request, **common)
        try:
            stream = self.provider.open_stream(request)
        except MpaiError as exc:
            return "", None, None, exc
        except Exception as exc:
            logger.exception("mpai provider failed to open a stream")
            error = MpaiError()
            error.__cause__ = exc
            return "", None, None, error
        trace.attempts = stream.attempts
        trace.mark(points.API_RESPONSE_RECEIVED)
        send_robust(signals.api_response_received, trace=trace, attempts=stream.attempts, **common)
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
                turn.refusal = turn.refusal or chunk.refusal
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
        return "".join(parts), finish_reason, usage, error

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
        save_reply(message)
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
            refusal=turn.refusal,
        )

    def _replay(self, turn: ChatTurn, on_delta: DeltaCallback) -> TurnResult:
        """Send the saved reply of an earlier send, waiting while it is still streaming.

        The wait is bounded: it ends when the reply is saved, when the turn is cancelled
        (the client left), when no live turn in any process owns the reply any more
        (``mpai.chat.leases``: the reply is then marked ``error``), or after
        ``MPAI["REPLAY_TIMEOUT_SECONDS"]`` (``provider_timeout``, the reply left as it
        is). No database connection is held between reads.
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
            turn._cancelled.wait(min(poll, max(deadline - time.monotonic(), 0.0)))
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
        error: MpaiError | None = None
        if timed_out:
            error = ProviderTimeout(
                "The original reply is still being written; it will be in the history "
                "when it is done."
            )
        elif message.status == Message.Status.ERROR:
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
