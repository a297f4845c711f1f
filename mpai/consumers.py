"""The chat websocket ``ws/mpai/chat/`` (frames in README, "Websocket").

The consumer only translates frames to pipeline calls and back. A new turn first takes a
stream slot (:mod:`mpai.chat.capacity`: ``overloaded`` when none comes free in time),
then is validated, saved and streamed on one of the stream threads
(``MPAI["STREAM_WORKERS"]``, one per slot, so a new turn never waits behind other users'
streams), and ``receive`` stays free for ``chat.cancel`` (Channels handles one message at
a time per consumer). Frames go to the socket directly with
``send``, never through the channel layer (channel layers drop messages over capacity),
through a :class:`mpai.relay.FrameRelay` that bounds the bytes held for a slow client. A
disconnect is not a cancel: the worker thread goes on and saves the whole reply.

Close codes: 4401 after ``chat.error`` ``not_authenticated`` (the session was signed
out, the user deactivated, or the password changed); 1013 (try again later) for a
client that read nothing for ``MPAI["WEBSOCKET_SLOW_CLIENT_SECONDS"]`` while its
buffer was full.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.core.signals import setting_changed
from django.db import close_old_connections
from django.dispatch import receiver

from mpai.chat.capacity import Slot, stream_slots
from mpai.chat.pipeline import ChatPipeline
from mpai.chat.turns import TurnStream
from mpai.conf import mpai_settings
from mpai.exceptions import Busy, MpaiError, NotAuthenticated, RateLimited
from mpai.frames import error_frame, frame_for
from mpai.metrics import prometheus as metrics
from mpai.relay import FrameRelay, relay_events
from mpai.sessions import current_user

logger = logging.getLogger(__name__)

#: Close codes (RFC 6455 section 7.4; 4401 mirrors HTTP 401 as graphql-ws does).
CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_SLOW_CLIENT = 1013

_executors: dict[str, ThreadPoolExecutor] = {}
_executor_lock = threading.Lock()


def _executor(name: str, workers: int) -> ThreadPoolExecutor:
    with _executor_lock:
        if name not in _executors:
            _executors[name] = ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix=f"mpai-{name}"
            )
        return _executors[name]


@receiver(setting_changed)
def _forget_executors(*, setting: str, **kwargs: Any) -> None:
    """New pools for new ``MPAI`` sizes; threads of the old ones finish their turns."""
    if setting == "MPAI":
        with _executor_lock:
            old = list(_executors.values())
            _executors.clear()
        for executor in old:
            executor.shutdown(wait=False)


def stream_executor() -> ThreadPoolExecutor:
    """Return the process's pool of threads that run provider streams."""
    return _executor("stream", mpai_settings.STREAM_WORKERS)


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """Chat over a websocket for signed-in users."""

    pipeline_class = ChatPipeline
    # No channel layer: the consumer sends to its own socket only, and a layer would give
    # every connection a Redis BZPOPMIN of its own (channels_redis #422 at idle) whose
    # cancelled receive was seen to stall uvicorn's graceful shutdown.
    channel_layer_alias = None

    # Set in connect(); a refused handshake still gets disconnect() (Channels).
    turn: TurnStream | None = None
    task: asyncio.Task[None] | None = None
    relay: FrameRelay | None = None
    busy = False
    accepted = False
    cancel_requested = False
    closing: asyncio.Future[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept(): the handshake is refused (HTTP 403)
            return
        self.pipeline = self.pipeline_class()
        await self.accept()
        self.accepted = True
        metrics.websocket_opened()

    async def disconnect(self, code: int) -> None:
        # Not a cancel: the worker thread finishes and saves the reply; only the frames
        # stop. A resend waiting for another reply stops waiting.
        if self.accepted:
            self.accepted = False
            metrics.websocket_closed()
        if self.relay is not None:
            self.relay.close()
        turn = self.turn
        if turn is not None and turn.replayed:
            turn.cancel()

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        # Size, then depth, then JSON (mpai.jsonlimits); a bad frame never closes the socket.
        from mpai.exceptions import InvalidJson
        from mpai.jsonlimits import loads_bounded

        try:
            if text_data is None:
                raise InvalidJson("Frames must be JSON text frames, not binary.")
            content = loads_bounded(
                text_data,
                max_bytes=mpai_settings.MAX_FRAME_BYTES,
                max_depth=mpai_settings.MAX_JSON_DEPTH,
            )
            if not isinstance(content, dict):
                raise InvalidJson("Frames must be JSON objects.")
        except InvalidJson as exc:
            await self.send_json(error_frame(exc))
            return
        await self.receive_json(content)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        kind = content.get("type")
        if kind == "chat.message":
            if self.busy:
                await self.send_json(error_frame(Busy()))
                return
            self.busy = True
            self.cancel_requested = False
            self.task = asyncio.create_task(self.chat(content))
        elif kind == "chat.cancel":
            if not self.busy:
                return  # nothing to stop
            self.cancel_requested = True
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
        """Run one turn: ``chat.started``, ``chat.delta`` and ``chat.tool`` frames, then
        the final frame."""
        loop = asyncio.get_running_loop()
        slot: Slot | None = None
        try:
            try:
                # A stream slot first (mpai.chat.capacity): past the ceiling the turn
                # waits a bounded time, then gets "overloaded" with nothing saved.
                slot = await stream_slots().acquire_async()
                metrics.turn_started()
            except MpaiError as exc:
                await self.send_final(json.dumps(error_frame(exc)))
                return
            relay = self.relay = FrameRelay(
                loop,
                max_bytes=mpai_settings.WEBSOCKET_SEND_BUFFER_BYTES,
                stall_seconds=mpai_settings.WEBSOCKET_SLOW_CLIENT_SECONDS,
                on_stall=self.drop_slow_client,
            )
            # One hop: the stream thread starts the turn and relays it (a slot means a
            # free thread, so a new turn never waits behind other users' streams).
            loop.run_in_executor(stream_executor(), self.run_turn, content, relay, slot)
            slot = None  # run_turn releases it when the turn is saved
            async for text, final in relay.frames():
                if self.turn is None and relay.turn is not None:  # chat.started
                    self.turn = relay.turn
                    if self.cancel_requested:  # chat.cancel came while it was starting
                        await loop.run_in_executor(None, self.turn.cancel)
                if final:
                    await self.send_final(text)
                    if isinstance(relay.refused, NotAuthenticated):
                        await self.close(code=CLOSE_NOT_AUTHENTICATED)
                else:
                    await self.send(text_data=text)
        except asyncio.CancelledError:
            pass  # a slow client was given up; the worker thread saves the reply
        except Exception:
            # The client went away: the worker thread saves the reply without us.
            if self.relay is not None:
                self.relay.close()
        finally:
            if slot is not None:  # the turn never reached its stream thread
                slot.release()
                metrics.turn_ended()
            self.busy = False
            self.turn = None
            self.relay = None

    def start_turn(self, content: dict[str, Any]) -> TurnStream:
        """Validate and save a new turn (in its stream thread); the session is checked
        again before anything is saved or sent to the provider.

        Raises:
            NotAuthenticated: the session was signed out or invalidated.
            MpaiError: the pipeline refused the message.
        """
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            raise NotAuthenticated()
        return self.pipeline.stream(
            user=user,
            content=content.get("content"),
            conversation_id=content.get("conversation"),
            client_id=content.get("client_id"),
            page=content.get("page"),
            use_cache=content.get("cache", True),
            authorize=lambda: current_user(self.scope),
            resume_from=content.get("resume_from"),
        )

    def run_turn(self, content: dict[str, Any], relay: FrameRelay, slot: Slot) -> None:
        """Start one turn and relay it (in a stream thread); always ends the relay, and
        frees the turn's stream slot once the reply is saved."""
        close_old_connections()
        try:
            try:
                events = self.start_turn(content)
            except MpaiError as exc:
                if isinstance(exc, RateLimited):
                    metrics.rate_limited()
                relay.put_refusal(error_frame(exc), exc)
                relay.finish()
                return
            except Exception as exc:
                logger.exception("mpai could not start a chat turn")
                relay.put_refusal(error_frame(MpaiError()), exc)
                relay.finish()
                return
            relay_events(events, relay, frame_for, error_frame=error_frame(MpaiError()))
        finally:
            slot.release()
            metrics.turn_ended()
            close_old_connections()

    def drop_slow_client(self) -> None:
        """Give up a client that stopped reading (on the event loop): see the module."""
        logger.warning("mpai closed a websocket that stopped reading its reply")
        if self.task is not None:
            self.task.cancel()
        # Its own task: the close frame waits behind the unread ones.
        self.closing = asyncio.ensure_future(self.close(code=CLOSE_SLOW_CLIENT))

    async def send_final(self, text: str) -> None:
        """Send the frame that ends a turn; the connection is free before it leaves."""
        self.busy = False
        self.turn = None
        await self.send(text_data=text)
