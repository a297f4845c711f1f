"""Shared layers (L2, L3, ...): any Django cache backend behind a circuit breaker.

Each layer wraps one Django cache backend instance (django-redis, Django's
``DatabaseCache``, ...). The wrapper:

- passes keys and envelopes as :mod:`mpai.cache.wire` describes, so a hit in a slow
  layer fills the faster layers with the remaining lifetime and never more;
- never raises: an error is counted, an outage-class error (connection, timeout,
  ``OperationalError``) or a call slower than ``SLOW_CALL`` feeds the layer's
  :class:`~mpai.cache.breaker.CircuitBreaker`, and the caller sees
  :data:`UNAVAILABLE`;
- while the breaker is open, skips the layer without I/O; the probe that may close it
  runs in a background thread (inline only for a database layer), so a Redis that
  accepts connections and never answers costs a request nothing once the breaker
  has opened;
- logs once per outage (when the breaker opens) and once when the layer is back;
- keeps a journal of the keys it missed writes or deletes for while down (at most
  ``JOURNAL_MAX``) and deletes them from the layer when it comes back, before the
  layer is read again, so it cannot serve a value older than one written meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.core.cache.backends.base import BaseCache, InvalidCacheBackendError
from django.core.cache.backends.db import BaseDatabaseCache
from django.db import connections, router, transaction
from django.utils.module_loading import import_string

from mpai.cache.breaker import CLOSED, CircuitBreaker
from mpai.cache.config import LayerSpec
from mpai.cache.wire import (
    UNAVAILABLE,
    Envelope,
    Message,
    Unavailable,
    as_envelope,
    is_outage,
    is_redis,
    layer_key,
    raw_class,
)

logger = logging.getLogger("mpai.cache")

PROBE_KEY = "mpai:cache:probe"
_DELETE_CHUNK = 500
T = TypeVar("T")
_perf = time.perf_counter


class SharedLayer:
    """A Django cache backend used as one layer of a :class:`~mpai.cache.LayeredCache`.

    Args:
        spec: the parsed layer configuration.
        journal_max: most keys remembered while the layer is down.
        on_repaired: called with ``(keys, cleared)`` after the layer came back and the
            remembered keys were deleted from it (and, if a ``clear()`` was missed,
            after the layer was cleared).

    Raises:
        ImproperlyConfigured: when the backend cannot be imported or built.
    """

    def __init__(
        self,
        spec: LayerSpec,
        journal_max: int = 10_000,
        on_repaired: Callable[[list[str], bool], None] | None = None,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self.breaker = CircuitBreaker(spec.breaker_failures, spec.breaker_reset)
        self.on_repaired = on_repaired
        try:
            backend_cls = import_string(spec.backend)
        except ImportError as exc:
            raise InvalidCacheBackendError(
                f"Layer {spec.name!r}: could not import {spec.backend!r}: {exc}"
            ) from exc
        params = {"OPTIONS": spec.options, "KEY_FUNCTION": layer_key, "TIMEOUT": None}
        self.backend: BaseCache = raw_class(backend_cls)(spec.location, params)  # type: ignore[call-arg]
        self.is_database = isinstance(self.backend, BaseDatabaseCache)
        self.redis_client_capable = is_redis(self.backend)
        # django-redis exposes make_key/encode/get_client: writes and their invalidation
        # message then go out in one round trip.
        client = getattr(self.backend, "client", None) if self.redis_client_capable else None
        self.pipelines = all(hasattr(client, name) for name in ("make_key", "encode", "get_client"))
        self._lock = threading.Lock()
        self._journal: OrderedDict[str, None] = OrderedDict()
        self._journal_max = journal_max
        self._journal_lost = 0
        self._pending_clear = False
        self._repairing = False
        self._logged: set[type[BaseException]] = set()
        self._skipped_since_open = 0
        self.hits = self.misses = self.errors = self.skipped = self.slow = 0

    # -- reads ---------------------------------------------------------------------

    def get(self, key: str) -> Envelope | Unavailable | None:
        """Return the live envelope under ``key``, None on a miss, or UNAVAILABLE."""
        value = self._call(self.backend.get, key)
        if value is UNAVAILABLE:
            return UNAVAILABLE
        envelope = as_envelope(value)
        with self._lock:
            if envelope is None:
                self.misses += 1
            else:
                self.hits += 1
        return envelope

    def get_many(self, keys: list[str]) -> dict[str, Envelope] | Unavailable:
        """Return the live envelopes found among ``keys``, or UNAVAILABLE."""
        values = self._call(self.backend.get_many, keys)
        if values is UNAVAILABLE:
            return UNAVAILABLE
        found: dict[str, Envelope] = {}
        for key, value in values.items():
            envelope = as_envelope(value)
            if envelope is not None:
                found[key] = envelope
        with self._lock:
            self.hits += len(found)
            self.misses += len(keys) - len(found)
        return found

    # -- writes (journaled when they cannot reach the layer) -----------------------

    def set(
        self, key: str, envelope: Envelope, timeout: float | None, message: Message | None = None
    ) -> bool:
        """Store ``envelope`` for ``timeout`` seconds (None = forever), then publish
        ``message`` (pipelined on django-redis). False if the layer is down."""
        if message is not None and self.pipelines:

            def _pipelined(pipe: Any) -> None:
                self._pipe_set(pipe, key, envelope, timeout)

            return self._pipeline(_pipelined, message, (key,)) is not UNAVAILABLE
        ok = self._call(self.backend.set, key, envelope, timeout, write_keys=(key,))
        return self._then_publish(ok is not UNAVAILABLE, message, (key,))

    def set_many(
        self, data: dict[str, Envelope], timeout: float | None, message: Message | None = None
    ) -> bool:
        """Store several envelopes with one lifetime, then publish ``message``."""
        if message is not None and self.pipelines:

            def _pipelined(pipe: Any) -> None:
                for key, envelope in data.items():
                    self._pipe_set(pipe, key, envelope, timeout)

            return self._pipeline(_pipelined, message, list(data)) is not UNAVAILABLE
        ok = self._call(self.backend.set_many, data, timeout, write_keys=list(data))
        return self._then_publish(ok is not UNAVAILABLE, message, list(data))

    def add(self, key: str, envelope: Envelope, timeout: float | None) -> bool | Unavailable:
        """Store ``envelope`` only if ``key`` is absent; UNAVAILABLE if down."""
        result = self._call(self.backend.add, key, envelope, timeout, write_keys=(key,))
        return result if result is UNAVAILABLE else bool(result)

    def fill(self, key: str, envelope: Envelope, timeout: float | None) -> bool:
        """Copy an envelope found in a slower layer here (``add``: never overwrite)."""
        return bool(self._call(self.backend.add, key, envelope, timeout) is True)

    def delete(self, key: str, message: Message | None = None) -> bool | Unavailable:
        """Delete ``key``, then publish ``message``; return whether it existed, or
        UNAVAILABLE."""
        if message is not None and self.pipelines:

            def _pipelined(pipe: Any) -> None:
                pipe.delete(self.backend.client.make_key(key))  # type: ignore[attr-defined]

            replies = self._pipeline(_pipelined, message, (key,))
            return replies if replies is UNAVAILABLE else bool(replies[0])
        result = self._call(self.backend.delete, key, write_keys=(key,))
        self._then_publish(result is not UNAVAILABLE, message, (key,))
        return result if result is UNAVAILABLE else bool(result)

    def delete_many(self, keys: list[str], message: Message | None = None) -> bool:
        """Delete ``keys``, then publish ``message``; False if the layer is down (the
        keys are then journaled)."""
        if message is not None and self.pipelines:

            def _pipelined(pipe: Any) -> None:
                make_key = self.backend.client.make_key  # type: ignore[attr-defined]
                pipe.delete(*[make_key(key) for key in keys])

            return self._pipeline(_pipelined, message, keys) is not UNAVAILABLE
        ok = self._call(self.backend.delete_many, keys, write_keys=keys)
        return self._then_publish(ok is not UNAVAILABLE, message, keys)

    def clear(self) -> bool:
        """Clear the layer (django-redis: FLUSHDB of its database); replayed if down."""
        if self._call(self.backend.clear) is UNAVAILABLE:
            with self._lock:
                self._pending_clear = True
            return False
        return True

    # -- unjournaled helpers for locks and messages --------------------------------

    def lock_add(self, key: str, token: str, timeout: float) -> bool | Unavailable:
        """``add`` a lock token (no envelope); UNAVAILABLE if down."""
        result = self._call(self.backend.add, key, token, timeout)
        return result if result is UNAVAILABLE else bool(result)

    def lock_get(self, key: str) -> Any:
        """Return the lock token under ``key``, None, or UNAVAILABLE."""
        return self._call(self.backend.get, key)

    def lock_delete(self, key: str) -> None:
        self._call(self.backend.delete, key)

    def redis_client(self) -> Any:
        """Return the raw redis-py client of a Redis backend, else None."""
        client = getattr(self.backend, "client", None)  # django-redis
        if client is not None and hasattr(client, "get_client"):
            return client.get_client(write=True)
        inner = getattr(self.backend, "_cache", None)  # django.core.cache RedisCache
        if inner is not None and hasattr(inner, "get_client"):
            return inner.get_client(write=True)
        return None

    def publish(self, message: Message, keys: Iterable[str]) -> bool:
        """PUBLISH ``message`` (``(channel, text)``); on failure remember ``keys``."""

        def _publish() -> Any:
            return self.redis_client().publish(*message)

        return self._call(_publish, write_keys=list(keys)) is not UNAVAILABLE

    def _then_publish(self, ok: bool, message: Message | None, keys: Iterable[str]) -> bool:
        if ok and message is not None:
            self.publish(message, keys)
        return ok

    def _pipe_set(self, pipe: Any, key: str, envelope: Envelope, timeout: float | None) -> None:
        client = self.backend.client  # type: ignore[attr-defined]
        if timeout is None:
            pipe.set(client.make_key(key), client.encode(envelope))
        else:
            pipe.set(client.make_key(key), client.encode(envelope), px=max(1, int(timeout * 1000)))

    def _pipeline(
        self, commands: Callable[[Any], None], message: Message, keys: Iterable[str]
    ) -> list[Any] | Unavailable:
        """Send ``commands`` and a PUBLISH of ``message`` in one round trip (django-redis)."""

        def _execute() -> list[Any]:
            pipe = self.backend.client.get_client(write=True).pipeline(transaction=False)  # type: ignore[attr-defined]
            commands(pipe)
            pipe.publish(*message)
            return list(pipe.execute())

        return self._call(_execute, write_keys=list(keys))

    def close(self) -> None:
        try:
            self.backend.close()
        except Exception:  # a close must never break a request
            logger.debug("mpai cache: closing layer %r failed", self.name, exc_info=True)

    def snapshot(self) -> dict[str, Any]:
        """Counters: hits, misses, errors, skipped (calls not made while open), slow,
        state (closed/open/half_open), outages (times opened), journal (keys)."""
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "errors": self.errors,
                "skipped": self.skipped,
                "slow": self.slow,
                "state": self.breaker.state,
                "outages": self.breaker.opened,
                "journal": len(self._journal),
            }

    # -- the breaker-guarded call --------------------------------------------------

    def _call(
        self, fn: Callable[..., T], *args: Any, write_keys: Iterable[str] | None = None
    ) -> T | Unavailable:
        if self.breaker.state is not CLOSED and not self._enter():
            if write_keys is not None:
                self._remember(write_keys)
            return UNAVAILABLE
        start = _perf()
        try:
            result = self._database_call(fn, args) if self.is_database else fn(*args)
        except Exception as exc:
            self._failed(exc)
            if write_keys is not None:
                self._remember(write_keys)
            return UNAVAILABLE
        elapsed = _perf() - start
        if elapsed > self.spec.slow_call:
            self._slow(elapsed)
        else:
            self.breaker.record_success()
        return result

    def _database_call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        # Inside the caller's transaction a failed query would abort it (PostgreSQL):
        # run the cache query in a savepoint so a cache error stays a cache error.
        alias = router.db_for_write(self.backend.cache_model_class)  # type: ignore[attr-defined]
        if connections[alias].in_atomic_block:
            with transaction.atomic(using=alias):
                return fn(*args)
        return fn(*args)

    def _enter(self) -> bool:
        """Decide whether a call may go to a layer whose breaker is not closed.

        The caller that wins the probe of a database layer makes it (Django's
        connections belong to the calling thread and its transaction); the probe of
        any other layer runs in a thread of its own and the caller skips the layer, so
        no request waits on a layer that hangs (a socket timeout per probe otherwise).
        """
        if self.breaker.request_probe():
            if self.breaker.state is CLOSED:
                return True
            if self.is_database:
                return self._probe_and_repair()
            self._probe_in_background()
        with self._lock:
            self.skipped += 1
            self._skipped_since_open += 1
        return False

    def _probe_in_background(self) -> None:
        """Probe (and repair) the layer in a daemon thread; the breaker is half-open."""
        try:
            threading.Thread(
                target=self._probe_and_repair, name=f"mpai-cache-probe-{self.name}", daemon=True
            ).start()
        except RuntimeError:  # no thread to be had: stay open, try again next period
            self.breaker.record_failure()

    def recover_if_due(self) -> None:
        """Probe the layer if its breaker is open and its reset time has passed.

        Called from the invalidation listener's thread, so a layer comes back (and
        its journal is replayed) even when every read is served by L1.
        """
        breaker = self.breaker
        if breaker.state is not CLOSED and breaker.request_probe() and breaker.state is not CLOSED:
            self._probe_and_repair()

    def _probe_and_repair(self) -> bool:
        try:
            self._probe()
            self._repair()
        except Exception as exc:
            with self._lock:
                self.errors += 1
                self._repairing = False
            self.breaker.record_failure()
            logger.debug("mpai cache: layer %r still unavailable: %r", self.name, exc)
            return False
        return True

    def _probe(self) -> None:
        if self.is_database:
            alias = router.db_for_write(self.backend.cache_model_class)  # type: ignore[attr-defined]
            connection = connections[alias]
            if not connection.in_atomic_block and connection.errors_occurred:
                connection.close_if_unusable_or_obsolete()
        self.backend.get(PROBE_KEY)

    def _repair(self) -> None:
        """Replay a missed clear and delete the journaled keys, then close the breaker."""
        with self._lock:
            self._repairing = True
        repaired: list[str] = []
        cleared = False
        while True:
            with self._lock:
                keys = list(self._journal)
                self._journal.clear()
                clear, self._pending_clear = self._pending_clear, False
                if not keys and not clear:
                    seconds = self.breaker.close()
                    self._repairing = False
                    skipped, self._skipped_since_open = self._skipped_since_open, 0
                    lost, self._journal_lost = self._journal_lost, 0
                    break
            try:
                if clear:
                    self.backend.clear()
                    cleared = True
                for start in range(0, len(keys), _DELETE_CHUNK):
                    self.backend.delete_many(keys[start : start + _DELETE_CHUNK])
            except Exception:
                with self._lock:
                    for key in keys:
                        self._journal[key] = None
                    self._pending_clear = self._pending_clear or (clear and not cleared)
                raise
            repaired += keys
        logger.warning(
            "mpai cache: layer %r is available again after %.1f s (%d calls skipped, %d keys "
            "repaired%s)",
            self.name,
            seconds,
            skipped,
            len(repaired),
            f", {lost} keys beyond JOURNAL_MAX may be stale until they expire" if lost else "",
        )
        if self.on_repaired is not None and (repaired or cleared):
            self.on_repaired(repaired, cleared)

    def _remember(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        with self._lock:
            if self.breaker.state is not CLOSED or self._repairing:
                self._journal_add(keys)
                return
        # The layer failed this write but is not (or no longer) considered down:
        # drop the keys now so it cannot keep serving the old values.
        try:
            self.backend.delete_many(keys)
        except Exception as exc:
            self._failed(exc)
            with self._lock:
                self._journal_add(keys)

    def _journal_add(self, keys: list[str]) -> None:
        journal = self._journal
        for key in keys:
            journal[key] = None
            journal.move_to_end(key)
        while len(journal) > self._journal_max:
            journal.popitem(last=False)
            self._journal_lost += 1

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
        if is_outage(exc):
            if self.breaker.record_failure():
                logger.warning(
                    "mpai cache: layer %r is unavailable (%s: %s); skipping it, probing every "
                    "%.1f s",
                    self.name,
                    type(exc).__name__,
                    exc,
                    self.breaker.reset_timeout,
                )
            return
        if type(exc) not in self._logged:
            self._logged.add(type(exc))
            logger.warning(
                "mpai cache: layer %r raised %s: %s (counted as an error; logged once per type)",
                self.name,
                type(exc).__name__,
                exc,
            )

    def _slow(self, elapsed: float) -> None:
        with self._lock:
            self.slow += 1
        if self.breaker.record_failure():
            logger.warning(
                "mpai cache: layer %r is too slow (%.3f s > SLOW_CALL %.3f s); skipping it, "
                "probing every %.1f s",
                self.name,
                elapsed,
                self.spec.slow_call,
                self.breaker.reset_timeout,
            )
