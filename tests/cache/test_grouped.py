"""The seed's grouped API: get/set/delete by group, group deletion, category lifetimes."""

from __future__ import annotations

from typing import Any

import pytest

import mpai.cache
from mpai.cache import grouped

pytestmark = pytest.mark.django_db


@pytest.fixture
def cache(configure: Any, settings: Any) -> Any:
    layered = configure()
    settings.MPAI = {**getattr(settings, "MPAI", {}), "CACHE_ALIAS": "default"}
    return layered


def ttl_ms(raw_redis: Any, key: str, group: str) -> int:
    return int(raw_redis.pttl(grouped.get_cache().make_key(grouped.group_key(key, group))))


def test_get_set_delete_by_group(cache: Any) -> None:
    mpai.cache.set("k", {"plan": "gold"}, group="user_context")
    mpai.cache.set("k", "other group", group="api_response")
    assert mpai.cache.get("k", group="user_context") == {"plan": "gold"}
    assert mpai.cache.get("k", group="api_response") == "other group"
    assert mpai.cache.get("missing", group="user_context", default="d") == "d"
    assert mpai.cache.delete("k", group="user_context") is True
    assert mpai.cache.delete("k", group="user_context") is False
    assert mpai.cache.get("k", group="user_context") is None
    assert mpai.cache.get("k", group="api_response") == "other group"
    mpai.cache.set("k", "default group")
    assert mpai.cache.get("k") == "default group"


@pytest.mark.parametrize(
    ("group", "seconds"),
    [
        ("user_context", 300),
        ("api_response", 1800),
        ("tool_metrics", 3600),
        ("query_analysis", 1200),
        ("conversation_context", 900),
        ("anything_else", 3600),
    ],
)
def test_category_lifetimes(cache: Any, raw_redis: Any, group: str, seconds: int) -> None:
    mpai.cache.set("k", 1, group=group)
    assert (seconds - 10) * 1000 < ttl_ms(raw_redis, "k", group) <= seconds * 1000


def test_explicit_and_configured_lifetimes(cache: Any, raw_redis: Any, settings: Any) -> None:
    mpai.cache.set("forever", 1, group="user_context", timeout=None)
    assert ttl_ms(raw_redis, "forever", "user_context") == -1
    mpai.cache.set("gone", 1, group="user_context", timeout=0)
    assert mpai.cache.get("gone", group="user_context") is None
    settings.MPAI = {**settings.MPAI, "CACHE_TIMEOUTS": {"user_context": 60}}
    mpai.cache.set("k", 1, group="user_context")
    assert 50_000 < ttl_ms(raw_redis, "k", "user_context") <= 60_000
    mpai.cache.set("k", 1, group="api_response")  # other groups keep their defaults
    assert ttl_ms(raw_redis, "k", "api_response") > 1_700_000


def test_delete_group(cache: Any) -> None:
    mpai.cache.set("a", 1, group="tool_metrics")
    mpai.cache.set("b", 2, group="tool_metrics")
    mpai.cache.set("a", 3, group="query_analysis")
    old_version = grouped.group_version("tool_metrics")
    new_version = mpai.cache.delete_group("tool_metrics")
    assert new_version > old_version
    assert mpai.cache.get("a", group="tool_metrics") is None
    assert mpai.cache.get("b", group="tool_metrics") is None
    assert mpai.cache.get("a", group="query_analysis") == 3
    mpai.cache.set("a", 4, group="tool_metrics")
    assert mpai.cache.get("a", group="tool_metrics") == 4


def test_a_lost_group_version_does_not_bring_old_entries_back(cache: Any) -> None:
    mpai.cache.set("a", "old", group="g")
    mpai.cache.delete_group("g")
    cache.delete("mpai:group:g")  # the version entry is lost (eviction, flush)
    assert mpai.cache.get("a", group="g") is None


def test_get_or_set_in_a_group(cache: Any) -> None:
    assert mpai.cache.get_or_set("k", lambda: "computed", group="user_context") == "computed"
    assert mpai.cache.get_or_set("k", lambda: "again", group="user_context") == "computed"


def test_the_alias_is_a_setting(configure: Any, settings: Any) -> None:
    configure()
    settings.CACHES = {
        **settings.CACHES,
        "other": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    settings.MPAI = {**getattr(settings, "MPAI", {}), "CACHE_ALIAS": "other"}
    mpai.cache.set("k", "in locmem", group="g")
    from django.core.cache import caches

    assert caches["other"].get(grouped.group_key("k", "g")) == "in locmem"
    assert mpai.cache.stats() == {}


def test_stats(cache: Any) -> None:
    mpai.cache.set("k", 1)
    mpai.cache.get("k")
    stats = mpai.cache.stats()
    assert set(stats) == {"memory", "redis", "database"}
    assert stats["memory"]["hits"] >= 1
