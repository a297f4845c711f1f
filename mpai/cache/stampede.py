"""Stampede protection for ``LayeredCache.get_or_set`` with a callable.

When many callers miss the same key at the same moment the callable runs once:

- within a process, a single-flight table lets the first caller (the leader) compute
  while the others wait for its result (at most ``LOCK_TIMEOUT`` seconds) or, if L1
  still holds a recently expired value (``STALE_TIMEOUT``), return that at once;
- across processes, the leader first takes a lock in the fastest reachable shared
  layer (``add`` of a token: ``SET NX PX`` on Redis, a primary-key insert on the
  database) that expires after ``LOCK_TIMEOUT`` seconds. A process that finds the
  lock taken serves its stale L1 value if it has one, else waits for the value to
  appear (woken by the invalidation message of the leader's write, polling as a
  fallback). If the lock disappears without a value (the leader failed) it tries to
  take it; if ``LOCK_TIMEOUT`` passes (the leader died or hangs) it computes
  without the lock, so no caller waits longer than that.

Known cures compared in ARCHITECTURE.md (single-flight lock, XFetch, serving stale);
this combines the lock with a bounded stale window.
"""

from __future__ import annotations

import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from mpai.cache.layers import SharedLayer
from mpai.cache.wire import UNAVAILABLE

if TYPE_CHECKING:
    from mpai.cache.backend import LayeredCache

LOCK_SUFFIX = "\x1fmpai-lock"
INCR_LOCK_SUFFIX = "\x1fmpai-incr"
_MISSING = object()


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
    """Counters: computed (callable runs), waited (in-process waiters served by the
    leader), stale (stale L1 values served), remote_waits (waits on another process),
    lock_timeouts (gave up waiting and computed)."""

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


def compute_once(
    cache: LayeredCache, key: Any, compute: Callable[[], Any], timeout: Any, version: Any
) -> Any:
    """Run ``compute`` once for concurrent misses of ``key`` and return the cached value.

    Follows ``BaseCache.get_or_set``: the value is stored with ``add`` and the cache
    is read again, so a value another caller stored first wins.

    Raises:
        Exception: whatever ``compute`` raised (its in-process waiters get it too).
    """
    stack = cache._stack
    full = cache.make_key(key, version=version)
    flight, leader = stack.flights.join(full)
    if not leader:
        stale = stack.store.get_stale(full)
        if stale is not None:
            stack.stampede.add("stale")
            return pickle.loads(stale)
        # The leader may itself wait up to LOCK_TIMEOUT for another process, then compute.
        if flight.done.wait(2 * stack.config.lock_timeout):
            if flight.error is not None:
                raise flight.error
            if flight.payload is not None:
                stack.stampede.add("waited")
                return pickle.loads(flight.payload)
        stack.stampede.add("lock_timeouts")
        return _compute_and_store(cache, key, compute, timeout, version)
    try:
        value = _lead(cache, key, full, compute, timeout, version)
        payload = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:
        stack.flights.land(full, flight, None, exc)
        raise
    stack.flights.land(full, flight, payload, None)
    return value


def _compute_and_store(
    cache: LayeredCache, key: Any, compute: Callable[[], Any], timeout: Any, version: Any
) -> Any:
    cache._stack.stampede.add("computed")
    value = compute()
    cache.add(key, value, timeout=timeout, version=version)
    return cache.get(key, value, version=version)


def _lead(
    cache: LayeredCache,
    key: Any,
    full: str,
    compute: Callable[[], Any],
    timeout: Any,
    version: Any,
) -> Any:
    stack = cache._stack
    lock = KeyLock(stack.layers, full + LOCK_SUFFIX, stack.config.lock_timeout)
    deadline = time.monotonic() + stack.config.lock_timeout
    while True:
        acquired = lock.acquire()
        if acquired is not False:  # taken, or no shared layer to lock in
            try:
                value = cache.get(key, _MISSING, version=version)
                if value is not _MISSING:
                    return value
                return _compute_and_store(cache, key, compute, timeout, version)
            finally:
                lock.release()
        stale = stack.store.get_stale(full)
        if stale is not None:
            stack.stampede.add("stale")
            return pickle.loads(stale)
        stack.stampede.add("remote_waits")
        value = _wait_for_value(cache, key, full, lock, deadline, version)
        if value is not _MISSING:
            return value
        if time.monotonic() >= deadline:
            stack.stampede.add("lock_timeouts")
            return _compute_and_store(cache, key, compute, timeout, version)


def _wait_for_value(
    cache: LayeredCache, key: Any, full: str, lock: KeyLock, deadline: float, version: Any
) -> Any:
    """Wait for another process's value; _MISSING when the lock went away or time is up."""
    stack = cache._stack
    delay = 0.002
    with stack.waiters.watch(full) as event:
        while True:
            value = cache.get(key, _MISSING, version=version)
            if value is not _MISSING:
                return value
            if lock.held_elsewhere() is not True:
                return _MISSING
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _MISSING
            event.wait(min(delay, remaining))
            event.clear()
            delay = min(delay * 2, 0.05)
