"""The Django cache contract, ported from Django's ``tests/cache/tests.py`` BaseCacheTests.

Run against the full stack (memory, django-redis on the private server, Django's
DatabaseCache on PostgreSQL). Where Django's tests sleep for a fixed time, these wait
for the condition with a deadline, or check the stored lifetime directly.
"""

from __future__ import annotations

import pickle
import re
import time
from typing import Any
from unittest import mock
from zlib import compress, decompress

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.cache import CacheKeyWarning, caches
from django.http import HttpResponse
from django.middleware.cache import FetchFromCacheMiddleware, UpdateCacheMiddleware
from django.test import RequestFactory

from mpai.cache import LayeredCache
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db

KEY_ERRORS_WITH_MEMCACHED_MSG = (
    "Cache key contains characters that will cause errors if used with memcached: %r"
)


def f() -> int:
    return 42


class C:
    def m(self) -> int:
        return 24


class Unpicklable:
    def __getstate__(self) -> Any:
        raise pickle.PickleError()


@pytest.fixture
def cache(configure: Any) -> LayeredCache:
    return configure()


def test_simple(cache: LayeredCache) -> None:
    cache.set("key", "value")
    assert cache.get("key") == "value"


def test_default_used_when_none_is_set(cache: LayeredCache) -> None:
    cache.set("key_default_none", None)
    assert cache.get("key_default_none", default="default") is None


def test_add(cache: LayeredCache) -> None:
    assert cache.add("addkey1", "value") is True
    assert cache.add("addkey1", "newvalue") is False
    assert cache.get("addkey1") == "value"


def test_prefix(cache: LayeredCache) -> None:
    cache.set("somekey", "value")
    assert caches["prefix"].has_key("somekey") is False
    caches["prefix"].set("somekey", "value2")
    assert cache.get("somekey") == "value"
    assert caches["prefix"].get("somekey") == "value2"


def test_non_existent(cache: LayeredCache) -> None:
    assert cache.get("does_not_exist") is None
    assert cache.get("does_not_exist", "bang!") == "bang!"


def test_get_many(cache: LayeredCache) -> None:
    cache.set_many({"a": "a", "b": "b", "c": "c", "d": "d"})
    assert cache.get_many(["a", "c", "d"]) == {"a": "a", "c": "c", "d": "d"}
    assert cache.get_many(["a", "b", "e"]) == {"a": "a", "b": "b"}
    assert cache.get_many(iter(["a", "b", "e"])) == {"a": "a", "b": "b"}
    cache.set_many({"x": None, "y": 1})
    assert cache.get_many(["x", "y"]) == {"x": None, "y": 1}


def test_get_many_from_slower_layers(cache: LayeredCache) -> None:
    cache.set_many({"a": 1, "b": 2})
    cache.stack.store.clear()
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}


def test_delete(cache: LayeredCache) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"})
    assert cache.get("key1") == "spam"
    assert cache.delete("key1") is True
    assert cache.get("key1") is None
    assert cache.get("key2") == "eggs"


def test_delete_nonexistent(cache: LayeredCache) -> None:
    assert cache.delete("nonexistent_key") is False


def test_has_key(cache: LayeredCache) -> None:
    cache.set("hello1", "goodbye1")
    assert cache.has_key("hello1") is True
    assert cache.has_key("goodbye1") is False
    cache.set("no_expiry", "here", None)
    assert cache.has_key("no_expiry") is True
    cache.set("null", None)
    assert cache.has_key("null") is True


def test_in(cache: LayeredCache) -> None:
    cache.set("hello2", "goodbye2")
    assert "hello2" in cache
    assert "goodbye2" not in cache
    cache.set("null", None)
    assert "null" in cache


def test_incr(cache: LayeredCache) -> None:
    cache.set("answer", 41)
    assert cache.incr("answer") == 42
    assert cache.get("answer") == 42
    assert cache.incr("answer", 10) == 52
    assert cache.get("answer") == 52
    assert cache.incr("answer", -10) == 42
    with pytest.raises(ValueError, match="not found"):
        cache.incr("does_not_exist")
    with pytest.raises(ValueError, match="not found"):
        cache.incr("does_not_exist", -1)
    cache.set("null", None)
    with pytest.raises(TypeError):
        cache.incr("null")


