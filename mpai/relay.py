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
from collections.abc import AsyncIterator, Callable
from typing import Any

from mpai.chat.turns import Event, Finished, TurnStream

logger = logging.getLogger(__name__)


class FrameRelay:
    """A one-turn pipe of JSON text frames from one thread to one event loop.

    Args:
        loop: the event loop that sends the frames.
        max_bytes: most bytes (UTF-8 of the encoded frames) held at once; one frame is
            always let through, however large.
        stall_seconds: how long a full buffer may see no progress before the client is
            given up.
        on_stall: called on the loop when the client is given up.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        max_bytes: int,
        stall_seconds: float,
        on_stall: Callable[[], None] | None = None,
    ) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[tuple[str, int, bool] | None] = asyncio.Queue()
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

    # -- worker thread side -------------------------------------------------------------

    def put(self, frame: dict[str, Any], *, final: bool = False) -> bool:
        """Encode ``frame`` and queue it for the socket; wait while the buffer is full.

        Returns:
            False when the frame was dropped: the client is gone or was given up.
        """
        text = json.dumps(frame)
        size = len(text.encode("utf-8")) if not text.isascii() else len(text)
        with self._cond:
            deadline = time.monotonic() + self.stall_seconds
            while not self._closed and self._buffered and self._buffered + size > self.max_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._give_up()
                    break
                if self._cond.wait(remaining):  # progress: the client took a frame
                    deadline = time.monotonic() + self.stall_seconds
            if self._closed:
                return False
            self._buffered += size
            self.peak_bytes = max(self.peak_bytes, self._buffered)
        return self._call_soon(self._queue.put_nowait, (text, size, final))

    def put_final(self, frame: dict[str, Any]) -> None:
        """Queue the frame that ends the turn."""
        self.put(frame, final=True)

    def finish(self) -> None:
        """Say that no frame follows (always call it, last)."""
        self._call_soon(self._queue.put_nowait, None)

    def _give_up(self) -> None:
        # Called with the condition held.
        self._closed = True
        self.stalled = True
        if self._on_stall is not None:
            self._call_soon(self._on_stall)

    def _call_soon(self, callback: Callable[..., Any], *args: Any) -> bool:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the event loop has closed (server shutdown)
            self.close()
            return False
        return True

    # -- event loop side ----------------------------------------------------------------

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
        while (item := await self._queue.get()) is not None:
            text, size, final = item
            if self._closed:
                continue
            yield text, final
            with self._cond:
                self._buffered -= size
                self._cond.notify_all()


def relay_events(
    events: TurnStream,
    relay: FrameRelay,
    to_frame: Callable[[Event], dict[str, Any]],
    *,
    error_frame: dict[str, Any],
) -> None:
    """Put the frame of each event of ``events`` into ``relay`` (in a worker thread).

    A client that is gone only stops the frames: the turn is read to its end, so the
    reply is finished and saved. If reading the turn fails, ``error_frame`` ends the
    relay instead of the turn's own final frame. Always ends with ``relay.finish()``.
    """
    finished = False
    try:
        with events:
            for event in events:
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
