"""Stream slots: how many replies one process streams at once, and who waits.

A reply holds a stream thread (blocking ``requests`` and ORM) from its ``Started`` to
its saved end. Without a ceiling, new turns past the pool size queue inside the
thread pool for seconds and nobody is told (README, "Performance"). So every
interface takes a slot before it starts a turn:

- at most ``MPAI["STREAM_WORKERS"]`` slots are held at once (the stream pool has as
  many threads, so an admitted turn never queues behind the pool);
- past that, up to ``MPAI["STREAM_QUEUE"]`` turns wait, first come first served, at
  most ``MPAI["STREAM_QUEUE_SECONDS"]`` each;
- the rest, and every waiter whose time runs out, get
  :class:`~mpai.exceptions.Overloaded` (code ``overloaded``, ``retry_after`` in s)
  before anything is saved.

Async callers (the websocket consumer) wait on their event loop without holding a
thread; sync callers (the HTTP view) wait in theirs. A slot is released exactly once,
from any thread. :meth:`StreamSlots.stats` is what the health page reads.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from mpai.conf import mpai_settings
from mpai.exceptions import Overloaded


class Slot:
    """One admitted stream; :meth:`release` (idempotent, thread-safe) frees it."""

    __slots__ = ("_owner", "_released")

    def __init__(self, owner: StreamSlots) -> None:
        self._owner = owner
        self._released = False

    def release(self) -> None:
        with self._owner._lock:
            if self._released:
                return
            self._released = True
        self._owner._release()

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class _Waiter:
    """A turn waiting for a slot; ``wake`` runs (outside the lock) once it got one."""

    __slots__ = ("granted", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.granted = False
        self.wake = wake


@dataclass(frozen=True)
class SlotStats:
    """A snapshot of a process's stream slots (counts since the process started)."""

    limit: int
    in_use: int
    waiting: int
    queue_limit: int
    admitted: int
    waited: int
    refused: int


class StreamSlots:
    """Admission of streams in one process (see the module).

    Args:
        limit: most slots held at once (≥ 1).
        queue: most turns waiting for a slot (≥ 0).
        wait_seconds: longest wait for a slot, s.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        *,
        limit: int,
        queue: int,
        wait_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = max(int(limit), 1)
        self.queue_limit = max(int(queue), 0)
        self.wait_seconds = max(float(wait_seconds), 0.0)
        self._clock = clock
        self._lock = threading.Lock()
        self._in_use = 0
        self._waiters: deque[_Waiter] = deque()
        self._admitted = self._waited = self._refused = 0

    # -- taking a slot -------------------------------------------------------------------

    def _try_take(self) -> Slot | None:
        # Called with the lock held; only when nobody waits, so waiters keep their turn.
        if self._in_use < self.limit and not self._waiters:
            self._in_use += 1
            self._admitted += 1
            return Slot(self)
        return None

    def _refuse(self) -> Overloaded:
        self._refused += 1
        return Overloaded(retry_after=max(1, math.ceil(self.wait_seconds)))

    def _take_or_queue(self, wake: Callable[[], None]) -> Slot | _Waiter:
        """A free slot, or a place in the queue woken by ``wake`` when one comes free.

        Raises:
            Overloaded: the queue is full, or nobody may wait.
        """
        with self._lock:
            slot = self._try_take()
            if slot is not None:
                return slot
            if len(self._waiters) >= self.queue_limit or not self.wait_seconds:
                raise self._refuse()
            waiter = _Waiter(wake)
            self._waiters.append(waiter)
            return waiter

    def acquire(self) -> Slot:
        """Take a slot, waiting in this thread if need be.

        Raises:
            Overloaded: no slot came free in ``wait_seconds``, or the queue is full.
        """
        event = threading.Event()
        taken = self._take_or_queue(event.set)
        if isinstance(taken, Slot):
            return taken
        event.wait(self.wait_seconds)
        return self._settle(taken)

    async def acquire_async(self) -> Slot:
        """Take a slot, waiting on the running event loop (no thread held).

        Raises:
            Overloaded: as :meth:`acquire`.
            asyncio.CancelledError: the caller was cancelled while waiting (no slot kept).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # the loop is closed: nobody takes the slot; pass it on
                self._release()

        waiter = self._take_or_queue(wake)
        if isinstance(waiter, Slot):
            return waiter
        try:
            await asyncio.wait_for(asyncio.shield(future), self.wait_seconds)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            slot = self._settle(waiter, refuse=False)
            if slot is not None:
                slot.release()
            raise
        return self._settle(waiter)

    def _settle(self, waiter: _Waiter, *, refuse: bool = True) -> Any:
        """End a wait: the slot if one was handed over, else leave the queue."""
        with self._lock:
            if waiter.granted:
                self._waited += 1
                return Slot(self)
            self._waiters.remove(waiter)
            if refuse:
                raise self._refuse()
            return None

    # -- giving it back ------------------------------------------------------------------

    def _release(self) -> None:
        with self._lock:
            if self._waiters:  # hand the slot straight to the first waiter
                waiter = self._waiters.popleft()
                waiter.granted = True
                self._admitted += 1
            else:
                self._in_use -= 1
                return
        waiter.wake()

    # -- reading -------------------------------------------------------------------------

    def stats(self) -> SlotStats:
        """Return the current counts (for the health page and the benchmarks)."""
        with self._lock:
            return SlotStats(
                limit=self.limit,
                in_use=self._in_use,
                waiting=len(self._waiters),
                queue_limit=self.queue_limit,
                admitted=self._admitted,
                waited=self._waited,
                refused=self._refused,
            )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_slots: StreamSlots | None = None
_slots_lock = threading.Lock()


def stream_slots() -> StreamSlots:
    """Return this process's stream slots, sized by ``MPAI["STREAM_WORKERS"]``,
    ``MPAI["STREAM_QUEUE"]`` and ``MPAI["STREAM_QUEUE_SECONDS"]``."""
    global _slots
    with _slots_lock:
        if _slots is None:
            _slots = StreamSlots(
                limit=mpai_settings.STREAM_WORKERS,
                queue=mpai_settings.STREAM_QUEUE,
                wait_seconds=mpai_settings.STREAM_QUEUE_SECONDS,
            )
        return _slots


@receiver(setting_changed)
def _forget_slots(*, setting: str, **kwargs: Any) -> None:
    """New sizes for new ``MPAI`` settings; slots held in the old one are released there."""
    global _slots
    if setting == "MPAI":
        with _slots_lock:
            _slots = None
