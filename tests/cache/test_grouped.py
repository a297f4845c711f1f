"""The seed's grouped API (``mpai.chat.cache_groups``) over the layered cache: get/set/delete
by group, group deletion, category lifetimes."""

from __future__ import annotations

from typing import Any

import pytest

from mpai.chat import cache_groups

pytestmark = pytest.mark.django_db


@pytest.fixture
def cache(configure: Any, settings: Any) -> Any:
    layered = configure()
    settings.MPAI = {**getattr(settings, "MPAI", {}), "CACHE_ALIAS": "default"}
    return layered


def ttl_ms(raw_redis: Any, key: str, group: str) -> int:
    return int(
        raw_redis.pttl(cache_groups.get_cache().make_key(cache_groups.group_key(key, group)))
    )


def test_get_set_delete_by_group(cache: Any) -> None:
    cache_groups.set("k", {"plan": "gold"}, group="user_context")
    cache_groups.set("k", "other group", group="api_response")
    assert cache_groups.get("k", group="user_context") == {"plan": "gold"}
    assert cache_groups.get("k", group="api_response") == "other group"
    assert cache_groups.get("missing", group="user_context", default="d") == "d"
    assert cache_groups.delete("k", group="user_context") is True
    assert cache_groups.delete("k", group="user_context") is False
    assert cache_groups.get("k", group="user_context") is None
    assert cache_groups.get("k", group="api_response") == "other group"
    cache_groups.set("k", "default group")
    assert cache_groups.get("k") == "default group"


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
    cache_groups.set("k", 1, group=group)
    assert (seconds - 10) * 1000 < ttl_ms(raw_redis, "k", group) <= seconds * 1000


def test_explicit_and_configured_lifetimes(cache: Any, raw_redis: Any, settings: Any) -> None:
    cache_groups.set("forever", 1, group="user_context", timeout=None)
    assert ttl_ms(raw_redis, "forever", "user_context") == -1
    cache_groups.set("gone", 1, group="user_context", timeout=0)
    assert cache_groups.get("gone", group="user_context") is None
    settings.MPAI = {**settings.MPAI, "CACHE_TIMEOUTS": {"user_context": 60}}
    cache_groups.set("k", 1, group="user_context")
    assert 50_000 < ttl_ms(raw_redis, "k", "user_context") <= 60_000
    cache_groups.set("k", 1, group="api_response")  # other groups keep their defaults
    assert ttl_ms(raw_redis, "k", "api_response") > 1_700_000


def test_delete_group(cache: Any) -> None:
    cache_groups.set("a", 1, group="tool_metrics")
    cache_groups.set("b", 2, group="tool_metrics")
    cache_groups.set("a", 3, group="query_analysis")
    old_version = cache_groups.group_version("tool_metrics")
    new_version = cache_groups.delete_group("tool_metrics")
    assert new_version > old_version
    assert cache_groups.get("a", group="tool_metrics") is None
    assert cache_groups.get("b", group="tool_metrics") is None
    assert cache_groups.get("a", group="query_analysis") == 3
    cache_groups.set("a", 4, group="tool_metrics")
    assert cache_groups.get("a", group="tool_metrics") == 4


def test_a_lost_group_version_does_not_bring_old_entries_back(cache: Any) -> None:
    cache_groups.set("a", "old", group="g")
    cache_groups.delete_group("g")
    cache.delete("mpai:group:g")  # the version entry is lost (eviction, flush)
    assert cache_groups.get("a", group="g") is None


def test_get_or_set_in_a_group(cache: Any) -> None:
    assert cache_groups.get_or_set("k", lambda: "computed", group="user_context") == "computed"
    assert cache_groups.get_or_set("k", lambda: "again", group="user_context") == "computed"


def test_the_alias_is_a_setting(configure: Any, settings: Any) -> None:
    configure()
    settings.CACHES = {
        **settings.CACHES,
        "other": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    settings.MPAI = {**getattr(settings, "MPAI", {}), "CACHE_ALIAS": "other"}
    cache_groups.set("k", "in locmem", group="g")
    from django.core.cache import caches

    assert caches["other"].get(cache_groups.group_key("k", "g")) == "in locmem"
    assert cache_groups.stats() == {}


def test_stats(cache: Any) -> None:
    cache_groups.set("k", 1)
    cache_groups.get("k")
    stats = cache_groups.stats()
    assert set(stats) == {"memory", "redis", "database"}
    assert stats["memory"]["hits"] >= 1


def test_the_group_lifetimes_have_one_source() -> None:
    # The lifetimes are written once, in mpai's settings defaults; the grouped API's
    # table is a read-only view of that dict, not a second copy that could drift.
    from mpai.conf import DEFAULTS

    assert cache_groups.DEFAULT_TIMEOUTS["conversation_context"] == 15 * 60
    assert dict(cache_groups.DEFAULT_TIMEOUTS) == DEFAULTS["CACHE_TIMEOUTS"]
    with pytest.raises(TypeError):
        cache_groups.DEFAULT_TIMEOUTS["user_context"] = 1  # type: ignore[index]