def test_decr(cache: LayeredCache) -> None:
    cache.set("answer", 43)
    assert cache.decr("answer") == 42
    assert cache.get("answer") == 42
    assert cache.decr("answer", 10) == 32
    assert cache.get("answer") == 32
    assert cache.decr("answer", -10) == 42
    with pytest.raises(ValueError, match="not found"):
        cache.decr("does_not_exist")
    cache.set("null", None)
    with pytest.raises(TypeError):
        cache.decr("null")


def test_incr_keeps_the_expiry(cache: LayeredCache, raw_redis: Any) -> None:
    cache.set("counter", 1, timeout=1000)
    full = cache.make_key("counter")
    before = raw_redis.pttl(full)
    assert cache.incr("counter") == 2
    assert 0 < raw_redis.pttl(full) <= before


def test_close(cache: LayeredCache) -> None:
    assert hasattr(cache, "close")
    cache.close()


def test_data_types(cache: LayeredCache) -> None:
    tests = {
        "string": "this is a string",
        "int": 42,
        "bool": True,
        "list": [1, 2, 3, 4],
        "tuple": (1, 2, 3, 4),
        "dict": {"A": 1, "B": 2},
        "function": f,
        "class": C,
    }
    for key, value in tests.items():
        cache.set(key, value)
        assert cache.get(key) == value
        cache.stack.store.clear()  # and from the shared layers
        assert cache.get(key) == value


def test_cache_read_for_model_instance(cache: LayeredCache) -> None:
    user = get_user_model().objects.create_user("cached", password="pw")
    cache.set("user", user)
    cached = cache.get("user")
    assert cached == user
    assert cached.username == "cached"


def test_expiration(cache: LayeredCache) -> None:
    cache.set("expire1", "very quickly", 0.3)
    cache.set("expire2", "very quickly", 0.3)
    cache.set("expire3", "very quickly", 0.3)
    all_set = time.monotonic()
    # Wait for the last key's expiry too: expire2 and expire3 were set a little later.
    wait_until(lambda: cache.get("expire1") is None and time.monotonic() > all_set + 0.3)
    assert cache.add("expire2", "newvalue") is True
    assert cache.get("expire2") == "newvalue"
    assert cache.has_key("expire3") is False


def test_expired_entries_are_misses_in_every_layer(cache: LayeredCache) -> None:
    cache.set("short", "value", 0.3)
    wait_until(lambda: cache.get("short") is None)
    cache.stack.store.clear()
    assert cache.get("short") is None
    assert cache.has_key("short") is False


def test_touch(cache: LayeredCache, raw_redis: Any) -> None:
    cache.set("expire1", "very quickly", timeout=1)
    assert cache.touch("expire1", timeout=400) is True
    assert 390_000 < raw_redis.pttl(cache.make_key("expire1")) <= 400_000
    cache.stack.store.clear()
    assert cache.get("expire1") == "very quickly"
    cache.set("expire2", "very quickly", timeout=1)
    assert cache.touch("expire2") is True  # the default timeout, 300 s
    assert 290_000 < raw_redis.pttl(cache.make_key("expire2")) <= 300_000
    assert cache.touch("nonexistent") is False


def test_unicode(cache: LayeredCache) -> None:
    stuff = {
        "ascii": "ascii_value",
        "unicode_ascii": "Iñtërnâtiônàlizætiøn1",
        "Iñtërnâtiônàlizætiøn": "Iñtërnâtiônàlizætiøn2",
        "ascii2": {"x": 1},
    }
    for key, value in stuff.items():
        cache.set(key, value)
        assert cache.get(key) == value
    for key, value in stuff.items():
        assert cache.delete(key) is True
        assert cache.add(key, value) is True
        assert cache.get(key) == value
    for key in stuff:
        assert cache.delete(key) is True
    cache.set_many(stuff)
    cache.stack.store.clear()
    for key, value in stuff.items():
        assert cache.get(key) == value


def test_binary_string(cache: LayeredCache) -> None:
    value = "value_to_be_compressed"
    compressed_value = compress(value.encode())
    cache.set("binary1", compressed_value)
    assert decompress(cache.get("binary1")).decode() == value
    assert cache.add("binary1-add", compressed_value) is True
    assert cache.get("binary1-add") == compressed_value
    cache.set_many({"binary1-set_many": compressed_value})
    assert cache.get("binary1-set_many") == compressed_value


