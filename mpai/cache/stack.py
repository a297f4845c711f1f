"""The process-wide layer stack behind every :class:`~mpai.cache.LayeredCache`.

Django builds one cache object per thread and alias; all of them with the same layer
configuration share one :class:`LayerStack` (as ``LocMemCache`` shares its dict by
``LOCATION``): one L1, one circuit breaker per layer, one invalidation listener.

The stack works on *full* keys (already made by the cache's key function) and pickled
payloads; the Django cache contract (timeouts, versions, ``add`` semantics) lives in
:mod:`mpai.cache.backend`.

Reads go fastest layer first; a hit in a slower layer fills the faster shared layers
that answered this read (with ``add``, so a value written meanwhile is not
overwritten; a layer that failed or was skipped is left alone) and L1, each with the
entry's remaining lifetime and never more; a fill of L1 is dropped if the key was
invalidated while the slower layer answered. Writes and deletes update L1 first, then
the other shared layers, then the Redis layer together with the invalidation message
(one round trip), so by the time another process drops its L1 entry every layer it
may read next holds the new value.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mpai.cache.config import StackConfig
from mpai.cache.invalidation import InvalidationBus
from mpai.cache.layers import SharedLayer
from mpai.cache.locks import SingleFlight, StampedeStats, Waiters, layer_mutex
from mpai.cache.memory import MemoryStore
from mpai.cache.wire import UNAVAILABLE, Envelope, Message, Unavailable

logger = logging.getLogger("mpai.cache")

_time = time.time


def remaining(wall_expires: float | None) -> float | None:
    """Seconds left before ``wall_expires`` (None = never; may be <= 0)."""
    return None if wall_expires is None else wall_expires - _time()


class LayerStack:
    """L1, the shared layers, the invalidation bus and the stampede tables.

    Args:
        config: the parsed OPTIONS (see :mod:`mpai.cache.config`).

    Raises:
        ImproperlyConfigured: when a layer's backend cannot be built.
    """

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        memory = config.memory
        self.memory_name = memory.name if memory else None
        if memory is not None:
            self.store = MemoryStore(
                memory.max_entries,
                memory.max_bytes,
                memory.max_item_bytes,
                stale_seconds=config.stale_timeout,
            )
        else:
            self.store = MemoryStore(0, 0, 0, 0.0)
        self.layers = [
            SharedLayer(spec, config.journal_max, self._on_repaired) for spec in config.layers
        ]
        self.flights = SingleFlight()
        self.waiters = Waiters()
        self.stampede = StampedeStats()
        self._stripes = [threading.Lock() for _ in range(64)]
        redis_layer = next((layer for layer in self.layers if layer.redis_client_capable), None)
        self.bus: InvalidationBus | None = None
        # The layer that carries invalidations is written last, together with the
        # message (one round trip on django-redis): when another process drops its L1
        # entry, every layer it may read next already holds the new value.
        self._bus_layer: SharedLayer | None = None
        self._other_layers = list(self.layers)
        if memory is not None and redis_layer is not None:
            self._bus_layer = redis_layer
            self._other_layers.remove(redis_layer)
            self.bus = InvalidationBus(
                redis_layer,
                config.channel,
                self.store,
                ping_interval=config.ping_interval,
                dead_after=config.dead_after,
                on_invalidated=self.waiters.notify,
            )
            self.bus.start()

    # -- L1 policy -----------------------------------------------------------------

    def l1_cap(self) -> float | None:
        """Longest L1 lifetime now: None normally, DEGRADED_L1_TIMEOUT while the
        invalidation listener is down (no cap without a Redis layer: one process)."""
        bus = self.bus
        if bus is None or bus.healthy:
            return None
        return self.config.degraded_l1_timeout

    # -- reads ---------------------------------------------------------------------

    def read_shared(self, key: str, generation: int) -> Envelope | Unavailable | None:
        """Read ``key`` from the shared layers, fastest first, filling faster layers.

        Args:
            generation: ``store.generation`` read before this call (after the L1 miss).

        Returns:
            The live envelope, None on a miss, UNAVAILABLE when no layer answered.
        """
        answered = False
        # Layers that answered (a miss): a layer that has just failed or been skipped is
        # not filled, so a hanging layer costs this read one timeout, not two.
        to_fill: list[SharedLayer] = []
        for layer in self.layers:
            envelope = layer.get(key)
            if envelope is UNAVAILABLE:
                continue
            answered = True
            if envelope is None:
                to_fill.append(layer)
                continue
            if to_fill:
                self._fill_shared(key, envelope, to_fill)
            self.store.fill(key, envelope[1], envelope[0], generation, self.l1_cap())
            return envelope
        return None if answered else UNAVAILABLE

    def read_shared_many(self, keys: list[str], generation: int) -> dict[str, Envelope]:
        """Read several keys from the shared layers (one call per layer), with fills."""
        found: dict[str, Envelope] = {}
        missing = list(keys)
        to_fill: list[SharedLayer] = []  # the layers that answered (as in read_shared)
        for layer in self.layers:
            if not missing:
                break
            got = layer.get_many(missing)
            if got is UNAVAILABLE:
                continue
            for key, envelope in got.items():
                found[key] = envelope
                if to_fill:
                    self._fill_shared(key, envelope, to_fill)
            to_fill.append(layer)
            missing = [key for key in missing if key not in got]
        cap = self.l1_cap()
        for key, envelope in found.items():
            self.store.fill(key, envelope[1], envelope[0], generation, cap)
        return found

    def read_latest(self, key: str) -> Envelope | None:
        """Read ``key`` from the shared layers first (L1 only if none answers)."""
        envelope = self.read_shared(key, self.store.generation)
        if envelope is UNAVAILABLE:
            entry = self.store.peek(key)
            return None if entry is None else (entry[1], entry[0])
        return envelope

    def _fill_shared(self, key: str, envelope: Envelope, layers: list[SharedLayer]) -> None:
        left = remaining(envelope[0])
        if left is not None and left <= 0:
            return
        for layer in layers:
            layer.fill(key, envelope, left)

    # -- writes --------------------------------------------------------------------

    def write(self, key: str, payload: bytes, wall_expires: float | None) -> None:
        """Store ``payload`` in every layer until ``wall_expires`` (None = forever)."""
        left = remaining(wall_expires)
        if left is not None and left <= 0:
            self.remove([key])
            return
        self.store.store(key, payload, wall_expires, self.l1_cap())
        envelope = (wall_expires, payload)
        for layer in self._other_layers:
            layer.set(key, envelope, left)
        if self._bus_layer is not None:
            self._bus_layer.set(key, envelope, left, self._message([key]))
        self.waiters.notify([key])

    def write_many(self, payloads: dict[str, bytes], wall_expires: float | None) -> None:
        """Store several payloads with one expiry in every layer."""
        if not payloads:
            return
        left = remaining(wall_expires)
        if left is not None and left <= 0:
            self.remove(list(payloads))
            return
        cap = self.l1_cap()
        for key, payload in payloads.items():
            self.store.store(key, payload, wall_expires, cap)
        envelopes = {key: (wall_expires, payload) for key, payload in payloads.items()}
        keys = list(payloads)
        for layer in self._other_layers:
            layer.set_many(envelopes, left)
        if self._bus_layer is not None:
            self._bus_layer.set_many(envelopes, left, self._message(keys))
        self.waiters.notify(keys)

    def add(self, key: str, payload: bytes, wall_expires: float | None) -> bool:
        """Store ``payload`` only if no layer holds a live value for ``key``.

        The decision is atomic in the fastest reachable shared layer (``SET NX`` on
        Redis); with none reachable, in L1. At the instant an entry expires the layer
        may still hold it for a moment (its own clock and rounding): an entry whose
        envelope has expired does not block ``add``; it is overwritten (as Django's
        DatabaseCache overwrites an expired row).
        """
        if self.store.peek(key) is not None:
            return False
        existing = self.read_shared(key, self.store.generation)
        if existing is not None and existing is not UNAVAILABLE:
            return False
        left = remaining(wall_expires)
        if left is not None and left <= 0:
            return True  # Django: add() with timeout 0 succeeds and stores nothing.
        envelope = (wall_expires, payload)
        for index, layer in enumerate(self.layers):
            result = layer.add(key, envelope, left)
            if result is UNAVAILABLE:
                continue
            if not result:
                if layer.get(key) is not None:  # a live value: another caller won
                    return False
                layer.set(key, envelope, left)
            for slower in self.layers[index + 1 :]:
                slower.set(key, envelope, left)
            self.store.store(key, payload, wall_expires, self.l1_cap())
            self._published([key])
            return True
        return self.store.add(key, payload, wall_expires, self.l1_cap())

    def remove(self, keys: list[str]) -> bool:
        """Delete ``keys`` from every layer; return whether one of them existed."""
        if not keys:
            return False
        existed = self.store.invalidate(keys)
        layers: list[tuple[SharedLayer, Message | None]] = [
            (layer, None) for layer in self._other_layers
        ]
        if self._bus_layer is not None:
            layers.append((self._bus_layer, self._message(keys)))
        for layer, message in layers:
            if len(keys) == 1:
                existed = layer.delete(keys[0], message) is True or existed
            else:
                layer.delete_many(keys, message)
        self.waiters.notify(keys)
        return existed

    def clear(self) -> None:
        """Clear every layer (Redis: FLUSHDB of the layer's database) and every L1."""
        self.store.clear()
        for layer in self.layers:
            layer.clear()
        if self.bus is not None:
            self.bus.publish_clear()
        self.waiters.notify(None)

    @contextmanager
    def mutex(self, key: str) -> Iterator[None]:
        """Serialize read-modify-writes of ``key`` in this process and, through a
        lock in the fastest reachable shared layer, across processes."""
        stripe = self._stripes[hash(key) % len(self._stripes)]
        with stripe, layer_mutex(self.layers, key, min(self.config.lock_timeout, 5.0)):
            yield

    def _message(self, keys: list[str]) -> Message | None:
        bus = self.bus
        if bus is None:
            return None
        bus.published += 1
        return bus.message(keys)

    def _published(self, keys: list[str]) -> None:
        self.waiters.notify(keys)
        if self.bus is not None:
            self.bus.publish(keys)

    def _on_repaired(self, keys: list[str], cleared: bool) -> None:
        # A layer came back: the other processes may have read it meanwhile.
        if self.bus is None:
            return
        if cleared:
            self.bus.publish_clear()
        elif keys:
            self.bus.publish(keys)

    # -- introspection and lifecycle -----------------------------------------------

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-layer counters, fastest first (see ``LayeredCache.stats``)."""
        result: dict[str, dict[str, Any]] = {}
        if self.memory_name is not None:
            memory = self.store.snapshot()
            bus = self.bus
            memory["listener"] = bus.state if bus is not None else "none"
            memory["invalidations_received"] = bus.received if bus is not None else 0
            memory["invalidations_published"] = bus.published if bus is not None else 0
            result[self.memory_name] = memory
        for layer in self.layers:
            result[layer.name] = layer.snapshot()
        return result

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the invalidation listener is subscribed (True without one)."""
        return True if self.bus is None else self.bus.wait_healthy(timeout)

    def stop(self) -> None:
        if self.bus is not None:
            self.bus.stop()


# -- the per-process registry --------------------------------------------------------

_stacks: dict[str, LayerStack] = {}
_registry_lock = threading.Lock()


def get_stack(config: StackConfig) -> LayerStack:
    """Return the process's stack for ``config``, building it on first use."""
    stack = _stacks.get(config.identity)
    if stack is not None:
        return stack
    with _registry_lock:
        stack = _stacks.get(config.identity)
        if stack is None:
            stack = _stacks[config.identity] = LayerStack(config)
        return stack


def discard_stack(stack: LayerStack) -> None:
    """Stop ``stack``'s listener and forget it (benchmarks and tests that built one)."""
    with _registry_lock:
        if _stacks.get(stack.config.identity) is stack:
            del _stacks[stack.config.identity]
    stack.stop()


def shutdown_stacks() -> None:
    """Stop every listener thread and forget every stack (tests, process exit)."""
    with _registry_lock:
        stacks = list(_stacks.values())
        _stacks.clear()
    for stack in stacks:
        stack.stop()


def _after_fork_in_child() -> None:
    # Threads do not survive fork() and locks may have been held by them: rebuild
    # each stack in place (cache objects keep a reference to it) with an empty L1.
    global _registry_lock
    _registry_lock = threading.Lock()
    for stack in _stacks.values():
        stack.__init__(stack.config)  # type: ignore[misc]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
