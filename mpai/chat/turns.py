"""Turns, their events and the stream of them, and the turns active in this process.

:meth:`mpai.chat.pipeline.ChatPipeline.stream` validates and saves a message, then
returns a :class:`TurnStream`: an iterator of typed events,

- :class:`Started` first (the ids, known once the exchange is saved),
- :class:`Delta` for each piece of the reply, in order (their texts concatenated are
  exactly the saved reply),
- :class:`ToolEvent` when the model calls a tool (``MPAI["TOOLS"]``): one with
  status ``started`` per call before the calls run, one with the call's outcome
  after; they come between deltas, in the order things happen,
- :class:`Finished` last, exactly once, with the :class:`TurnResult` (its ``error``
  set when the turn failed).

A :class:`TurnStream` is
iterated by one thread at a time; :meth:`TurnStream.cancel` may be called from any
thread. A stream closed or dropped before its end is drained on a background thread:
the reply still finishes and is saved (a client that goes away is not a cancel).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mpai.chat.reply_stream import ReplyPublisher, open_publisher
from mpai.chat.trace import Trace
from mpai.exceptions import MpaiError
from mpai.models import Conversation, Message
from mpai.providers import ChatStream, Usage

logger = logging.getLogger(__name__)


# --- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """The exchange is saved: its ids (the reply's row is ``streaming``)."""

    conversation_id: int
    message_id: int
    user_message_id: int
    client_id: str | None
    replayed: bool


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the reply's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolEvent:
    """A tool call of the reply started or ended (the ``chat.tool`` frame).

    Attributes:
        name: the function name the model called.
        call_id: the call's id (the model's ``tool_calls[].id``).
        status: ``"started"``, then ``"ok"``, ``"error"`` or ``"cancelled"``.
        duration_ms: how long the call took (ms), once it ended; None when started.
        error_code: the error's code (``mpai.tools.execution``) for ``"error"``.
    """

    name: str
    call_id: str
    status: str
    duration_ms: float | None = None
    error_code: str | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """The reply is saved; ``result.error`` says whether the turn failed."""

    result: TurnResult


Event = Started | Delta | ToolEvent | Finished


# --- turns -----------------------------------------------------------------------------


class ReplyBuffer:
    """A reply's text as it streams, in compact blocks.

    A list of the deltas would keep every delta a ``str`` object of its own (about 50
    bytes of header each: a 4 MB reply of word-sized deltas held some 25 MB), and
    ``io.StringIO`` keeps such a list too until it is read. Every :data:`BLOCK` deltas
    are joined into one string, so the text is held in about its own size.
    """

    BLOCK = 256

    __slots__ = ("_blocks", "_parts", "publisher")

    def __init__(self) -> None:
        self._blocks: list[str] = []
        self._parts: list[str] = []
        # The reply's stream for resends in other processes (set by register()).
        self.publisher: ReplyPublisher | None = None

    def write(self, text: str) -> None:
        """Append ``text``; publish it to the reply's stream too, when it has one."""
        self._parts.append(text)
        if len(self._parts) >= self.BLOCK:
            self._blocks.append("".join(self._parts))
            self._parts.clear()
        publisher = self.publisher
        if publisher is not None:
            publisher.write(text)

    def getvalue(self) -> str:
        """Return the whole text so far."""
        return "".join(self._blocks) + "".join(self._parts)


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
    client_id: str | None = None
    # A replayed turn: characters of the reply the client already has (not sent again).
    resume_from: int = 0
    # The conversation was created by this turn: it has no history to read.
    new_conversation: bool = False
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)
    _stream: ChatStream | None = field(default=None, repr=False)
    # The reply's text so far, kept on the turn so an unexpected failure still saves it.
    reply: ReplyBuffer = field(default_factory=lambda: ReplyBuffer(), repr=False)
    model: str = ""
    # The model refused (Chat Completions ``delta.refusal``): its refusal is the reply.
    refusal: bool = False
    # Work that waits until the client has the final event (cache writes).
    after_finish: list[Callable[[], object]] = field(default_factory=list, repr=False)
    # The tool calls of the reply and their results (Message.tool_calls), in order.
    tool_records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def cancel(self) -> None:
        """Stop the reply (the stop button); safe to call from any thread."""
        self._cancelled.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def cancel_event(self) -> threading.Event:
        """Set by :meth:`cancel` (for work that waits, e.g. tool calls)."""
        return self._cancelled

    def wait_cancelled(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a cancel; return whether there was one."""
        return self._cancelled.wait(timeout)


@dataclass
class TurnResult:
    """How a turn ended.

    Attributes:
        message: the saved assistant message.
        status: ``complete``, ``cancelled`` or ``error`` (the saved message's status;
            ``streaming`` only for a resend that stopped waiting).
        finish_reason: the provider's (``stop``, ``length``, …) or None.
        usage: provider usage figures, when sent.
        cached: served from the response cache.
        replayed: the saved reply of an earlier send with the same ``client_id``.
        timings_ms: stage timings in ms (``Trace.timings_ms``).
        error: the error for status ``error``, else None.
        refusal: the model refused; the refusal is the reply.
        user_message_id: the id of the user's message of the exchange.
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
    user_message_id: int | None = None

    @property
    def conversation_id(self) -> int:
        return int(self.message.conversation_id)

    @property
    def partial_message_id(self) -> int | None:
        """The reply's id when an error left partial text saved, else None."""
        return self.message.pk if self.error is not None and self.message.content else None


# --- the stream ------------------------------------------------------------------------

_drainer: ThreadPoolExecutor | None = None
_drainer_lock = threading.Lock()


def _drain(events: Iterator[Event]) -> None:
    try:
        for _ in events:
            pass
    except Exception:
        logger.exception("mpai turn failed while draining an abandoned stream")


def _drain_in_background(events: Iterator[Event]) -> None:
    global _drainer
    with _drainer_lock:
        if _drainer is None:
            _drainer = ThreadPoolExecutor(thread_name_prefix="mpai-drain")
        _drainer.submit(_drain, events)


class TurnStream:
    """The events of one started turn (see the module docstring).

    Use it as an iterator, ideally as a context manager::

        with pipeline.stream(user=user, content="Hi") as events:
            for event in events:
                ...

    Attributes:
        turn: the :class:`ChatTurn` (ids: ``turn.conversation.pk``, …).
    """

    def __init__(self, turn: ChatTurn, events: Iterator[Event]) -> None:
        self.turn = turn
        self._events: Iterator[Event] | None = events
        self._lock = threading.Lock()

    @property
    def replayed(self) -> bool:
        return self.turn.replayed

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        events = self._events
        if events is None:
            raise StopIteration
        try:
            return next(events)
        except StopIteration:
            self._events = None
            raise

    def cancel(self) -> None:
        """Stop the reply; the stream then ends with ``Finished`` (status ``cancelled``,
        the partial text saved). Safe from any thread, at any time."""
        self.turn.cancel()

    def close(self) -> None:
        """Stop reading: the rest of the turn runs on a background thread and is saved."""
        with self._lock:
            events, self._events = self._events, None
        if events is not None:
            _drain_in_background(events)

    def __enter__(self) -> TurnStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped before its end (the reader raised or forgot it): finish the turn
        # elsewhere, never in the thread that dropped it (it may be an event loop).
        if getattr(self, "_events", None) is not None:
            self.close()


#: Turns being generated in this process (for server shutdown).
_active_turns: weakref.WeakSet[ChatTurn] = weakref.WeakSet()
_active_lock = threading.Lock()


def register(turn: ChatTurn) -> None:
    """Count ``turn`` as being generated here; a reply it generates (not a replay) gets
    its stream for resends in other processes (:mod:`mpai.chat.reply_stream`)."""
    if not turn.replayed and turn.reply.publisher is None:
        turn.reply.publisher = open_publisher(turn.assistant_message.pk)
    with _active_lock:
        _active_turns.add(turn)


def unregister(turn: ChatTurn) -> None:
    """The turn has ended, its reply saved: end the reply's stream with its status."""
    with _active_lock:
        _active_turns.discard(turn)
    publisher, turn.reply.publisher = turn.reply.publisher, None
    if publisher is not None:
        publisher.close(turn.assistant_message.status)


def cancel_all_turns() -> int:
    """Cancel every reply being generated in this process (server shutdown).

    Each is saved with its partial text and status ``cancelled`` by the thread that
    runs it. Returns the number of turns cancelled.
    """
    with _active_lock:
        turns = list(_active_turns)
    for turn in turns:
        turn.cancel()
    return len(turns)


def active_turns() -> int:
    """Return the number of replies being generated in this process."""
    with _active_lock:
        return len(_active_turns)
