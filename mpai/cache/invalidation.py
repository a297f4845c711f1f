"""Cross-process L1 coherence: invalidation messages over Redis pub/sub.

Every write or delete that goes through a :class:`~mpai.cache.LayeredCache` publishes
the keys it changed on ``INVALIDATION_CHANNEL`` (one PUBLISH after the shared layers
were written). Each process runs one listener thread per layer stack; it drops the
named keys from its L1 as soon as the message arrives. The recipe follows cashews'
client-side cache (``cashews/backends/redis/client_side.py``), with explicit messages
instead of ``CLIENT TRACKING``: a process ignores the echo of its own messages, and
whenever the listener is not known to be connected the L1 is cleared and every L1
entry lives at most ``DEGRADED_L1_TIMEOUT`` seconds.

The bound (documented in README, measured by ``manage.py mpai_benchmark cache``):

- listener connected: another process stops serving the old value once the message
  has been delivered, i.e. within the PUBLISH round trip plus the listener's wake-up
  (sub-millisecond to a few milliseconds on one host);
- listener disconnected: a dropped connection is noticed at once (the read fails);
  a silent one within ``INVALIDATION_TIMEOUT`` seconds (pings every
  ``INVALIDATION_PING`` seconds get no reply). From then on L1 holds nothing older
  than ``DEGRADED_L1_TIMEOUT`` seconds, and it is cleared again on reconnection
  (messages may have been missed). Worst case: ``INVALIDATION_TIMEOUT`` +
  ``DEGRADED_L1_TIMEOUT`` seconds.

Message format (JSON text): ``{"o": "<origin id>", "k": ["<full key>", ...]}`` or
``{"o": "<origin id>", "c": 1}`` for a ``clear()``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from mpai.cache.layers import SharedLayer
from mpai.cache.memory import MemoryStore

logger = logging.getLogger("mpai.cache")

_PING_PAYLOAD = "mpai"


class InvalidationBus:
    """Publish and receive L1 invalidations for one layer stack.

    Args:
        layer: the Redis layer whose connection settings are used (django-redis).
        channel: the pub/sub channel name.
        store: the L1 to invalidate.
        ping_interval: seconds between pings on the listener connection.
        dead_after: seconds without any reply after which the listener is
            considered down.
        on_invalidated: called with the invalidated keys (None for a clear) after
            they were dropped from L1; used to wake ``get_or_set`` waiters.
    """

    def __init__(
        self,
        layer: SharedLayer,
        channel: str,
        store: MemoryStore,
        ping_interval: float = 1.0,
        dead_after: float = 3.0,
        on_invalidated: Callable[[list[str] | None], None] | None = None,
    ) -> None:
        self.layer = layer
        self.channel = channel
        self.store = store
        self.ping_interval = ping_interval
        self.dead_after = dead_after
        self.on_invalidated = on_invalidated
        self.origin = uuid.uuid4().hex
        self._echo = f'{{"o":"{self.origin}"'.encode()
        self.healthy = False
        self.received = 0
        self.published = 0
        self.connections = 0
        self._ever_connected = False
        self._down_logged = False
        self._healthy_event = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the listener thread (a daemon; no-op if already running)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"mpai-cache-invalidation-{self.channel}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the listener thread and wait up to ``timeout`` seconds for it."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        self._set_down(None)

    def wait_healthy(self, timeout: float) -> bool:
        """Block until the listener is subscribed; return whether it is (s)."""
        return self._healthy_event.wait(timeout)

    @property
    def state(self) -> str:
        """``"connected"`` or ``"down"``."""
        return "connected" if self.healthy else "down"

    # -- publishing ----------------------------------------------------------------

    def message(self, keys: list[str]) -> tuple[str, str]:
        """Return ``(channel, text)`` telling the other processes to drop ``keys``."""
        return self.channel, json.dumps({"o": self.origin, "k": keys}, separators=(",", ":"))

    def publish(self, keys: list[str]) -> None:
        """Tell the other processes to drop ``keys`` from their L1 (never raises)."""
        if keys and self.layer.publish(self.message(keys), keys):
            self.published += 1

    def publish_clear(self) -> None:
        """Tell the other processes to clear their L1 (never raises)."""
        text = json.dumps({"o": self.origin, "c": 1}, separators=(",", ":"))
        if self.layer.publish((self.channel, text), ()):
            self.published += 1

    # -- the listener --------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            pubsub: Any = None
            try:
                pubsub = self.layer.redis_client().pubsub()
                pubsub.subscribe(self.channel)
                self._listen(pubsub)
            except Exception as exc:
                self._set_down(exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            else:
                backoff = 0.05
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # the connection may be gone
                        pubsub.close()

    def _listen(self, pubsub: Any) -> None:
        last_seen = last_ping = time.monotonic()
        wait = min(0.2, self.ping_interval / 2)
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=wait)
            now = time.monotonic()
            if message is not None:
                last_seen = now
                self._dispatch(message)
            elif now - last_seen > self.dead_after:
                raise TimeoutError(f"no reply from Redis for {now - last_seen:.1f} s")
            if now - last_ping >= self.ping_interval:
                pubsub.ping(_PING_PAYLOAD)
                last_ping = now
            if self.layer.breaker.state != "closed":
                # Redis answers this connection: let the layer come back without
                # waiting for a request to reach it (L1 may serve every read).
                self.layer.recover_if_due()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # A (re)subscription: redis-py may reconnect and resubscribe by itself,
            # so messages may have been missed. Start from an empty L1.
            self._set_up()
        elif kind == "message":
            self._handle(message.get("data"))

    def _handle(self, data: Any) -> None:
        if isinstance(data, bytes) and data.startswith(self._echo):
            return  # the echo of this process's own write (checked before any parsing)
        try:
            payload = json.loads(data)
            origin = payload["o"]
        except (TypeError, ValueError, KeyError):
            logger.debug("mpai cache: ignoring a malformed invalidation message %r", data)
            return
        if origin == self.origin:
            return  # the echo of this process's own write: its L1 is already right
        self.received += 1
        if payload.get("c"):
            self.store.clear()
            keys = None
        else:
            keys = [key for key in payload.get("k", ()) if isinstance(key, str)]
            self.store.invalidate(keys)
        if self.on_invalidated is not None:
            self.on_invalidated(keys)

    def _set_up(self) -> None:
        self.store.clear()
        self.healthy = True
        self.connections += 1
        self._healthy_event.set()
        if self._down_logged:
            logger.warning("mpai cache: invalidation listener on %r connected again", self.channel)
        self._down_logged = False
        self._ever_connected = True

    def _set_down(self, exc: BaseException | None) -> None:
        was_healthy = self.healthy
        self.healthy = False
        self._healthy_event.clear()
        if was_healthy:
            # Messages may be lost from now on: forget what L1 holds (new entries are
            # capped at DEGRADED_L1_TIMEOUT by the stack while the listener is down).
            self.store.clear()
        if exc is not None and (was_healthy or not self._down_logged):
            logger.warning(
                "mpai cache: invalidation listener on %r is down (%s: %s); L1 entries now live "
                "at most the degraded lifetime until it reconnects",
                self.channel,
                type(exc).__name__,
                exc,
            )
            self._down_logged = True
