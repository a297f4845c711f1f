"""Frames from a worker thread to a websocket, bounded in bytes per connection.

A chat turn runs in a worker thread (blocking ORM and HTTP); its frames go to the
event loop that owns the socket. A client that reads slower than the reply streams
would make the server buffer the whole reply for it (Daphne has no websocket
back-pressure at all: daphne #170), so the relay accounts every frame it holds, JSON
already encoded, and makes the worker wait while ``max_bytes`` are buffered. The
server's transport holds at most its own high-water mark on top (uvicorn pauses
writes at asyncio's default, 64 KiB).

A client that takes nothing for ``stall_seconds`` while the buffer is full is given
up: the relay closes, ``on_stall`` runs on the event loop (the consumer closes the
socket), and the worker goes on without waiting, so the reply still finishes and is
saved. See README, "Websocket back-pressure".
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from mpai.chat.turns import Delta, Event, Finished, ReplyBuffer, Started, TurnStream

logger = logging.getLogger(__name__)


class _Deltas:
    """Delta texts the event loop has not taken yet: they leave as one frame (held in
    compact blocks, so the buffer's bytes are about its text's, not 50 per delta)."""

    __slots__ = ("size", "text")

    def __init__(self) -> None:
        self.text = ReplyBuffer()
        self.size = 0


#: A queued frame: (JSON text, bytes, final), merged deltas, or None (no frame follows).
_Item = tuple[str, int, bool] | _Deltas | None


class FrameRelay:
    """A one-turn pipe of JSON text frames from one thread to one event loop.

    Deltas the loop has not taken yet are merged into one ``chat.delta`` frame (their
    concatenation is exactly the reply), so a busy loop sends fewer, larger frames
    instead of falling behind, and the worker wakes the loop once per batch, not once
    per delta.

    Args:
        loop: the event loop that sends the frames, or None to :meth:`attach` it later.
        max_bytes: most bytes (UTF-8 of the delta texts and encoded frames) held at
            once; one frame is always let through, however large.
        stall_seconds: how long a full buffer may see no progress before the client is
            given up.
        on_stall: called on the loop when the client is given up.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        *,
        max_bytes: int,
        stall_seconds: float,
        on_stall: Callable[[], None] | None = None,
    ) -> None:
        self._loop = loop
        self._items: deque[_Item] = deque()
        self._ready = asyncio.Event()
        self._scheduled = False
        self._cond = threading.Condition()
        self._buffered = 0
        self._closed = False
        self.max_bytes = max(int(max_bytes), 1)
        self.stall_seconds = float(stall_seconds)
        self._on_stall = on_stall
        #: True once the client was given up for not reading.
        self.stalled = False
        #: Most bytes held at once (for tests and benchmarks).
        self.peak_bytes = 0
        #: The turn, handed over with its first frame (:meth:`put_started`).
        self.turn: TurnStream | None = None
        #: Why the turn was refused before it started (with the final frame), or None.
        self.refused: Exception | None = None

    # -- worker thread side -------------------------------------------------------------

    def put(self, frame: dict[str, Any], *, final: bool = False) -> bool:
        """Encode ``frame`` and queue it for the socket; wait while the buffer is full.

        Returns:
            False when the frame was dropped: the client is gone or was given up.
        """
        text = json.dumps(frame)
        size = _size(text)
        with self._cond:
            if not self._room(size):
                return False
            self._items.append((text, size, final))
            return self._queued(size)

    def put_started(self, frame: dict[str, Any], turn: TurnStream) -> bool:
        """Queue the turn's first frame and hand the turn over: the loop reads
        :attr:`turn` once it has this frame (to cancel it)."""
        self.turn = turn
        return self.put(frame)

    def put_refusal(self, frame: dict[str, Any], error: Exception) -> None:
        """End a turn refused before it started: ``frame`` is final, :attr:`refused`
        says why."""
        self.refused = error
        self.put(frame, final=True)

    def put_delta(self, text: str) -> bool:
        """Queue a delta's text, merged with the deltas the loop has not taken yet.

        Returns:
            False when it was dropped: the client is gone or was given up.
        """
        size = _size(text)
        with self._cond:
            if not self._room(size):
                return False
            tail = self._items[-1] if self._items else None
            if not isinstance(tail, _Deltas):
                tail = _Deltas()
                self._items.append(tail)
            tail.text.write(text)
            tail.size += size
            return self._queued(size)

    def put_final(self, frame: dict[str, Any]) -> None:
        """Queue the frame that ends the turn."""
        self.put(frame, final=True)

    def finish(self) -> None:
        """Say that no frame follows (always call it, last)."""
        with self._cond:
            self._items.append(None)
            self._wake_loop()

    def _room(self, size: int) -> bool:
        # With the condition held: wait while full; False once closed or given up.
        deadline = time.monotonic() + self.stall_seconds
        while not self._closed and self._buffered and self._buffered + size > self.max_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._give_up()
                break
            if self._cond.wait(remaining):  # progress: the client took a frame
                deadline = time.monotonic() + self.stall_seconds
        return not self._closed

    def _queued(self, size: int) -> bool:
        # With the condition held, after an item grew by ``size`` bytes.
        self._buffered += size
        self.peak_bytes = max(self.peak_bytes, self._buffered)
        return self._wake_loop()

    def _wake_loop(self) -> bool:
        # With the condition held: one wake-up per batch the loop has not taken.
        if self._scheduled:
            return True
        self._scheduled = True
        return self._call_soon(self._ready.set)

    def _give_up(self) -> None:
        # Called with the condition held.
        self._closed = True
        self.stalled = True
        if self._on_stall is not None:
            self._call_soon(self._on_stall)

    def _call_soon(self, callback: Callable[..., Any], *args: Any) -> bool:
        if self._loop is None:  # not attached yet: attach() wakes the loop
            return True
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the event loop has closed (server shutdown)
            self._closed = True
            self._cond.notify_all()
            return False
        return True

    # -- event loop side ----------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give a relay made without a loop (its worker already running) the loop that
        reads it; call it on that loop, before :meth:`frames`."""
        with self._cond:
            self._loop = loop
        self._ready.set()  # frames() reads whatever was queued before

    def close(self) -> None:
        """Drop every later frame and wake the worker (the client went away)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    async def frames(self) -> AsyncIterator[tuple[str, bool]]:
        """Yield ``(text, final)`` for each frame, in order, until :meth:`finish`.

        A frame's bytes are released when the caller asks for the next one, that is
        after it has sent the frame.
        """
        while True:
            await self._ready.wait()
            self._ready.clear()
            with self._cond:
                batch = list(self._items)
                self._items.clear()
                self._scheduled = False
            for item in batch:
                if item is None:
                    return
                if isinstance(item, _Deltas):
                    text = json.dumps({"type": "chat.delta", "text": item.text.getvalue()})
                    size, final = item.size, False
                else:
                    text, size, final = item
                if not self._closed:
                    yield text, final
                with self._cond:
                    self._buffered -= size
                    self._cond.notify_all()


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def relay_events(
    events: TurnStream,
    relay: FrameRelay,
    to_frame: Callable[[Event], dict[str, Any]],
    *,
    error_frame: dict[str, Any],
) -> None:
    """Put the frame of each event of ``events`` into ``relay`` (in a worker thread);
    deltas go in as text, merged while the loop has not taken them (``chat.delta``).

    A client that is gone only stops the frames: the turn is read to its end, so the
    reply is finished and saved. If reading the turn fails, ``error_frame`` ends the
    relay instead of the turn's own final frame. Always ends with ``relay.finish()``.
    """
    finished = False
    try:
        with events:
            for event in events:
                if isinstance(event, Delta):
                    if not relay.closed:
                        relay.put_delta(event.text)
                    continue
                if isinstance(event, Started):
                    relay.put_started(to_frame(event), events)
                    continue
                final = isinstance(event, Finished)
                if not relay.closed:
                    relay.put(to_frame(event), final=final)
                finished = finished or final
    except Exception:
        logger.exception("mpai chat turn failed")
        if not finished:
            relay.put_final(error_frame)
    finally:
        relay.finish()
