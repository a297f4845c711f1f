"""Send a turn's first provider request while the turn is being saved.

The provider's time to first token (tens to hundreds of ms) is the longest wait of a
turn, and the database work of starting one (the session check, saving the user's
message and the empty reply: a few ms) need not come before the request leaves. So
the pipeline decides everything the request depends on first (validation, rate
limit, quota, context, the response-cache lookup), then :func:`open_early` sends
the request from a small pool of threads while the turn is checked and saved, and
the turn takes the stream once it is started (:meth:`Opening.take`). A turn refused
meanwhile (signed out, unknown conversation, a resend that raced) drops it
(:meth:`Opening.discard`): the stream is closed as soon as it is open, so the
provider stops generating.

The pool has ``MPAI["STREAM_WORKERS"]`` threads (one per stream slot, so an opening
never waits behind another); a thread is held only until the response headers
arrive (retries included).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from mpai.conf import mpai_settings
from mpai.providers import ChatProvider, ChatRequest, ChatStream

logger = logging.getLogger(__name__)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(int(mpai_settings.STREAM_WORKERS), 1),
                thread_name_prefix="mpai-open",
            )
        return _pool


@receiver(setting_changed)
def _forget_pool(*, setting: str, **kwargs: Any) -> None:
    """A new pool for a new ``STREAM_WORKERS``; the old one finishes its openings."""
    global _pool
    if setting == "MPAI":
        with _pool_lock:
            old, _pool = _pool, None
        if old is not None:
            old.shutdown(wait=False)


def _close_quietly(future: Future[ChatStream]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    try:
        future.result().close()
    except Exception:
        logger.warning("mpai could not close a provider stream it no longer needs", exc_info=True)


class Opening:
    """A provider request on its way (:func:`open_early`)."""

    __slots__ = ("_future", "_lock", "_settled")

    def __init__(self, future: Future[ChatStream]) -> None:
        self._future = future
        self._lock = threading.Lock()
        self._settled = False

    def take(self) -> ChatStream:
        """Wait for the response headers; return the stream (the caller closes it).

        Raises:
            MpaiError: the provider's error (``provider_timeout``, ``provider_error``,
                …), as :meth:`ChatProvider.open_stream` raises it.
            RuntimeError: the opening was discarded.
        """
        with self._lock:
            if self._settled:
                raise RuntimeError("This provider stream was discarded or taken already.")
            self._settled = True
        return self._future.result()

    def discard(self) -> None:
        """Drop the request: its stream is closed once open. Does nothing after
        :meth:`take` (the taker closes it) or a first discard."""
        with self._lock:
            if self._settled:
                return
            self._settled = True
        if not self._future.cancel():  # already running or done: close it when open
            self._future.add_done_callback(_close_quietly)


def open_early(provider: ChatProvider, request: ChatRequest) -> Opening:
    """Send ``request`` to ``provider`` from the opening pool; return at once."""
    return Opening(_executor().submit(provider.open_stream, request))
