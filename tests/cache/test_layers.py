"""Read-through order, fills with the remaining lifetime, write-all, stats, config."""

from __future__ import annotations

import pickle
import time
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from mpai.cache import LayeredCache
from mpai.cache.layers import SharedLayer

pytestmark = pytest.mark.django_db


def layer(cache: LayeredCache, name: str) -> SharedLayer:
    return next(layer for layer in cache.stack.layers if layer.name == name)


def envelope(value: Any, lifetime: float | None) -> tuple[float | None, bytes]:
    expires = None if lifetime is None else time.time() + lifetime
    return expires, pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


def l1_lifetime(cache: LayeredCache, key: str) -> float:
    full = cache.make_key(key)
    with cache.stack.store._lock:
        return cache.stack.store._data[full].expires - time.monotonic()


def test_an_l3_hit_fills_l2_and_l1_with_the_remaining_lifetime(
    configure: Any, raw_redis: Any
) -> None:
    cache = configure()  # TIMEOUT is Django's default, 300 s
    full = cache.make_key("k")
    # Only the database holds the entry, with 20 s left (its row says one hour).
    layer(cache, "database").backend.set(full, envelope("from-db", 20), 3600)
    assert cache.get("k") == "from-db"
    assert 15_000 < raw_redis.pttl(full) <= 20_000
    assert 15 < l1_lifetime(cache, "k") <= 20
    stats = cache.stats()
    assert stats["database"]["hits"] == 1
    assert stats["redis"]["misses"] == 1


def test_an_l2_hit_fills_l1_with_the_remaining_lifetime(configure: Any) -> None:
    cache = configure()
    full = cache.make_key("k")
    layer(cache, "redis").backend.set(full, envelope("from-redis", 12), 3600)
    assert cache.get("k") == "from-redis"
    assert 8 < l1_lifetime(cache, "k") <= 12
    assert cache.stats()["database"]["hits"] == 0


def test_a_forever_entry_fills_forever(configure: Any, raw_redis: Any) -> None:
    cache = configure()
    full = cache.make_key("k")
    layer(cache, "database").backend.set(full, envelope("forever", None), None)
    assert cache.get("k") == "forever"
    assert raw_redis.pttl(full) == -1
    assert l1_lifetime(cache, "k") == float("inf")


def test_an_expired_envelope_is_a_miss_even_if_the_layer_still_holds_it(configure: Any) -> None:
    cache = configure()
    full = cache.make_key("k")
    layer(cache, "database").backend.set(full, envelope("old", -1), 3600)
    assert cache.get("k") is None
    assert cache.has_key("k") is False


def test_a_fill_never_overwrites_a_newer_value_in_a_faster_layer(configure: Any) -> None:
    cache = configure()
    full = cache.make_key("k")
    layer(cache, "redis").backend.set(full, envelope("new", 60), 60)
    cache.stack._fill_shared(full, envelope("old", 60), [layer(cache, "redis")])
    cache.stack.store.clear()
    assert cache.get("k") == "new"


def test_reads_go_fastest_layer_first(configure: Any) -> None:
    cache = configure()
    cache.set("k", "v")
    before = cache.stats()
    for _ in range(5):
        assert cache.get("k") == "v"
    after = cache.stats()
    assert after["memory"]["hits"] == before["memory"]["hits"] + 5
    assert after["redis"]["hits"] == before["redis"]["hits"]
    assert after["database"]["hits"] == before["database"]["hits"]


def test_writes_and_deletes_reach_every_layer(configure: Any, raw_redis: Any) -> None:
    cache = configure()
    database = layer(cache, "database").backend
    cache.set("k", "v", 100)
    full = cache.make_key("k")
    assert cache.stack.store.peek(full) is not None
    assert raw_redis.exists(full) == 1
    assert database.get(full)[1] == pickle.dumps("v", pickle.HIGHEST_PROTOCOL)
    assert cache.delete("k") is True
    assert cache.stack.store.peek(full) is None
    assert raw_redis.exists(full) == 0
    assert database.get(full) is None

    cache.set_many({"a": 1, "b": 2})
    keys = [cache.make_key("a"), cache.make_key("b")]
    assert raw_redis.exists(*keys) == 2
    assert set(database.get_many(keys)) == set(keys)
    cache.delete_many(["a", "b"])
    assert raw_redis.exists(*keys) == 0
    assert database.get_many(keys) == {}

    assert cache.add("c", 3) is True
    assert raw_redis.exists(cache.make_key("c")) == 1
    assert database.get(cache.make_key("c")) is not None


