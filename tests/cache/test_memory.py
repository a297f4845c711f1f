"""L1: bounded LRU by entries and bytes, expiry, copies, races, threads and asyncio."""

from __future__ import annotations

import asyncio
import pickle
import random
import threading
import time
from typing import Any

import pytest

from mpai.cache import LayeredCache
from mpai.cache.memory import ENTRY_OVERHEAD, MemoryStore
from tests.waiting import wait_until

MEMORY_ONLY = {"LAYERS": [{"NAME": "memory", "BACKEND": "mpai.cache.memory.MemoryStore"}]}


def payload(value: Any) -> bytes:
    return pickle.dumps(value)


def test_lru_evicts_least_recently_used_by_entries() -> None:
    store = MemoryStore(max_entries=3)
    for key in "abc":
        store.store(key, payload(key), None)
    assert store.get("a") is not None  # a is now the most recently used
    store.store("d", payload("d"), None)
    assert store.get("b") is None
    assert {key for key in "acd" if store.get(key) is not None} == {"a", "c", "d"}
    assert store.evictions == 1


def test_bounded_by_bytes() -> None:
    item = payload("x" * 1000)
    size = len(item) + 1 + ENTRY_OVERHEAD
    store = MemoryStore(max_entries=100, max_bytes=3 * size)
    for key in "abcd":
        store.store(key, item, None)
    assert len(store) == 3
    assert store.nbytes == 3 * size
    assert store.get("a") is None


def test_values_larger_than_max_item_bytes_are_not_kept() -> None:
    store = MemoryStore(max_item_bytes=100)
    store.store("small", payload("s"), None)
    store.store("small", payload("x" * 500), None)  # replaces, then is too large
    assert store.get("small") is None
    assert store.nbytes == 0


def test_expiry_follows_the_wall_clock_expiry_and_the_cap() -> None:
    store = MemoryStore()
    store.store("past", payload(1), time.time() - 1)
    assert store.get("past") is None
    store.store("capped", payload(1), time.time() + 3600, cap=0.05)
    wait_until(lambda: store.get("capped") is None, timeout=5)


def test_stale_entries_are_served_only_by_get_stale_and_never_after_invalidation() -> None:
    store = MemoryStore(stale_seconds=60)
    store.store("k", payload("old"), time.time() + 0.05)
    wait_until(lambda: store.get("k") is None, timeout=5)
    assert store.peek("k") is None
    assert store.get_stale("k") == payload("old")
    store.invalidate(["k"])
    assert store.get_stale("k") is None


def test_a_fill_that_raced_with_an_invalidation_is_dropped() -> None:
    store = MemoryStore()
    generation = store.generation  # a reader misses L1 and asks a slower layer...
    store.invalidate(["k"])  # ...meanwhile another process changes the key
    assert store.fill("k", payload("old"), None, generation) is False
    assert store.get("k") is None
    assert store.fill("other", payload("v"), None, generation) is True  # other keys fill
    assert store.fill("k", payload("new"), None, store.generation) is True


def test_a_fill_older_than_the_remembered_invalidations_is_dropped() -> None:
    store = MemoryStore(recent_invalidations=2)
    generation = store.generation
    store.invalidate(["a", "b", "c"])  # "a" is forgotten: the floor moves past it
    assert store.fill("z", payload(1), None, generation) is False
    generation = store.generation
    store.clear()
    assert store.fill("z", payload(1), None, generation) is False


def test_add_only_when_absent() -> None:
    store = MemoryStore()
    assert store.add("k", payload(1), None) is True
    assert store.add("k", payload(2), None) is False
    assert pickle.loads(store.get("k") or b"") == 1


def test_zero_entries_disables_the_store() -> None:
    store = MemoryStore(max_entries=0)
    store.store("k", payload(1), None)
    assert store.get("k") is None


def test_mutating_a_returned_object_does_not_change_the_cache() -> None:
    cache = LayeredCache("", {"OPTIONS": MEMORY_ONLY, "KEY_PREFIX": "copies"})
    cache.set("k", {"list": [1]})
    cache.get("k")["list"].append(2)
    assert cache.get("k") == {"list": [1]}
    value = {"list": [1]}
    cache.set("k2", value)
    value["list"].append(2)  # mutating the original after set does not either
    assert cache.get("k2") == {"list": [1]}


def test_threads_hammering_one_store_keep_it_consistent() -> None:
    store = MemoryStore(max_entries=50, max_bytes=20_000)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                key = f"k{rng.randrange(80)}"
                action = rng.random()
                if action < 0.4:
                    store.store(key, payload("v" * rng.randrange(1, 300)), time.time() + 10)
                elif action < 0.8:
                    value = store.get(key)
                    assert value is None or pickle.loads(value)[0] in "vf"
                elif action < 0.9:
                    store.fill(key, payload("f"), None, store.generation)
                else:
                    store.invalidate([key])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store) <= 50
    assert store.nbytes <= 20_000
    with store._lock:
        assert store.nbytes == sum(entry.size for entry in store._data.values())


async def test_many_tasks_share_the_l1_without_thread_hops() -> None:
    cache = LayeredCache("", {"OPTIONS": MEMORY_ONLY, "KEY_PREFIX": "tasks"})

    async def task(number: int) -> None:
        for round_ in range(50):
            await cache.aset(f"k{number % 5}", [number, round_])
            value = await cache.aget(f"k{number % 5}")
            assert isinstance(value, list)
            value.append("mutated")
            await asyncio.sleep(0)

    await asyncio.gather(*(task(number) for number in range(40)))
    for number in range(5):
        value = await cache.aget(f"k{number}")
        assert len(value) == 2


def test_stats_count_hits_misses_and_sizes() -> None:
    store = MemoryStore()
    store.store("k", payload(1), None)
    store.get("k")
    store.get("nope")
    snapshot = store.snapshot()
    assert snapshot["hits"] == 1
    assert snapshot["misses"] == 1
    assert snapshot["entries"] == 1
    assert snapshot["bytes"] == len(payload(1)) + 1 + ENTRY_OVERHEAD


@pytest.mark.parametrize("bad", [-1])
def test_negative_sizes_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        MemoryStore(max_entries=bad)