def test_set_many(cache: LayeredCache) -> None:
    assert cache.set_many({"key1": "spam", "key2": "eggs"}) == []
    assert cache.get("key1") == "spam"
    assert cache.get("key2") == "eggs"
    assert cache.set_many({}) == []


def test_set_many_expiration(cache: LayeredCache) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"}, 0.3)
    wait_until(lambda: cache.get("key1") is None and cache.get("key2") is None)


def test_delete_many(cache: LayeredCache) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs", "key3": "ham"})
    cache.delete_many(["key1", "key2"])
    assert cache.get("key1") is None
    assert cache.get("key2") is None
    assert cache.get("key3") == "ham"
    cache.delete_many([])


def test_clear(cache: LayeredCache) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"})
    cache.clear()
    assert cache.get("key1") is None
    assert cache.get("key2") is None


def test_long_timeout(cache: LayeredCache) -> None:
    cache.set("key1", "eggs", 60 * 60 * 24 * 30 + 1)
    assert cache.get("key1") == "eggs"
    assert cache.add("key2", "ham", 60 * 60 * 24 * 30 + 1) is True
    assert cache.get("key2") == "ham"
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, 60 * 60 * 24 * 30 + 1)
    cache.stack.store.clear()
    assert cache.get("key3") == "sausage"
    assert cache.get("key4") == "lobster bisque"


def test_forever_timeout(cache: LayeredCache, raw_redis: Any) -> None:
    cache.set("key1", "eggs", None)
    assert cache.get("key1") == "eggs"
    assert raw_redis.pttl(cache.make_key("key1")) == -1
    assert cache.add("key2", "ham", None) is True
    assert cache.get("key2") == "ham"
    assert cache.add("key1", "new eggs", None) is False
    assert cache.get("key1") == "eggs"
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, None)
    assert cache.get("key3") == "sausage"
    assert cache.get("key4") == "lobster bisque"
    cache.set("key5", "belgian fries", timeout=1)
    assert cache.touch("key5", timeout=None) is True
    assert raw_redis.pttl(cache.make_key("key5")) == -1
    cache.stack.store.clear()
    assert cache.get("key5") == "belgian fries"


def test_zero_timeout(cache: LayeredCache) -> None:
    cache.set("key1", "eggs", 0)
    assert cache.get("key1") is None
    assert cache.add("key2", "ham", 0) is True
    assert cache.get("key2") is None
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, 0)
    assert cache.get("key3") is None
    assert cache.get("key4") is None
    cache.set("key5", "belgian fries", timeout=5)
    assert cache.touch("key5", timeout=0) is True
    assert cache.get("key5") is None


def test_zero_timeout_set_removes_an_existing_value(cache: LayeredCache) -> None:
    cache.set("key", "old")
    cache.set("key", "new", 0)
    cache.stack.store.clear()
    assert cache.get("key") is None


def test_float_timeout(cache: LayeredCache) -> None:
    cache.set("key1", "spam", 100.2)
    assert cache.get("key1") == "spam"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("key with spaces and 清", KEY_ERRORS_WITH_MEMCACHED_MSG % "key with spaces and 清"),
        (
            ("a" * 250) + "清",
            f"Cache key will cause errors if used with memcached: {('a' * 250) + '清'!r} "
            "(longer than 250)",
        ),
    ],
)
def test_invalid_keys_warn(cache: LayeredCache, key: str, expected: str) -> None:
    cache.key_func = lambda key, *args: key
    operations: list[tuple[str, list[Any]]] = [
        ("add", [key, 1]),
        ("get", [key]),
        ("set", [key, 1]),
        ("incr", [key]),
        ("decr", [key]),
        ("touch", [key]),
        ("delete", [key]),
        ("get_many", [[key, "b"]]),
        ("set_many", [{key: 1, "b": 2}]),
        ("delete_many", [[key, "b"]]),
    ]
    for operation, args in operations:
        with pytest.warns(CacheKeyWarning) as record:
            getattr(cache, operation)(*args)
        assert str(record[0].message) == expected, operation


def test_long_keys_still_work_in_every_layer(cache: LayeredCache) -> None:
    key = "k" * 300
    with pytest.warns(CacheKeyWarning):
        cache.set(key, "long")
    cache.stack.store.clear()
    with pytest.warns(CacheKeyWarning):
        assert cache.get(key) == "long"
    assert cache.stats()["database"]["errors"] == 0


