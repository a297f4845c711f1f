"""The chat websocket ``ws/mpai/chat/`` (frames pinned in CONTRACTS.md).

The consumer only translates frames to pipeline calls and back. Generation runs as
its own task with the blocking pipeline in a worker thread, so ``receive`` stays free
for ``chat.cancel`` (Channels handles one message at a time per consumer). Deltas are
sent with ``send_json`` directly, never through the channel layer (ARCHITECTURE.md,
pitfalls), and at most ``MPAI["WEBSOCKET_SEND_QUEUE"]`` frames wait for a slow client.
A disconnect is not a cancel: the worker thread goes on and saves the whole reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db import close_old_connections

from mpai.chat.pipeline import ChatPipeline, ChatTurn, TurnResult
from mpai.conf import mpai_settings
from mpai.exceptions import Busy, MpaiError

logger = logging.getLogger(__name__)

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def stream_executor() -> ThreadPoolExecutor:
    """Return the process's pool of threads that run provider streams."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=mpai_settings.STREAM_WORKERS, thread_name_prefix="mpai-stream"
            )
        return _executor


def error_frame(error: MpaiError, *, message_id: int | None = None) -> dict[str, Any]:
    """Return a ``chat.error`` frame for ``error``."""
    frame: dict[str, Any] = {"type": "chat.error", "code": error.code, "detail": error.detail}
    if error.retry_after is not None:
        frame["retry_after"] = error.retry_after
    if message_id is not None:
        frame["message"] = message_id
    return frame


def started_frame(turn: ChatTurn, client_id: object) -> dict[str, Any]:
    return {
        "type": "chat.started",
        "conversation": turn.conversation.pk,
        "message": turn.assistant_message.pk,
        "user_message": turn.user_message.pk,
        "client_id": client_id,
    }


def final_frame(result: TurnResult) -> dict[str, Any]:
    """Return the ``chat.completed`` or ``chat.error`` frame that ends a turn."""
    if result.error is not None:
        return error_frame(result.error, message_id=result.partial_message_id)
    return {"type": "chat.completed", **result.summary()}


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """Chat over a websocket for signed-in users."""

    pipeline_class = ChatPipeline
    # No channel layer: the consumer sends to its own socket only, and a layer would give
    # every connection a Redis BZPOPMIN of its own (channels_redis #422 at idle) whose
    # cancelled receive was seen to stall uvicorn's graceful shutdown.
    channel_layer_alias = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept(): the handshake is refused (HTTP 403)
            return
        self.pipeline = self.pipeline_class()
        self.turn: ChatTurn | None = None
        self.task: asyncio.Task[None] | None = None
        # True from a chat.message until its final frame is handed to send_json, so a
        # client that sends again right after chat.completed is never told busy.
        self.busy = False
        self.cancel_requested = threading.Event()
        self.gone = threading.Event()
        await self.accept()

    async def disconnect(self, code: int) -> None:
        # Not a cancel: the worker thread finishes and saves the reply.
        self.gone.set()

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        try:
            content = json.loads(text_data) if text_data is not None else None
        except ValueError:
            content = None
        if not isinstance(content, dict):
            await self.send_error(MpaiError("Frames must be JSON objects."), code="invalid_json")
            return
        await self.receive_json(content)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        kind = content.get("type")
        if kind == "chat.message":
            if self.busy:
                await self.send_json(error_frame(Busy()))
                return
            self.busy = True
            self.task = asyncio.create_task(self.chat(content))
        elif kind == "chat.cancel":
            if not self.busy:
                return  # nothing to stop
            self.cancel_requested.set()
            turn = self.turn
            if turn is not None:
                await asyncio.get_running_loop().run_in_executor(None, turn.cancel)
        else:
            await self.send_error(MpaiError(f"Unknown frame type {kind!r}."), code="unknown_type")

    async def send_error(self, error: MpaiError, *, code: str) -> None:
        frame = error_frame(error)
        frame["code"] = code
        await self.send_json(frame)

    async def chat(self, content: dict[str, Any]) -> None:
        """Run one turn: ``chat.started``, ``chat.delta``…, then the final frame.

        The whole turn, ``start()`` included, runs in a stream-executor thread: Channels'
        ``database_sync_to_async`` would queue every connection's ORM work on one shared
        thread. Frames come back through a queue, in order.
        """
        loop = asyncio.get_running_loop()
        frames: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        credits = threading.BoundedSemaphore(mpai_settings.WEBSOCKET_SEND_QUEUE)
        gone = self.gone
        self.cancel_requested = threading.Event()

        def push(frame: dict[str, Any] | None) -> None:
            try:
                loop.call_soon_threadsafe(frames.put_nowait, frame)
            except RuntimeError:  # the event loop has closed (server shutdown)
                gone.set()

        def on_delta(text: str) -> None:
            # Runs in the worker thread: wait for room while the client is slow.
            while not credits.acquire(timeout=0.5):
                if gone.is_set():
                    return
            if not gone.is_set():
                push({"type": "chat.delta", "text": text})

        def on_complete(result: TurnResult) -> None:
            if not gone.is_set():
                push(final_frame(result))

        loop.run_in_executor(stream_executor(), self.run_turn, content, push, on_delta, on_complete)
        try:
            while (frame := await frames.get()) is not None:
                if frame["type"] in ("chat.completed", "chat.error"):
                    await self.send_final(frame)
                else:
                    if frame["type"] == "chat.delta":
                        credits.release()
                    await self.send_json(frame)
        except Exception:
            # The client went away: the worker thread saves the reply without us.
            self.gone.set()
            while await frames.get() is not None:
                pass
        finally:
            self.busy = False
            self.turn = None

    def run_turn(self, content: dict[str, Any], push: Any, on_delta: Any, on_complete: Any) -> None:
        """Start and run one turn (in a worker thread); always ends with ``push(None)``."""
        close_old_connections()
        try:
            client_id = content.get("client_id")
            try:
                turn = self.pipeline.start(
                    user=self.scope["user"],
                    content=content.get("content"),
                    conversation_id=content.get("conversation"),
                    client_id=client_id,
                    page=content.get("page"),
                    use_cache=content.get("cache", True),
                )
            except MpaiError as exc:
                push(error_frame(exc))
                return
            # Publish the turn, then look for a cancel that came first (the event loop
            # sets the flag, then reads self.turn: one of the two sides sees the other).
            self.turn = turn
            push(started_frame(turn, client_id))
            if self.cancel_requested.is_set():
                turn.cancel()
            self.pipeline.run(turn, on_delta=on_delta, on_complete=on_complete)
        except Exception:
            logger.exception("mpai chat turn failed")
            push(error_frame(MpaiError()))
        finally:
            close_old_connections()
            push(None)

    async def send_final(self, frame: dict[str, Any]) -> None:
        """Send the frame that ends a turn; the connection is free before it leaves."""
        self.busy = False
        self.turn = None
        await self.send_json(frame)
