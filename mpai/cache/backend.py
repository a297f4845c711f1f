"""``mpai.cache.LayeredCache``: a multi-level cache as a Django cache backend.

The WordPress plugin's three levels (request memory, then the object cache, then
persistent transients) become, by default: L1 in-process memory, L2 Redis through
django-redis, L3 :class:`mpai.cache.database.DatabaseLayer`, Django's ``DatabaseCache``
with one-statement writes (it survives a Redis restart). It keeps Django's
whole cache contract (sync and async), so a site can make it its default cache::

    CACHES = {"default": {"BACKEND": "mpai.cache.LayeredCache",
                          "LOCATION": "redis://127.0.0.1:6379/0"}}
    # then: python manage.py createcachetable mpai_cache

Options: :mod:`mpai.cache.config`. Coherence bound: :mod:`mpai.cache.invalidation`.
Stampede protection: :mod:`mpai.cache.stampede`.

Behaviour where Django's backends differ, chosen as Django's ``BaseCacheTests``
expect of every backend:

- timeouts: None = forever, 0 or negative = expire at once (``set`` then deletes the
  key everywhere, ``add`` returns True and stores nothing, ``touch`` deletes it);
- ``incr``/``decr`` keep the entry's expiry (memcached/LocMemCache behaviour), raise
  ``ValueError`` for a missing key and ``TypeError`` for a non-number; they are
  atomic within the process and, while a shared layer is reachable, across
  processes (a short lock in that layer);
- ``set_many`` returns ``[]``: a layer that is down is skipped, not reported;
- ``delete`` returns True if any layer held the key;
- ``clear`` clears every layer: on django-redis that is FLUSHDB of its database.

Errors raised to the caller are only those of the contract: ``ValueError`` (incr of a
missing key), ``TypeError``, pickling errors of the value, and whatever a
``get_or_set`` callable raises. Layer failures never reach the caller.
"""

# ruff: noqa: ASYNC109 - Django's async cache API names its lifetime argument "timeout".
from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.cache.backends.base import (
    DEFAULT_TIMEOUT,
    MEMCACHE_MAX_KEY_LENGTH,
    BaseCache,
)

from mpai.cache.config import parse_options
from mpai.cache.stack import LayerStack, get_stack
from mpai.cache.stampede import compute_once
from mpai.cache.wire import UNAVAILABLE

_loads = pickle.loads
_dumps = pickle.dumps
_PROTOCOL = pickle.HIGHEST_PROTOCOL
# The characters memcache_key_warnings() complains about (control characters, space, DEL).
_UNPORTABLE_CHAR = re.compile(r"[\x00-\x20\x7f]")