def test_cache_versioning_get_set(cache: LayeredCache) -> None:
    v2 = caches["v2"]
    cache.set("answer1", 42)
    assert cache.get("answer1") == 42
    assert cache.get("answer1", version=1) == 42
    assert cache.get("answer1", version=2) is None
    assert v2.get("answer1") is None
    assert v2.get("answer1", version=1) == 42
    cache.set("answer2", 42, version=2)
    assert cache.get("answer2") is None
    assert cache.get("answer2", version=2) == 42
    assert v2.get("answer2") == 42
    v2.set("answer4", 42, version=1)
    assert cache.get("answer4") == 42
    assert v2.get("answer4") is None


def test_cache_versioning_add_has_key_delete(cache: LayeredCache) -> None:
    v2 = caches["v2"]
    assert cache.add("answer1", 42, version=2) is True
    assert cache.add("answer1", 37, version=2) is False
    assert cache.add("answer1", 37, version=1) is True
    assert cache.get("answer1", version=1) == 37
    assert v2.get("answer1") == 42
    assert v2.has_key("answer1") is True
    assert v2.has_key("answer1", version=3) is False
    cache.set("answer2", 37, version=1)
    cache.set("answer2", 42, version=2)
    assert v2.delete("answer2") is True
    assert cache.get("answer2", version=1) == 37
    assert cache.get("answer2", version=2) is None


def test_cache_versioning_incr_decr(cache: LayeredCache) -> None:
    cache.set("answer1", 37, version=1)
    cache.set("answer1", 42, version=2)
    assert cache.incr("answer1") == 38
    assert cache.get("answer1", version=2) == 42
    assert caches["v2"].incr("answer1") == 43
    assert cache.get("answer1", version=1) == 38
    assert cache.decr("answer1", version=2) == 42


def test_cache_versioning_get_set_many(cache: LayeredCache) -> None:
    v2 = caches["v2"]
    cache.set_many({"ford1": 37, "arthur1": 42})
    assert cache.get_many(["ford1", "arthur1"]) == {"ford1": 37, "arthur1": 42}
    assert cache.get_many(["ford1", "arthur1"], version=2) == {}
    assert v2.get_many(["ford1", "arthur1"]) == {}
    assert v2.get_many(["ford1", "arthur1"], version=1) == {"ford1": 37, "arthur1": 42}
    v2.set_many({"ford3": 37, "arthur3": 42})
    assert cache.get_many(["ford3", "arthur3"], version=2) == {"ford3": 37, "arthur3": 42}


def test_incr_version(cache: LayeredCache) -> None:
    cache.set("answer", 42, version=2)
    assert cache.incr_version("answer", version=2) == 3
    assert cache.get("answer", version=2) is None
    assert cache.get("answer", version=3) == 42
    with pytest.raises(ValueError, match="not found"):
        cache.incr_version("does_not_exist")
    cache.set("null", None)
    assert cache.incr_version("null") == 2


def test_decr_version(cache: LayeredCache) -> None:
    cache.set("answer", 42, version=2)
    assert cache.decr_version("answer", version=2) == 1
    assert cache.get("answer") == 42
    assert cache.get("answer", version=2) is None
    with pytest.raises(ValueError, match="not found"):
        cache.decr_version("does_not_exist", version=2)


def test_custom_key_func(cache: LayeredCache) -> None:
    cache.set("answer1", 42)
    assert caches["custom_key"].get("answer1") is None
    assert caches["custom_key2"].get("answer1") is None
    caches["custom_key"].set("answer2", 42)
    assert cache.get("answer2") is None
    assert caches["custom_key"].get("answer2") == 42
    assert caches["custom_key2"].get("answer2") == 42


def test_cache_middleware_round_trip(cache: LayeredCache, settings: Any) -> None:
    settings.CACHE_MIDDLEWARE_ALIAS = "default"
    request = RequestFactory().get("/cache/test")
    request._cache_update_cache = True  # type: ignore[attr-defined]
    fetch = FetchFromCacheMiddleware(lambda request: HttpResponse())
    assert fetch.process_request(request) is None

    def get_response(request: Any) -> HttpResponse:
        response = HttpResponse("Testing cookie serialization.")
        response.set_cookie("foo", "bar")
        return response

    response: Any = UpdateCacheMiddleware(get_response)(request)
    cached = fetch.process_request(request)
    assert cached is not None
    assert cached.content == b"Testing cookie serialization."
    assert cached.cookies == response.cookies


