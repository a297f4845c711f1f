"""The chat pipeline: one service used by every interface (websocket, HTTP, tasks).

:meth:`ChatPipeline.stream` validates a message, saves it with an empty assistant
reply (status ``streaming``) in one transaction, and returns a
:class:`~mpai.chat.turns.TurnStream` of events: ``Started``, the reply's ``Delta``
events as the provider streams them (and ``ToolEvent`` events when the model calls
tools: :mod:`mpai.chat.tool_loop`), and one ``Finished`` once the reply is saved,
also when it was interrupted (partial text with status ``error`` or ``cancelled``:
nothing the user saw is lost). :meth:`ChatPipeline.complete` drains the stream.

Iterating a stream blocks (ORM and ``requests``): async callers iterate it in a
thread. Signals are sent at each measurement point (:mod:`mpai.signals`; README,
"Signals").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from django.db import IntegrityError

from mpai import signals
from mpai.chat import client_ids, leases, replay, response_cache, turns
from mpai.chat import trace as points
from mpai.chat.context import ContextBuilder, budget_tokens
from mpai.chat.history import ConversationHistory
from mpai.chat.memory import ConversationMemory
from mpai.chat.opening import Opening
from mpai.chat.ratelimit import enforce
from mpai.chat.saving import release_db_connection, save_reply
from mpai.chat.starting import (
    Prepared,
    authorized,
    find_conversation,
    prepare_turn,
    save_exchange,
    send_robust,
)
from mpai.chat.tool_loop import (
    ROUND_SEPARATOR,
    assistant_tool_message,
    fit_follow_up,
    summed_usage,
    tool_record,
    with_tool_note,
)
from mpai.chat.trace import Trace
from mpai.chat.turns import (
    ChatTurn,
    Delta,
    Event,
    Finished,
    ReplyBuffer,
    Started,
    ToolEvent,
    TurnResult,
    TurnStream,
)
from mpai.chat.validation import (
    validate_client_id,
    validate_content,
    validate_page,
    validate_resume_from,
)
from mpai.conf import mpai_settings
from mpai.exceptions import (
    MessageTooLong,
    MpaiError,
    ToolIterationsExceeded,
)
from mpai.models import Message
from mpai.providers import ChatProvider, ChatRequest, ToolCall, Usage, get_provider
from mpai.tools import ToolResult, run_tool_calls, tool_messages
from mpai.usage.quotas import check_quota

logger = logging.getLogger(__name__)

# The turn registry lives in mpai.chat.turns; these names stay importable from here.
active_turns = turns.active_turns
cancel_all_turns = turns.cancel_all_turns

__all__ = [
    "ChatPipeline",
    "ChatTurn",
    "Delta",
    "Finished",
    "Started",
    "TurnResult",
    "TurnStream",
    "active_turns",
    "cancel_all_turns",
]


@dataclass
class Streamed:
    """What one provider request of a turn gave.

    Attributes:
        text: the text of this request's reply (a part of the turn's reply).
        finish_reason: the provider's, or None.
        usage: the provider's figures for this request, or None.
        error: the error that ended the stream, or None.
        tool_calls: the calls the reply asks for, ``{"id", "name", "arguments"}``.
    """

    text: str
    finish_reason: str | None
    usage: Usage | None
    error: MpaiError | None
    tool_calls: tuple[ToolCall, ...] = ()


class ChatPipeline:
    """Run chat turns against a provider (default: ``MPAI["PROVIDER"]``).

    One pipeline per connection: it keeps that connection's live conversation memory.
    """

    def __init__(self, provider: ChatProvider | None = None) -> None:
        self._provider = provider
        self.history = ConversationHistory()

    @property
    def provider(self) -> ChatProvider:
        return self._provider or get_provider()

    @property
    def memories(self) -> dict[int, ConversationMemory]:
        """The live memories of this pipeline's connection, by conversation id."""
        return self.history.memories

    # -- the interface -----------------------------------------------------------------

    def stream(
        self,
        *,
        user: Any,
        content: object,
        conversation_id: object = None,
        client_id: object = None,
        page: object = None,
        use_cache: object = True,
        authorize: Callable[[], Any] | None = None,
        resume_from: object = None,
    ) -> TurnStream:
        """Validate and save a message; return the events of its turn.

        A ``client_id`` the user already sent replays the earlier exchange
        (``Started.replayed``) instead of saving a second one.

        The first provider request is sent before the exchange is saved, once
        everything it depends on is decided (:mod:`mpai.chat.opening`): the save runs
        while the provider prepares its first token.

        Args:
            page: optional ``{"url": str, "title": str}`` of the page the user is on.
            use_cache: False skips the response cache for this request.
            authorize: optional check that the user may still chat (the websocket's
                session check, :func:`mpai.sessions.current_user`): returns the user,
                fresh, or None. Called before anything is saved, replayed or sent.
            resume_from: characters of the reply a resend's client already has (a
                non-negative int; None = 0): the replay sends only the text after them.

        Raises (before any event, nothing saved):
            InvalidMessage, MessageTooLong: bad content, ``client_id``, ``page`` or
                ``resume_from``; a
                message whose tokens alone exceed the context budget is too long.
            RateLimited: the user's token bucket is empty (``retry_after`` in seconds);
                a resend counts like a new message (each one may wait for a reply).
            QuotaExceeded: the user's plan allows no more messages now.
            ConversationNotFound: no such conversation of this user.
            NotAuthenticated: ``authorize`` returned None.
        """
        turn, prepared = self._start(
            user=user,
            content=content,
            conversation_id=conversation_id,
            client_id=client_id,
            page=page,
            use_cache=use_cache,
            authorize=authorize,
            resume_from=resume_from,
        )
        return TurnStream(turn, self._events(turn, prepared))

    def complete(self, **kwargs: Any) -> TurnResult:
        """Run a whole turn and return its result (the HTTP API, tasks).

        Takes the arguments of :meth:`stream` and raises its errors; provider errors
        are reported in the result, not raised.
        """
        result: TurnResult | None = None
        with self.stream(**kwargs) as events:
            for event in events:
                if isinstance(event, Finished):
                    result = event.result
        assert result is not None  # _events always ends with Finished
        return result

    # -- starting ----------------------------------------------------------------------

    def _start(
        self,
        *,
        user: Any,
        content: object,
        conversation_id: object,
        client_id: object,
        page: object,
        use_cache: object,
        authorize: Callable[[], Any] | None,
        resume_from: object,
    ) -> tuple[ChatTurn, Prepared | None]:
        trace = Trace()
        text = validate_content(content)
        if ContextBuilder().estimate(text) > budget_tokens():
            raise MessageTooLong("The message alone is longer than the model's context budget.")
        cid = validate_client_id(client_id)
        skip = validate_resume_from(resume_from)
        checked_page = validate_page(page)
        enforce(user=user)
        # A client_id Redis has not seen is new: no lookup (mpai.chat.client_ids).
        if cid is not None and not client_ids.claim(user, cid):
            earlier = replay.find_exchange(user, cid, trace, resume_from=skip)
            if earlier is not None:
                authorized(user, authorize)
                return earlier, None
        # After the replay: a resend of a message already answered is not a new one.
        check_quota(user)
        conversation, created = find_conversation(user, conversation_id, text)
        # Before the request: a signed-out socket's message never reaches the provider.
        user = authorized(user, authorize)
        if created:
            conversation.owner = user
        try:
            prepared: Prepared | None = prepare_turn(
                self.history,
                self.provider,
                user,
                conversation,
                new=created,
                query=text,
                page=checked_page,
                use_cache=use_cache is not False,
                trace=trace,
            )
        except Exception:
            # Then the turn prepares once started, where a failure is a saved error.
            logger.exception("mpai could not prepare a turn before saving it")
            prepared = None
        try:
            user_message, assistant_message = save_exchange(
                user, conversation, text, client_id=cid, new=created
            )
        except IntegrityError:
            if prepared is not None:
                prepared.discard()
            if created:
                conversation.pk = None  # rolled back
            # Two sends with one client_id raced: the other one won.
            earlier = (
                replay.find_exchange(user, cid, trace, resume_from=skip)
                if cid is not None
                else None
            )
            if earlier is None:
                raise
            return earlier, None
        except BaseException:
            if prepared is not None:
                prepared.discard()
            raise
        if created and prepared is not None:
            self.history.adopt(conversation.pk, prepared.memory)
        turn = ChatTurn(
            user,
            conversation,
            user_message,
            assistant_message,
            trace,
            page=checked_page,
            use_cache=use_cache is not False,
            client_id=cid,
            new_conversation=created,
        )
        return turn, prepared

    # -- the turn ----------------------------------------------------------------------

    def _events(self, turn: ChatTurn, prepared: Prepared | None) -> Iterator[Event]:
        """Yield the events of a started turn; it always ends saved, with Finished."""
        turns.register(turn)
        if not turn.replayed:
            leases.hold(turn.assistant_message.pk)
        try:
            yield Started(
                conversation_id=turn.conversation.pk,
                message_id=turn.assistant_message.pk,
                user_message_id=turn.user_message.pk,
                client_id=turn.client_id,
                replayed=turn.replayed,
            )
            if turn.replayed:
                result = yield from replay.replay(turn)
            else:
                try:
                    result = yield from self._generate(turn, prepared)
                except Exception as exc:
                    # A started turn always ends saved: the text so far, status error.
                    logger.exception("mpai chat turn failed; saving its partial reply")
                    error = MpaiError()
                    error.__cause__ = exc
                    result = self._finish(turn, None, None, error)
        finally:
            if prepared is not None:
                prepared.discard()  # not taken: the turn ended before its request
            turns.unregister(turn)
            leases.release(turn.assistant_message.pk)
        yield Finished(result)
        for work in turn.after_finish:
            try:
                work()
            except Exception:
                logger.exception("mpai could not finish the work after a turn")
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

    def _generate(
        self, turn: ChatTurn, prepared: Prepared | None
    ) -> Generator[Event, None, TurnResult]:
        trace = turn.trace
        if turn.cancelled:  # cancelled before it began: no reply at all
            return self._finish(turn, None, None, None)
        query = turn.user_message.content
        if prepared is None:
            prepared = prepare_turn(
                self.history,
                self.provider,
                turn.user,
                turn.conversation,
                new=turn.new_conversation,
                query=query,
                page=turn.page,
                use_cache=turn.use_cache,
                trace=trace,
                before=turn.user_message.pk,
            )
        memory, request, cached = prepared.memory, prepared.request, prepared.cached
        turn.model = prepared.model
        if cached is not None:
            trace.cached = True
            size = max(int(mpai_settings.CACHED_DELTA_CHARS), 1)
            for start in range(0, len(cached.text), size):
                if turn.cancelled:
                    break
                trace.mark_once(points.FIRST_DELTA)
                piece = cached.text[start : start + size]
                turn.reply.write(piece)
                yield Delta(piece)
                trace.mark(points.LAST_DELTA)
            result = self._finish(turn, cached.finish_reason, cached.usage, None)
        else:
            release_db_connection()  # the stream does no database work, for seconds
            finish_reason, usage, error = yield from self._converse(turn, request, prepared.opening)
            result = self._finish(turn, finish_reason, usage, error)
            complete = result.status == Message.Status.COMPLETE
            if prepared.use_cache and complete and not turn.refusal and not turn.tool_records:
                text = result.message.content
                turn.after_finish.append(
                    lambda: response_cache.store(
                        request, text=text, finish_reason=finish_reason, usage=usage
                    )
                )
        self.history.remember(
            turn.conversation,
            turn.user,
            memory,
            query=query,
            reply=with_tool_note(result.message.content, turn.tool_records),
        )
        return result

    def _converse(
        self, turn: ChatTurn, request: ChatRequest, opening: Opening | None = None
    ) -> Generator[Event, None, tuple[str | None, Usage | None, MpaiError | None]]:
        """The provider requests of a turn; return (finish_reason, usage, error).

        ``opening``: the first request, sent already (:meth:`_prepare`).

        One request, unless it offers tools and the model asks for some: then the calls
        run (:meth:`_run_tools`) and the conversation goes again with the calls and
        their results (:mod:`mpai.chat.tool_loop`), until the model answers in text.
        After ``MPAI["TOOL_MAX_ITERATIONS"]`` rounds of calls, a reply still asking for
        tools ends the turn with :class:`ToolIterationsExceeded` (its calls not run).
        ``usage`` is summed over the requests. A cancel stops the loop between and
        during tool calls.
        """
        limit = max(int(mpai_settings.TOOL_MAX_ITERATIONS), 0)
        usage: Usage | None = None
        rounds = 0
        wrote_text = False
        while True:
            streamed = yield from self._stream(
                turn, request, separator=ROUND_SEPARATOR if wrote_text else "", opening=opening
            )
            opening = None
            wrote_text = wrote_text or bool(streamed.text)
            usage = summed_usage(usage, streamed.usage)
            calls = streamed.tool_calls
            if not (request.tools and calls) or streamed.error or turn.cancelled or turn.refusal:
                return streamed.finish_reason, usage, streamed.error
            if rounds >= limit:
                logger.warning("mpai turn still asked for tools after %d rounds", rounds)
                return streamed.finish_reason, usage, ToolIterationsExceeded()
            rounds += 1
            results = yield from self._run_tools(turn, calls)
            if turn.cancelled:
                return None, usage, None
            # The follow-up fits the input budget too: older history goes first, then
            # tool results are cut (never dropped from their calls).
            messages = fit_follow_up(
                [
                    *request.messages,
                    assistant_tool_message(streamed.text, calls),
                    *tool_messages(results),
                ],
                budget=budget_tokens(),
                estimate=ContextBuilder().estimate,
            )
            request = replace(request, messages=messages)

    def _run_tools(
        self, turn: ChatTurn, calls: Sequence[ToolCall]
    ) -> Generator[ToolEvent, None, list[ToolResult]]:
        """Run one round of tool calls (concurrently, ``MPAI["TOOL_MAX_CONCURRENCY"]`` at
        most); yield a ``started`` event per call first, then one per result."""
        for call in calls:
            yield ToolEvent(call["name"], call["id"], "started")
        results = run_tool_calls(turn.user, calls, cancel_event=turn.cancel_event)
        for call, result in zip(calls, results, strict=True):
            turn.tool_records.append(tool_record(call, result))
            send_robust(
                signals.tool_called,
                trace=turn.trace,
                user=turn.user,
                conversation=turn.conversation,
                name=result.name,
                call_id=result.call_id,
                status=result.status,
                duration_ms=result.duration_ms,
                error_code=result.error_code,
            )
            yield ToolEvent(
                result.name, result.call_id, result.status, result.duration_ms, result.error_code
            )
        return results

    def _stream(
        self,
        turn: ChatTurn,
        request: ChatRequest,
        *,
        separator: str = "",
        opening: Opening | None = None,
    ) -> Generator[Delta, None, Streamed]:
        """Call the provider once (or take ``opening``, the request sent already) and
        yield its deltas (``separator`` first, before the first text, when given);
        return what the request gave."""
        trace, common = turn.trace, {"user": turn.user, "conversation": turn.conversation}
        reply = turn.reply
        text = ReplyBuffer()
        finish_reason: str | None = None
        usage: Usage | None = None
        error: MpaiError | None = None
        tool_calls: tuple[ToolCall, ...] = ()
        provider = self.provider
        if opening is None:
            trace.provider_name = provider.provider_name
            # The first request's times (a tool loop sends more): first_token stays the
            # wait the user had for the first text.
            trace.mark_once(points.API_REQUEST_SENT)
            send_robust(signals.api_request_sent, trace=trace, request=request, **common)
        try:
            stream = opening.take() if opening is not None else provider.open_stream(request)
        except MpaiError as exc:
            return Streamed("", None, None, exc)
        except Exception as exc:
            logger.exception("mpai provider failed to open a stream")
            error = MpaiError()
            error.__cause__ = exc
            return Streamed("", None, None, error)
        trace.attempts += stream.attempts
        trace.mark_once(points.API_RESPONSE_RECEIVED)
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
                    if separator:
                        reply.write(separator)
                        yield Delta(separator)
                        separator = ""
                    reply.write(chunk.text)
                    text.write(chunk.text)
                    yield Delta(chunk.text)
                finish_reason = chunk.finish_reason or finish_reason
                turn.refusal = turn.refusal or chunk.refusal
                usage = chunk.usage or usage
                tool_calls = chunk.tool_calls or tool_calls
        except MpaiError as exc:
            error = exc
        except Exception as exc:
            if not turn.cancelled:
                logger.exception("mpai provider stream failed")
                error = MpaiError()
                error.__cause__ = exc
        finally:
            stream.close()
        return Streamed(text.getvalue(), finish_reason, usage, error, tool_calls)

    def _finish(
        self,
        turn: ChatTurn,
        finish_reason: str | None,
        usage: Usage | None,
        error: MpaiError | None,
    ) -> TurnResult:
        """Save the reply (``turn.reply``) with its final status; return the result."""
        trace = turn.trace
        text = turn.reply.getvalue()
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
        message.model = turn.model
        message.finish_reason = finish_reason or ""
        message.error_code = error.code if error else ""
        message.prompt_tokens = usage.prompt_tokens if usage else None
        message.completion_tokens = usage.completion_tokens if usage else None
        message.cached = trace.cached
        message.tool_calls = list(turn.tool_records) or None
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
            user_message_id=turn.user_message.pk,
        )
