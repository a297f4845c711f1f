"""Server-Sent Events for ``POST /api/mpai/v1/chat/`` with ``Accept: text/event-stream``.

Each event is one websocket frame (README, "Websocket"): ``event:`` is the frame's
``type`` and ``data:`` the frame as JSON on one line (the WHATWG HTML "Server-sent
events" format, https://html.spec.whatwg.org/multipage/server-sent-events.html)::

    event: chat.started
    data: {"type": "chat.started", "conversation": 7, "message": 42, ...}

    event: chat.tool
    data: {"type": "chat.tool", "name": "get_my_memberships", "call_id": "call_1", ...}

    event: chat.delta
    data: {"type": "chat.delta", "text": "Your plan "}

    event: chat.completed
    data: {"type": "chat.completed", "message": 42, "status": "complete", ...}

The turn runs on a stream thread (:func:`mpai.consumers.stream_executor`), as on the
websocket, and its frames reach the response through a relay: under ASGI a
:class:`mpai.relay.FrameRelay` (deltas the client has not taken yet merge into one
event), under WSGI a bounded queue. A client that disconnects stops only the events:
the reply is finished and saved, and a resend with its ``client_id`` replays it. A
client that takes nothing for ``MPAI["WEBSOCKET_SLOW_CLIENT_SECONDS"]`` while
``WEBSOCKET_SEND_BUFFER_BYTES`` are held is given up the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from django.db import close_old_connections
from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer

from mpai.chat.capacity import Slot
from mpai.chat.turns import TurnStream
from mpai.conf import mpai_settings
from mpai.exceptions import MpaiError
from mpai.frames import error_frame, frame_for
from mpai.metrics import prometheus as metrics
from mpai.relay import FrameRelay, relay_events

logger = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"

#: Codes of refusals rendered by DRF itself (before the pipeline), by HTTP status.
_STATUS_CODES = {400: "invalid_message", 401: "not_authenticated", 403: "not_authenticated"}


def encode_event(frame_text: str, kind: str | None = None) -> bytes:
    """One SSE event for a frame already encoded as JSON (one line: ``json.dumps``
    escapes newlines, so ``data:`` needs no splitting)."""
    if kind is None:
        kind = str(json.loads(frame_text).get("type", "message"))
    return f"event: {kind}\ndata: {frame_text}\n\n".encode()


def encode_frame(frame: dict[str, Any]) -> bytes:
    return encode_event(json.dumps(frame), str(frame.get("type", "message")))


class EventStreamRenderer(BaseRenderer):
    """Lets DRF's content negotiation accept ``text/event-stream``; what it renders
    itself (a refusal before any event: a bad body, not signed in) is one
    ``chat.error`` event with the response's status."""

    media_type = MEDIA_TYPE
    format = "event-stream"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        response = (renderer_context or {}).get("response")
        status = getattr(response, "status_code", 400)
        if isinstance(data, dict) and data.get("type") == "chat.error":
            frame = data
        else:
            code = data.get("code") if isinstance(data, dict) else None
            frame = {
                "type": "chat.error",
                "code": code or _STATUS_CODES.get(status, "internal_error"),
                "detail": data,
            }
        return encode_frame(frame)


def wants_event_stream(accept: str) -> bool:
    """True when the ``Accept`` header names ``text/event-stream``."""
    return any(part.split(";")[0].strip() == MEDIA_TYPE for part in accept.split(","))


def event_stream_response(events: TurnStream, slot: Slot, *, asgi: bool) -> StreamingHttpResponse:
    """The streaming response of a started turn; releases ``slot`` when the turn is saved.

    The turn starts relaying on a stream thread now, not when the server first reads
    the body, so a response the server never reads (the client left first) still
    ends saved and frees its slot. ``asgi``: the request came through Django's ASGI
    handler (an async iterator is served as it is produced; under WSGI a sync one is).
    """
    from mpai.consumers import stream_executor

    stall = mpai_settings.WEBSOCKET_SLOW_CLIENT_SECONDS
    relay: FrameRelay | _QueueRelay
    if asgi:
        relay = FrameRelay(
            None, max_bytes=mpai_settings.WEBSOCKET_SEND_BUFFER_BYTES, stall_seconds=stall
        )
        content: Iterator[bytes] | AsyncIterator[bytes] = _async_events(relay)
    else:
        relay = _QueueRelay(max_items=1024, stall_seconds=stall)
        content = _sync_events(relay)
    stream_executor().submit(_run, events, relay, slot)
    response = StreamingHttpResponse(content, content_type=MEDIA_TYPE)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response


def _run(events: TurnStream, relay: Any, slot: Slot) -> None:
    """Relay one turn from a stream thread; free its slot once it is saved."""
    try:
        relay_events(events, relay, frame_for, error_frame=error_frame(MpaiError()))
    finally:
        slot.release()
        metrics.turn_ended()
        close_old_connections()


async def _async_events(relay: FrameRelay) -> AsyncIterator[bytes]:
    relay.attach(asyncio.get_running_loop())
    try:
        async for text, _final in relay.frames():
            yield encode_event(text)
    finally:
        relay.close()  # the client went away: the thread goes on and saves the reply


class _QueueRelay:
    """The worker side of :class:`FrameRelay` over a bounded queue, for WSGI."""

    def __init__(self, *, max_items: int, stall_seconds: float) -> None:
        self.items: queue.Queue[bytes | None] = queue.Queue(max_items)
        self.stall_seconds = stall_seconds
        self.closed = False

    def _put(self, item: bytes | None) -> bool:
        if self.closed and item is not None:
            return False
        try:
            self.items.put(item, timeout=self.stall_seconds)
        except queue.Full:
            self.closed = True  # a client that stopped reading is given up
            return False
        return True

    def put(self, frame: dict[str, Any], *, final: bool = False) -> bool:
        return self._put(encode_frame(frame))

    put_final = put

    def put_started(self, frame: dict[str, Any], turn: TurnStream) -> bool:
        return self._put(encode_frame(frame))

    def put_delta(self, text: str) -> bool:
        return self._put(encode_frame({"type": "chat.delta", "text": text}))

    def finish(self) -> None:
        try:
            self.items.put_nowait(None)
        except queue.Full:
            self.closed = True


def _sync_events(relay: _QueueRelay) -> Iterator[bytes]:
    try:
        while (item := relay.items.get()) is not None:
            yield item
    finally:
        relay.closed = True  # the client went away: the thread goes on and saves the reply
        while True:  # unblock a worker waiting on a full queue
            try:
                relay.items.get_nowait()
            except queue.Empty:
                break