def test_add_and_set_fail_on_pickle_error(cache: LayeredCache) -> None:
    with pytest.raises(pickle.PickleError):
        cache.add("unpicklable", Unpicklable())
    with pytest.raises(pickle.PickleError):
        cache.set("unpicklable", Unpicklable())


def test_get_or_set(cache: LayeredCache) -> None:
    assert cache.get("projector") is None
    assert cache.get_or_set("projector", 42) == 42
    assert cache.get("projector") == 42
    assert cache.get_or_set("null", None) is None
    assert cache.get("null", "default") is None


def test_get_or_set_callable(cache: LayeredCache) -> None:
    assert cache.get_or_set("mykey", lambda: "value") == "value"
    assert cache.get_or_set("mykey", "other") == "value"
    assert cache.get_or_set("null", lambda: None) is None
    assert cache.get("null", "default") is None


def test_get_or_set_version(cache: LayeredCache) -> None:
    msg = "get_or_set() missing 1 required positional argument: 'default'"
    assert cache.get_or_set("brian", 1979, version=2) == 1979
    with pytest.raises(TypeError, match=re.escape(msg)):
        cache.get_or_set("brian")  # type: ignore[call-arg]
    assert cache.get("brian", version=1) is None
    assert cache.get_or_set("brian", 42, version=1) == 42
    assert cache.get_or_set("brian", 1979, version=2) == 1979
    assert cache.get("brian", version=3) is None


def test_get_or_set_racing(cache: LayeredCache) -> None:
    with mock.patch("mpai.cache.LayeredCache.add") as cache_add:
        cache_add.return_value = False
        assert cache.get_or_set("key", "default") == "default"
        assert cache.get_or_set("key2", lambda: "computed") == "computed"


def test_returned_objects_are_copies(cache: LayeredCache) -> None:
    cache.set("mutable", {"items": [1]})
    first = cache.get("mutable")
    first["items"].append(2)
    assert cache.get("mutable") == {"items": [1]}
    cache.stack.store.clear()
    second = cache.get("mutable")  # read from Redis, kept in L1
    second["items"].append(3)
    assert cache.get("mutable") == {"items": [1]}


def test_async_twins(cache: LayeredCache) -> None:
    # Run through async_to_sync, so layer I/O (sync_to_async) runs in this thread and
    # no asgiref worker thread outlives the test (an event loop of a later test could
    # otherwise wait on it).
    async_to_sync(_exercise_async_twins)(cache)


async def _exercise_async_twins(cache: LayeredCache) -> None:
    await cache.aset("a", 1)
    assert await cache.aget("a") == 1
    assert await cache.aadd("a", 2) is False
    assert await cache.aadd("b", 2) is True
    assert await cache.aget_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    assert await cache.ahas_key("a") is True
    assert await cache.aincr("a", 5) == 6
    assert await cache.adecr("a") == 5
    assert await cache.atouch("a", 100) is True
    assert await cache.aset_many({"c": 3, "d": 4}) == []
    assert await cache.adelete("c") is True
    await cache.adelete_many(["d"])
    assert await cache.aget("d", "gone") == "gone"
    assert await cache.aget_or_set("e", lambda: "computed") == "computed"
    assert await cache.aincr_version("e") == 2
    assert await cache.aget("e", version=2) == "computed"
    assert await cache.adecr_version("e", version=2) == 1
    cache.stack.store.clear()
    assert await cache.aget("b") == 2  # from the shared layers, through a thread
    await cache.aclear()
    assert await cache.aget("b") is None
    await cache.aclose()


def test_timeout_none_in_l1_does_not_expire(cache: LayeredCache) -> None:
    cache.set("forever", 1, None)
    entry = cache.stack.store.peek(cache.make_key("forever"))
    assert entry is not None
    assert entry[1] is None


def test_set_is_visible_at_once_through_another_alias(cache: LayeredCache) -> None:
    # Django builds one cache object per alias and thread; they share one L1.
    other = caches["custom_key"]
    other.set("shared", "old")
    assert other.get("shared") == "old"
    cache_same_key = caches["custom_key2"]
    cache_same_key.set("shared", "new")
    assert other.get("shared") == "new"
