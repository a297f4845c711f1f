"""Stampede protection: many callers miss one key at once, the callable runs once."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, connections

from mpai.cache.stampede import LOCK_SUFFIX
from tests.cache.conftest import layered_params
from tests.cache.worker import Peer
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def run_threads(count: int, target: Callable[[], Any]) -> list[Any]:
    """Start ``count`` threads together; return their results (or exceptions)."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = target()
        except Exception as exc:
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_threads_missing_the_same_key_compute_it_once(configure: Any) -> None:
    cache = configure()
    calls: list[int] = []
    release = threading.Event()

    def compute() -> dict[str, int]:
        calls.append(1)
        release.wait(0.3)  # hold the computation so every thread misses meanwhile
        return {"answer": 42}

    results = run_threads(16, lambda: cache.get_or_set("k", compute, 300))
    assert len(calls) == 1
    assert results == [{"answer": 42}] * 16
    stats = cache.stampede_stats()
    assert stats["computed"] == 1
    assert stats["waited"] + stats["stale"] == 15


def test_in_process_waiters_get_the_leaders_exception(configure: Any) -> None:
    cache = configure()
    calls: list[int] = []

    def compute() -> Any:
        calls.append(1)
        threading.Event().wait(0.2)
        raise RuntimeError("the provider is down")

    results = run_threads(8, lambda: cache.get_or_set("k", compute, 300))
    assert len(calls) == 1
    assert all(isinstance(result, RuntimeError) for result in results)
    assert cache.get("k") is None


def test_processes_missing_the_same_key_compute_it_once(
    redis_db: str, cache_table: str, raw_redis: Any
) -> None:
    params = layered_params(redis_db, cache_table, prefix=f"st-{uuid.uuid4().hex[:8]}")
    config = {"location": redis_db, "params": params, "db_name": connection.settings_dict["NAME"]}
    peers = [Peer(config) for _ in range(4)]
    try:
        for peer in peers:
            peer.send(
                op="compute_once", key="k", redis=redis_db, counter="calls", go="go", sleep=0.5
            )
        raw_redis.set("go", 1)  # release them together
        answers = [peer.read(60.0) for peer in peers]
        assert int(raw_redis.get("calls")) == 1
        assert len({answer["value"] for answer in answers}) == 1
        waits = [peer.request(op="stats")["stampede"] for peer in peers]
        assert sum(stats["computed"] for stats in waits) == 1
    finally:
        for peer in peers:
            peer.close()


def test_a_stale_value_is_served_while_another_caller_computes(configure: Any) -> None:
    cache = configure(STALE_TIMEOUT=60)
    cache.set("k", "old", 0.3)
    assert cache.get("k") == "old"  # now in L1
    wait_until(lambda: cache.get("k") is None)
    started, release = threading.Event(), threading.Event()
    results: list[Any] = []

    def compute() -> str:
        started.set()
        release.wait(10)
        return "new"

    def lead() -> None:
        try:
            results.append(cache.get_or_set("k", compute, 300))
        finally:
            connections.close_all()

    leader = threading.Thread(target=lead)
    leader.start()
    try:
        assert started.wait(10)
        assert cache.get_or_set("k", lambda: pytest.fail("computed twice")) == "old"
        assert cache.stampede_stats()["stale"] == 1
    finally:
        release.set()
        leader.join(30)
    assert results == ["new"]
    assert cache.get("k") == "new"


def test_a_deleted_value_is_never_served_stale(configure: Any) -> None:
    cache = configure(STALE_TIMEOUT=60)
    cache.set("k", "old", 300)
    cache.get("k")
    cache.delete("k")
    assert cache.stack.store.get_stale(cache.make_key("k")) is None
    assert cache.get_or_set("k", lambda: "fresh", 300) == "fresh"


def test_a_caller_waits_for_another_process_that_holds_the_lock(configure: Any) -> None:
    cache = configure(LOCK_TIMEOUT=10)
    lock_key = cache.make_key("k") + LOCK_SUFFIX
    redis_layer = cache.stack.layers[0]
    assert redis_layer.lock_add(lock_key, "another-process", 10) is True

    def other_process_finishes() -> None:
        threading.Event().wait(0.3)
        cache.set("k", "theirs", 300)  # the other process stores its value...
        redis_layer.backend.delete(lock_key)  # ...and releases its lock

    finisher = threading.Thread(target=other_process_finishes)
    finisher.start()
    try:
        assert cache.get_or_set("k", lambda: pytest.fail("computed while locked"), 300) == (
            "theirs"
        )
        assert cache.stampede_stats()["remote_waits"] >= 1
    finally:
        finisher.join(30)
        connections.close_all()


def test_a_lock_left_by_a_dead_process_delays_at_most_lock_timeout(configure: Any) -> None:
    cache = configure(LOCK_TIMEOUT=0.5)
    lock_key = cache.make_key("k") + LOCK_SUFFIX
    redis_layer = cache.stack.layers[0]
    assert redis_layer.lock_add(lock_key, "dead-process", 0.5) is True
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return "computed"

    assert cache.get_or_set("k", compute, 300) == "computed"
    assert calls == [1]


def test_async_callers_compute_once(configure: Any) -> None:
    cache = configure()
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return "value"

    async def callers() -> list[Any]:
        return await asyncio.gather(*(cache.aget_or_set("k", compute, 300) for _ in range(10)))

    # async_to_sync: the layers' sync_to_async I/O runs in this thread (see test_contract).
    assert async_to_sync(callers)() == ["value"] * 10
    assert calls == [1]
