"""Failing soft: Redis stopped and started, Redis hanging, the database down or slow.

Redis outages use the suite's private server (``redis_server.stop()/start()``, and
SIGSTOP/SIGCONT for a server that hangs); the database outage is simulated, since the
machine's PostgreSQL is shared.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.core.cache import caches
from django.db import OperationalError, connections

from mpai.cache import LayeredCache
from mpai.cache.layers import SharedLayer
from tests.cache.conftest import layered_params
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db

OUTAGE_OPTIONS = {
    "BREAKER_RESET": 0.2,
    "INVALIDATION_PING": 0.1,
    "INVALIDATION_TIMEOUT": 0.5,
    "DEGRADED_L1_TIMEOUT": 0.5,
}


def layer(cache: LayeredCache, name: str) -> SharedLayer:
    return next(layer for layer in cache.stack.layers if layer.name == name)


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


@contextmanager
def database_down(cache: LayeredCache, calls: list[str] | None = None) -> Iterator[None]:
    """Make the database layer's backend raise OperationalError on every call."""
    backend = layer(cache, "database").backend
    names = ["get", "get_many", "set", "set_many", "add", "delete", "delete_many", "clear"]

    def failing(name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            if calls is not None:
                calls.append(name)
            raise OperationalError("connection to server failed: Connection refused")

        return fail

    for name in names:
        setattr(backend, name, failing(name))
    try:
        yield
    finally:
        for name in names:
            delattr(backend, name)


def test_redis_stopped_and_started_during_a_run(
    configure: Any, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mpai.cache")
    cache = configure(**OUTAGE_OPTIONS)
    cache.set("k", "v", 300)
    cache.set("counter", 1, 300)
    redis_server.stop()
    try:
        for i in range(30):  # nothing raises, values keep coming back
            assert cache.get("k") == "v"
            cache.set(f"during-{i}", i, 300)
            assert cache.get(f"during-{i}") == i
            assert cache.has_key("k") is True
        assert cache.incr("counter") == 2
        assert cache.get_or_set("computed", lambda: "x", 300) == "x"
        assert cache.add("added", 1, 300) is True
        assert cache.add("added", 2, 300) is False
        assert cache.delete("during-0") is True
        assert cache.get_many(["k", "during-1"]) == {"k": "v", "during-1": 1}
        wait_until(lambda: cache.stats()["memory"]["listener"] == "down")

        cache.stack.store.clear()  # without L1, the database answers
        database_hits = cache.stats()["database"]["hits"]
        assert cache.get("k") == "v"
        assert cache.get("during-5") == 5
        assert cache.stats()["database"]["hits"] == database_hits + 2

        redis = cache.stats()["redis"]
        assert redis["state"] in {"open", "half_open"}
        assert redis["errors"] >= 2  # an outage is counted as errors, not misses
        assert redis["skipped"] > 0
        assert redis["outages"] == 1
        assert len(messages(caplog, "layer 'redis' is unavailable")) == 1
    finally:
        redis_server.start()

    wait_until(lambda: cache.get("k") == "v" and cache.stats()["redis"]["state"] == "closed")
    wait_until(lambda: cache.stats()["memory"]["listener"] == "connected")
    assert len(messages(caplog, "layer 'redis' is available again")) == 1
    # Redis came back empty; it is used again and refilled from the database.
    cache.stack.store.clear()
    assert cache.get("during-7") == 7
    hits = cache.stats()["redis"]["hits"]
    cache.stack.store.clear()
    assert cache.get("during-7") == 7
    assert cache.stats()["redis"]["hits"] == hits + 1
    assert cache.get("counter") == 2


def test_l1_entries_are_short_lived_while_the_listener_is_down(
    configure: Any, redis_server: Any
) -> None:
    cache = configure(**OUTAGE_OPTIONS)
    redis_server.stop()
    try:
        wait_until(lambda: cache.stats()["memory"]["listener"] == "down")
        cache.set("k", "v", 300)
        full = cache.make_key("k")
        with cache.stack.store._lock:
            lifetime = cache.stack.store._data[full].expires - time.monotonic()
        assert lifetime <= OUTAGE_OPTIONS["DEGRADED_L1_TIMEOUT"]
        assert cache.get("k") == "v"  # served by L1 or, once expired there, the database
    finally:
        redis_server.start()
    wait_until(lambda: cache.stats()["memory"]["listener"] == "connected")
    cache.set("k", "v", 300)
    with cache.stack.store._lock:
        lifetime = cache.stack.store._data[cache.make_key("k")].expires - time.monotonic()
    assert lifetime > 200


def test_writes_missed_by_a_hanging_redis_are_repaired_when_it_returns(
    configure: Any, redis_server: Any, raw_redis: Any
) -> None:
    cache = configure(**OUTAGE_OPTIONS)
    cache.set("k", "old", 300)
    full = cache.make_key("k")
    os.kill(redis_server.process.pid, signal.SIGSTOP)  # Redis hangs: calls time out
    try:
        cache.set("k", "new", 300)
        wait_until(lambda: cache.get("k") == "new" and cache.stats()["redis"]["state"] != "closed")
        assert cache.stats()["redis"]["journal"] >= 1
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    # Redis still holds "old": it must be deleted before the layer is read again. The
    # listener probes the layer, so this happens even though L1 serves every read.
    wait_until(lambda: cache.stats()["redis"]["state"] == "closed")
    assert cache.get("k") == "new"
    assert cache.stats()["redis"]["journal"] == 0
    cache.stack.store.clear()
    assert cache.get("k") == "new"
    value = raw_redis.get(full)  # refilled from the database, with the new value
    client = layer(cache, "redis").backend.client  # type: ignore[attr-defined]
    assert pickle.loads(client.decode(value)[1]) == "new"


def test_database_down(configure: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mpai.cache")
    cache = configure(**OUTAGE_OPTIONS)
    cache.set("k", "old", 300)
    full = cache.make_key("k")
    database = layer(cache, "database")
    with database_down(cache):
        cache.set("k", "new", 300)
        for i in range(10):
            cache.set(f"k{i}", i, 300)
            cache.stack.store.clear()
            assert cache.get(f"k{i}") == i  # from Redis
        assert cache.get("k") == "new"
        stats = cache.stats()["database"]
        assert stats["state"] in {"open", "half_open"}
        assert stats["skipped"] > 0
        assert stats["journal"] >= 1
        assert len(messages(caplog, "layer 'database' is unavailable")) == 1
    # Back: the row with "old" is deleted before the layer is used again.
    wait_until(
        lambda: cache.get("nothing") is None and cache.stats()["database"]["state"] == "closed"
    )
    assert database.backend.get(full) is None
    assert cache.stats()["database"]["journal"] == 0
    assert len(messages(caplog, "layer 'database' is available again")) == 1


def test_a_slow_layer_is_skipped_without_waiting_on_it(configure: Any) -> None:
    cache = configure(SLOW_CALL=0.05, BREAKER_RESET=60.0)
    backend = layer(cache, "database").backend
    calls: list[str] = []
    original = backend.get_many

    def slow_get_many(*args: Any, **kwargs: Any) -> Any:
        calls.append("get_many")
        time.sleep(0.1)
        return original(*args, **kwargs)

    backend.get_many = slow_get_many  # type: ignore[method-assign]
    try:
        for i in range(10):
            assert cache.get(f"missing-{i}") is None
    finally:
        del backend.get_many
    stats = cache.stats()["database"]
    assert len(calls) == 2  # BREAKER_FAILURES: then the layer is skipped
    assert stats["slow"] == 2
    assert stats["state"] == "open"
    assert stats["skipped"] == 8


def test_with_every_shared_layer_down_l1_keeps_serving(configure: Any, redis_server: Any) -> None:
    cache = configure(**{**OUTAGE_OPTIONS, "DEGRADED_L1_TIMEOUT": 60.0})
    redis_server.stop()
    try:
        with database_down(cache):
            cache.set("k", {"v": 1}, 300)
            assert cache.get("k") == {"v": 1}
            assert cache.add("k", 2) is False
            assert cache.add("new", 2) is True
            assert cache.incr("new", 3) == 5
            assert cache.touch("new", 100) is True
            assert cache.get_or_set("computed", lambda: "x") == "x"
            assert cache.delete("k") is True
            assert cache.get("k") is None
            cache.clear()
            assert cache.get("new") is None
    finally:
        redis_server.start()
    wait_until(lambda: cache.get("x") is None and cache.stats()["redis"]["state"] == "closed")


def test_a_bad_value_for_one_layer_does_not_open_its_breaker(configure: Any) -> None:
    cache = configure()
    backend = layer(cache, "database").backend

    def broken_set(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("this one value is bad")

    backend.set = broken_set  # type: ignore[method-assign]
    try:
        for i in range(5):
            cache.set(f"k{i}", i)
    finally:
        del backend.set
    stats = cache.stats()["database"]
    assert stats["errors"] == 5
    assert stats["state"] == "closed"
    assert cache.get("k3") == 3


# -- a hung Redis: it accepts connections and never answers (SIGSTOP) -------------------


@contextmanager
def redis_hung(redis_server: Any) -> Iterator[None]:
    """Stop the private server's process: connections are accepted by the kernel and
    every command times out, until SIGCONT."""
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)


def in_thread(fn: Any, timeout: float) -> Any:
    """Run ``fn`` in a daemon thread; return its result, or fail after ``timeout`` s."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(fn())
        finally:
            connections.close_all()  # this thread's database connection

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert result, f"no answer within {timeout} s"
    return result[0]


@contextmanager
def recorded_calls(backend: Any) -> Iterator[list[tuple[str, str]]]:
    """Record ``(method, thread name)`` for every call to ``backend``'s main methods."""
    calls: list[tuple[str, str]] = []
    names = ["get", "get_many", "set", "set_many", "add", "delete", "delete_many"]

    def recording(name: str) -> Any:
        original = getattr(backend, name)

        def record(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, threading.current_thread().name))
            return original(*args, **kwargs)

        return record

    for name in names:
        setattr(backend, name, recording(name))
    try:
        yield calls
    finally:
        for name in names:
            delattr(backend, name)


# The Redis layer as django-redis (the default) and as Django's own RedisCache, both
# with the timeouts the layered cache gives a Redis layer that sets none.
REDIS_BACKENDS = {
    "django_redis": "django_redis.cache.RedisCache",
    "django": "django.core.cache.backends.redis.RedisCache",
}


@pytest.mark.django_db(transaction=True)  # the reads run in a thread of their own
@pytest.mark.parametrize("backend", list(REDIS_BACKENDS))
def test_a_key_held_by_the_database_is_read_from_it_while_redis_hangs(
    settings: Any, redis_db: str, cache_table: str, redis_server: Any, backend: str
) -> None:
    params = layered_params(redis_db, cache_table, f"hung-{backend}", **OUTAGE_OPTIONS)
    params["OPTIONS"]["LAYERS"][1] = {
        "NAME": "redis",
        "BACKEND": REDIS_BACKENDS[backend],
        "LOCATION": redis_db,
    }
    settings.CACHES = {"default": params}
    cache = caches["default"]
    assert cache.wait_ready(10.0)
    cache.set("k", "v", 300)
    cache.set_many({"a": 1, "b": 2}, 300)
    with redis_hung(redis_server):
        cache.stack.store.clear()  # L1 cannot answer: Redis, then the database
        # Redis hangs until the end of the block; the reads must not wait for it.
        assert in_thread(lambda: cache.get("k"), 10.0) == "v"
        assert in_thread(lambda: cache.get_many(["a", "b", "missing"]), 10.0) == {"a": 1, "b": 2}
        assert in_thread(lambda: cache.has_key("k"), 10.0) is True
        stats = cache.stats()
    assert stats["redis"]["errors"] >= 1  # the hang is counted as errors, not misses
    assert stats["redis"]["hits"] == stats["redis"]["misses"] == 0
    assert stats["database"]["hits"] == 4


def test_a_read_that_finds_redis_hanging_does_not_also_try_to_fill_it(
    configure: Any, redis_server: Any
) -> None:
    cache = configure(**{**OUTAGE_OPTIONS, "BREAKER_FAILURES": 5})
    cache.set("k", "v", 300)
    redis = layer(cache, "redis")
    with redis_hung(redis_server), recorded_calls(redis.backend) as calls:
        cache.stack.store.clear()
        assert cache.get("k") == "v"  # from the database
    # One timeout, not two: the value found in the database is not copied into the
    # layer that has just failed this very read.
    assert calls == [("get", threading.current_thread().name)]
    assert cache.stats()["redis"]["errors"] == 1


def test_once_the_breaker_opens_reads_skip_a_hanging_redis_and_it_is_probed_elsewhere(
    configure: Any, redis_server: Any
) -> None:
    cache = configure(**OUTAGE_OPTIONS)
    for i in range(5):
        cache.set(f"k{i}", i, 300)
    redis = layer(cache, "redis")
    reader = threading.current_thread().name
    with redis_hung(redis_server):

        def read_all() -> bool:
            for i in range(5):
                cache.stack.store.clear()
                assert cache.get(f"k{i}") == i
            return cache.stats()["redis"]["state"] != "closed"

        wait_until(read_all, what="the Redis breaker to open")
        skipped = cache.stats()["redis"]["skipped"]
        reads = 0
        with recorded_calls(redis.backend) as calls:

            def probed_twice() -> bool:
                nonlocal reads
                for i in range(5):
                    cache.stack.store.clear()
                    assert cache.get(f"k{i}") == i
                    reads += 1
                # Each BREAKER_RESET (0.2 s) one probe of the hanging layer is due.
                return sum(1 for name, _ in calls if name == "get") >= 2

            wait_until(probed_twice, what="two probes of the hanging Redis layer")
        stats = cache.stats()["redis"]
    # The probes ran, but never on the reading thread: no read waited on the socket
    # timeout, each one skipped the layer and was answered by the database.
    assert calls
    assert all(thread != reader for _, thread in calls)
    assert stats["state"] in {"open", "half_open"}
    assert stats["skipped"] >= skipped + reads
    assert stats["outages"] == 1
    wait_until(lambda: cache.get("k0") == 0 and cache.stats()["redis"]["state"] == "closed")
