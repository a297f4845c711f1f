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

Of the known cures (a single-flight lock, probabilistic early refresh as in XFetch,
VLDB 2015, serving stale data as django-redis's ``HerdClient`` does), this combines
the lock with a bounded stale window. The tables and the lock token are
:mod:`mpai.cache.locks`; the process's instances of them live on the layer stack
(:mod:`mpai.cache.stack`), which the backend passes in.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mpai.cache.locks import KeyLock

if TYPE_CHECKING:
    from django.core.cache.backends.base import BaseCache

    from mpai.cache.stack import LayerStack

#: Suffix of the stampede lock's key (no user key ends with it).
LOCK_SUFFIX = "\x1fmpai-lock"
_MISSING = object()


def compute_once(
    cache: BaseCache,
    stack: LayerStack,
    key: Any,
    compute: Callable[[], Any],
    timeout: Any,
    version: Any,
) -> Any:
    """Run ``compute`` once for concurrent misses of ``key`` and return the cached value.

    Follows ``BaseCache.get_or_set``: the value is stored with ``add`` and the cache
    is read again, so a value another caller stored first wins.

    Args:
        cache: the cache whose ``get``/``add``/``make_key`` are used.
        stack: the layer stack behind ``cache`` (its flights, waiters, L1, layers).

    Raises:
        Exception: whatever ``compute`` raised (its in-process waiters get it too).
    """
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
        return _compute_and_store(cache, stack, key, compute, timeout, version)
    try:
        value = _lead(cache, stack, key, full, compute, timeout, version)
        payload = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:
        stack.flights.land(full, flight, None, exc)
        raise
    stack.flights.land(full, flight, payload, None)
    return value


def _compute_and_store(
    cache: BaseCache,
    stack: LayerStack,
    key: Any,
    compute: Callable[[], Any],
    timeout: Any,
    version: Any,
) -> Any:
    stack.stampede.add("computed")
    value = compute()
    cache.add(key, value, timeout=timeout, version=version)
    return cache.get(key, value, version=version)


def _lead(
    cache: BaseCache,
    stack: LayerStack,
    key: Any,
    full: str,
    compute: Callable[[], Any],
    timeout: Any,
    version: Any,
) -> Any:
    lock = KeyLock(stack.layers, full + LOCK_SUFFIX, stack.config.lock_timeout)
    deadline = time.monotonic() + stack.config.lock_timeout
    while True:
        acquired = lock.acquire()
        if acquired is not False:  # taken, or no shared layer to lock in
            try:
                value = cache.get(key, _MISSING, version=version)
                if value is not _MISSING:
                    return value
                return _compute_and_store(cache, stack, key, compute, timeout, version)
            finally:
                lock.release()
        stale = stack.store.get_stale(full)
        if stale is not None:
            stack.stampede.add("stale")
            return pickle.loads(stale)
        stack.stampede.add("remote_waits")
        value = _wait_for_value(cache, stack, key, full, lock, deadline, version)
        if value is not _MISSING:
            return value
        if time.monotonic() >= deadline:
            stack.stampede.add("lock_timeouts")
            return _compute_and_store(cache, stack, key, compute, timeout, version)


def _wait_for_value(
    cache: BaseCache,
    stack: LayerStack,
    key: Any,
    full: str,
    lock: KeyLock,
    deadline: float,
    version: Any,
) -> Any:
    """Wait for another process's value; _MISSING when the lock went away or time is up."""
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
