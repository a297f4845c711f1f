"""Lock primitives of the layered cache: in-process single flights, waiters, and a
cross-process lock token in a shared layer.

The layer stack (:mod:`mpai.cache.stack`) owns one of each table per process and uses
:func:`layer_mutex` for ``incr``/``touch``; :mod:`mpai.cache.stampede` builds
``get_or_set``'s stampede protection from them. Nothing here knows the stack or the
backend: the layers are passed in.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from mpai.cache.layers import SharedLayer
from mpai.cache.wire import UNAVAILABLE

#: Suffix of ``incr``'s read-modify-write lock key (no user key ends with it).
INCR_LOCK_SUFFIX = "\x1fmpai-incr"


class Flight:
    """One in-process computation: waiters block on ``done``."""

    __slots__ = ("done", "error", "payload")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.payload: bytes | None = None
        self.error: BaseException | None = None


class SingleFlight:
    """At most one :class:`Flight` per key in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, Flight] = {}

    def join(self, key: str) -> tuple[Flight, bool]:
        """Return the key's flight and whether the caller leads it."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return flight, False
            flight = self._flights[key] = Flight()
            return flight, True

    def land(
        self, key: str, flight: Flight, payload: bytes | None, error: BaseException | None
    ) -> None:
        """Publish the leader's result to its waiters and end the flight."""
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
        flight.payload, flight.error = payload, error
        flight.done.set()


class Waiters:
    """Events woken when a key is written here or invalidated by another process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[threading.Event]] = {}

    @contextmanager
    def watch(self, key: str) -> Iterator[threading.Event]:
        event = threading.Event()
        with self._lock:
            self._events.setdefault(key, []).append(event)
        try:
            yield event
        finally:
            with self._lock:
                events = self._events.get(key, [])
                if event in events:
                    events.remove(event)
                if not events:
                    self._events.pop(key, None)

    def notify(self, keys: list[str] | None) -> None:
        """Wake the waiters of ``keys`` (all waiters for None)."""
        if not self._events:
            return
        with self._lock:
            if keys is None:
                events = [event for group in self._events.values() for event in group]
            else:
                events = [event for key in keys for event in self._events.get(key, ())]
        for event in events:
            event.set()


class KeyLock:
    """A lock token in the fastest reachable shared layer.

    Args:
        layers: shared layers, fastest first.
        key: the lock's key (the cache key plus a suffix no user key ends with).
        ttl: seconds after which the layer forgets the lock.
    """

    def __init__(self, layers: list[SharedLayer], key: str, ttl: float) -> None:
        self.layers = layers
        self.key = key
        self.ttl = ttl
        self.token = uuid.uuid4().hex
        self._holder: SharedLayer | None = None

    def acquire(self) -> bool | None:
        """Try once: True if taken, False if someone holds it, None if no layer answered."""
        for layer in self.layers:
            result = layer.lock_add(self.key, self.token, self.ttl)
            if result is UNAVAILABLE:
                continue
            if result:
                self._holder = layer
            return bool(result)
        return None

    def held_elsewhere(self) -> bool | None:
        """Whether another owner holds the lock (None if no layer answered)."""
        for layer in self.layers:
            token = layer.lock_get(self.key)
            if token is UNAVAILABLE:
                continue
            return token is not None and token != self.token
        return None

    def release(self) -> None:
        """Delete the lock if this owner still holds it."""
        holder, self._holder = self._holder, None
        if holder is not None and holder.lock_get(self.key) == self.token:
            holder.lock_delete(self.key)


@contextmanager
def layer_mutex(layers: list[SharedLayer], key: str, ttl: float) -> Iterator[bool]:
    """Hold a cross-process lock on ``key`` for a read-modify-write (``incr``).

    Waits up to ``ttl`` seconds for it, then goes ahead without it (a crashed holder
    must not block everyone). Yields whether the lock was taken.
    """
    lock = KeyLock(layers, key + INCR_LOCK_SUFFIX, ttl)
    deadline = time.monotonic() + ttl
    delay = 0.001
    acquired = lock.acquire()
    while acquired is False and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
        acquired = lock.acquire()
    try:
        yield bool(acquired)
    finally:
        if acquired:
            lock.release()


class StampedeStats:
    """Counters of ``get_or_set``'s stampede protection: computed (callable runs),
    waited (in-process waiters served by the leader), stale (stale L1 values served),
    remote_waits (waits on another process), lock_timeouts (gave up waiting and
    computed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(
            ("computed", "waited", "stale", "remote_waits", "lock_timeouts"), 0
        )

    def add(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)