class LayeredCache(BaseCache):
    """A Django cache backend over ordered layers, fastest first.

    Args:
        location: the default Redis layer's URL ("" for a stack without Redis).
        params: the CACHES entry (``TIMEOUT``, ``KEY_PREFIX``, ``VERSION``,
            ``KEY_FUNCTION``, ``OPTIONS``).

    Raises:
        ImproperlyConfigured: for invalid OPTIONS or an unusable layer backend.
    """

    pickle_protocol = _PROTOCOL

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        self._config = parse_options(location, params.get("OPTIONS") or {})
        self._stack: LayerStack = get_stack(self._config)

    # -- helpers -------------------------------------------------------------------

    def validate_key(self, key: Any) -> None:
        """Warn (``CacheKeyWarning``) about keys memcached would refuse, as every
        Django backend does; the common valid case is checked with one regex search
        instead of a Python loop over the key's characters (about 2 us per call)."""
        if (
            type(key) is not str
            or len(key) > MEMCACHE_MAX_KEY_LENGTH
            or _UNPORTABLE_CHAR.search(key) is not None
        ):
            super().validate_key(key)

    def _expiry(self, timeout: Any) -> float | None:
        """Absolute expiry in ``time.time()`` seconds, None for never."""
        return self.get_backend_timeout(timeout)

    def _get_shared(self, key: str, default: Any) -> Any:
        stack = self._stack
        envelope = stack.read_shared(key, stack.store.generation)
        if envelope is None or envelope is UNAVAILABLE:
            return default
        return _loads(envelope[1])

    def _get_many_shared(self, keys: dict[str, Any], found: dict[Any, Any]) -> dict[Any, Any]:
        stack = self._stack
        missing = [full for full, original in keys.items() if original not in found]
        if missing:
            for full, envelope in stack.read_shared_many(missing, stack.store.generation).items():
                found[keys[full]] = _loads(envelope[1])
        return {original: found[original] for original in keys.values() if original in found}

    # -- reads ---------------------------------------------------------------------

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """Return the value for ``key`` (fastest layer first), or ``default``."""
        key = self.make_and_validate_key(key, version=version)
        payload = self._stack.store.get(key)
        if payload is not None:
            return _loads(payload)
        return self._get_shared(key, default)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """Return ``{key: value}`` for the keys found (one call per layer)."""
        full_keys, found = self._get_many_memory(keys, version)
        return self._get_many_shared(full_keys, found)

    def _get_many_memory(
        self, keys: Iterable[Any], version: int | None
    ) -> tuple[dict[str, Any], dict[Any, Any]]:
        """Return ``({full key: key}, {key: value found in L1})``."""
        full_keys = {self.make_and_validate_key(key, version=version): key for key in keys}
        store = self._stack.store
        found: dict[Any, Any] = {}
        for full, original in full_keys.items():
            payload = store.get(full)
            if payload is not None:
                found[original] = _loads(payload)
        return full_keys, found

    def has_key(self, key: Any, version: int | None = None) -> bool:
        """Return True if ``key`` holds a live value (None counts as a value)."""
        key = self.make_and_validate_key(key, version=version)
        stack = self._stack
        if stack.store.peek(key) is not None:
            return True
        envelope = stack.read_shared(key, stack.store.generation)
        return envelope is not None and envelope is not UNAVAILABLE

    # -- writes --------------------------------------------------------------------

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        """Store ``value`` in every layer for ``timeout`` seconds.

        Raises:
            pickle.PickleError (or TypeError/AttributeError): the value cannot be pickled.
        """
        key = self.make_and_validate_key(key, version=version)
        payload = _dumps(value, _PROTOCOL)
        self._stack.write(key, payload, self._expiry(timeout))

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """Store ``value`` unless ``key`` holds a live value; return whether it did."""
        key = self.make_and_validate_key(key, version=version)
        payload = _dumps(value, _PROTOCOL)
        return self._stack.add(key, payload, self._expiry(timeout))

    def set_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        """Store several values with one lifetime; return ``[]`` (see module docs)."""
        payloads = {
            self.make_and_validate_key(key, version=version): _dumps(value, _PROTOCOL)
            for key, value in data.items()
        }
        self._stack.write_many(payloads, self._expiry(timeout))
        return []

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Give ``key`` a new lifetime; return False if it holds no live value."""
        key = self.make_and_validate_key(key, version=version)
        stack = self._stack
        with stack.mutex(key):
            envelope = stack.read_latest(key)
            if envelope is None:
                return False
            stack.write(key, envelope[1], self._expiry(timeout))
        return True

    def delete(self, key: Any, version: int | None = None) -> bool:
        """Delete ``key`` from every layer; return whether a layer held it."""
        key = self.make_and_validate_key(key, version=version)
        return self._stack.remove([key])

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """Delete several keys from every layer (one call per layer)."""
        full_keys = [self.make_and_validate_key(key, version=version) for key in keys]
        self._stack.remove(full_keys)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Add ``delta`` to the value and return it (the expiry is kept).

        Raises:
            ValueError: ``key`` holds no live value.
            TypeError: the value does not support ``+ delta``.
        """
        full = self.make_and_validate_key(key, version=version)
        stack = self._stack
        with stack.mutex(full):
            envelope = stack.read_latest(full)
            if envelope is None:
                raise ValueError(f"Key '{full}' not found")
            value = _loads(envelope[1]) + delta
            stack.write(full, _dumps(value, _PROTOCOL), envelope[0])
        return value

    def clear(self) -> None:
        """Clear every layer and every process's L1 (django-redis: FLUSHDB)."""
        self._stack.clear()

    def get_or_set(
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> Any:
        """Return the cached value, or store and return ``default``.

        A callable ``default`` runs once for concurrent misses of the same key in this
        process and across processes (:mod:`mpai.cache.stampede`).

        Raises:
            Exception: whatever the callable raised.
        """
        value = self.get(key, self._missing_key, version=version)
        if value is not self._missing_key:
            return value
        if callable(default):
            return compute_once(self, self._stack, key, default, timeout, version)
        self.add(key, default, timeout=timeout, version=version)
        # Read again: another caller may have stored a value first (BaseCache does too).
        return self.get(key, default, version=version)

    def close(self, **kwargs: Any) -> None:
        """Close the layers' connections when their backends do so per request."""
        for layer in self._stack.layers:
            layer.close()

    # -- introspection -------------------------------------------------------------

    @property
    def stack(self) -> LayerStack:
        """The process-wide layer stack behind this cache object (shared by every cache
        object with the same layer configuration): its L1 (``stack.store``), shared
        layers (``stack.layers``) and counters, for benchmarks, tests and diagnostics.
        Bypassing the cache's methods through it skips key making and invalidation."""
        return self._stack

    def stats(self) -> dict[str, dict[str, Any]]:
        """Return per-layer counters for metrics and health pages, fastest first.

        Shape: ``{layer_name: {...}}``. The memory layer (default name ``"memory"``)
        has ``hits``, ``misses``, ``evictions``, ``invalidations``,
        ``fills_dropped``, ``entries``, ``bytes``, ``max_entries``, ``max_bytes``,
        ``listener`` (``"connected"``, ``"down"`` or ``"none"``),
        ``invalidations_received`` and ``invalidations_published``; each shared layer
        (``"redis"``, ``"database"``) has ``hits``, ``misses``, ``errors``,
        ``skipped`` (calls not made while its breaker was open), ``slow``, ``state``
        (``"closed"``, ``"open"``, ``"half_open"``), ``outages`` and ``journal``.
        Counts are totals since the process started; they are per process.
        """
        return self._stack.stats()

    def stampede_stats(self) -> dict[str, int]:
        """Return ``get_or_set`` counters: computed, waited, stale, remote_waits,
        lock_timeouts (per process)."""
        return self._stack.stampede.snapshot()

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Wait up to ``timeout`` seconds for the invalidation listener to subscribe.

        Until it has, L1 entries live at most ``DEGRADED_L1_TIMEOUT`` seconds.
        Returns True when subscribed (always True without a Redis layer).
        """
        return self._stack.wait_ready(timeout)

    # -- async twins: L1 hits stay on the event loop, layer I/O goes to a thread ----

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self._stack.layers:
            return fn(*args)
        return await sync_to_async(fn)(*args)

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        payload = self._stack.store.get(key)
        if payload is not None:
            return _loads(payload)
        return await self._run(self._get_shared, key, default)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        full_keys, found = self._get_many_memory(keys, version)
        if len(found) == len(full_keys):
            return {original: found[original] for original in full_keys.values()}
        return await self._run(self._get_many_shared, full_keys, found)

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        if self._stack.store.peek(self.make_and_validate_key(key, version=version)) is not None:
            return True
        return bool(await self._run(self.has_key, key, version))

    async def aget_or_set(
        self,
        key: Any,
        default: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> Any:
        """Async ``get_or_set``; on a miss the callable runs in a worker thread."""
        value = await self.aget(key, self._missing_key, version=version)
        if value is not self._missing_key:
            return value
        return await self._run(self.get_or_set, key, default, timeout, version)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        await self._run(self.set, key, value, timeout, version)

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return bool(await self._run(self.add, key, value, timeout, version))

    async def aset_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        return list(await self._run(self.set_many, data, timeout, version))

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        return bool(await self._run(self.touch, key, timeout, version))

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        return bool(await self._run(self.delete, key, version))

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        await self._run(self.delete_many, list(keys), version)

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return await self._run(self.incr, key, delta, version)

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        return await self._run(self.incr, key, -delta, version)

    async def aincr_version(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return int(await self._run(self.incr_version, key, delta, version))

    async def adecr_version(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return int(await self._run(self.incr_version, key, -delta, version))

    async def aclear(self) -> None:
        await self._run(self.clear)

    async def aclose(self, **kwargs: Any) -> None:
        self.close(**kwargs)