def test_add_sees_a_value_only_a_slower_layer_holds(configure: Any) -> None:
    cache = configure()
    full = cache.make_key("k")
    layer(cache, "database").backend.set(full, envelope("db-only", 60), 60)
    assert cache.add("k", "other") is False
    assert cache.get("k") == "db-only"


def test_stats_shape(configure: Any) -> None:
    cache = configure()
    cache.set("k", "v")
    cache.get("k")
    cache.get("missing")
    stats = cache.stats()
    assert list(stats) == ["memory", "redis", "database"]
    assert stats["memory"]["listener"] == "connected"
    assert stats["memory"]["hits"] >= 1
    assert stats["memory"]["misses"] >= 1
    for name in ("redis", "database"):
        assert {"hits", "misses", "errors", "skipped", "slow", "state", "outages"} <= set(
            stats[name]
        )
        assert stats[name]["state"] == "closed"
        assert stats[name]["misses"] >= 1


def test_a_stack_without_redis_serves_from_memory_and_database(configure: Any) -> None:
    cache = configure(redis=False)
    cache.set("k", "v")
    cache.stack.store.clear()
    assert cache.get("k") == "v"
    stats = cache.stats()
    assert list(stats) == ["memory", "database"]
    assert stats["memory"]["listener"] == "none"


def test_the_default_stack(redis_db: str, cache_table: str) -> None:
    cache = LayeredCache(redis_db, {"KEY_PREFIX": "default-stack"})
    try:
        assert list(cache.stats()) == ["memory", "redis", "database"]
        assert layer(cache, "database").backend._table == "mpai_cache"  # type: ignore[attr-defined]
        redis_options = layer(cache, "redis").spec.options
        assert redis_options["SOCKET_TIMEOUT"] == 0.25
        assert redis_options["IGNORE_EXCEPTIONS"] is False
        assert cache.wait_ready(10)
        cache.set("k", "v")
        assert cache.get("k") == "v"
    finally:
        cache.clear()
    without_redis = LayeredCache("", {"KEY_PREFIX": "default-stack"})
    assert list(without_redis.stats()) == ["memory", "database"]


def test_a_layer_may_reuse_a_caches_entry(settings: Any, redis_db: str, cache_table: str) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "mpai_db": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": cache_table,
        },
    }
    cache = LayeredCache(
        "",
        {
            "OPTIONS": {
                "LAYERS": [
                    {"NAME": "memory", "BACKEND": "mpai.cache.memory.MemoryStore"},
                    {"NAME": "db", "ALIAS": "mpai_db", "SLOW_CALL": 2.0},
                ]
            }
        },
    )
    assert layer(cache, "db").backend._table == cache_table  # type: ignore[attr-defined]
    assert layer(cache, "db").spec.slow_call == 2.0


@pytest.mark.parametrize(
    "options",
    [
        {"LAYER": []},
        {"LAYERS": []},
        {
            "LAYERS": [
                {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
                {"BACKEND": "mpai.cache.memory.MemoryStore"},
            ]
        },
        {
            "LAYERS": [
                {"NAME": "a", "BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
                {"NAME": "a", "BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            ]
        },
        {"LAYERS": [{"NAME": "x", "ALIAS": "no-such-alias"}]},
        {"LAYERS": [{"BACKEND": "mpai.cache.memory.MemoryStore", "OPTIONS": {"MAX_SIZE": 1}}]},
        {"LAYERS": [{"BACKEND": "mpai.cache.memory.MemoryStore", "OPTIONS": {"MAX_BYTES": -1}}]},
        {"BREAKER_RESET": "soon"},
        {"MAX_ENTRIES": 10},
        {"LAYERS": [{"BACKEND": "no.such.Backend"}]},
    ],
)
def test_bad_options_raise_improperly_configured(options: dict[str, Any]) -> None:
    with pytest.raises(ImproperlyConfigured):
        LayeredCache("", {"OPTIONS": options})


def test_any_django_backend_can_be_a_layer() -> None:
    cache = LayeredCache(
        "",
        {
            "KEY_PREFIX": "locmem-layer",
            "OPTIONS": {
                "LAYERS": [
                    {"NAME": "memory", "BACKEND": "mpai.cache.memory.MemoryStore"},
                    {
                        "NAME": "locmem",
                        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                        "LOCATION": "mpai-layer-test",
                    },
                ]
            },
        },
    )
    cache.set("k", {"v": 1}, 30)
    cache.stack.store.clear()
    assert cache.get("k") == {"v": 1}
    assert cache.stats()["locmem"]["hits"] == 1
