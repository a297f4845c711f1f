"""``mpai.W002``: mpai's cache alias uses Redis without a ``KEY_PREFIX`` (issue 8)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import checks

from mpai.checks import check_cache_key_prefix

REDIS = "redis://127.0.0.1:6390/0"


def ids(settings: Any, caches: dict[str, Any], alias: str | None = None) -> list[str]:
    settings.CACHES = caches
    if alias is not None:
        settings.MPAI = {**settings.MPAI, "CACHE_ALIAS": alias}
    return [message.id for message in check_cache_key_prefix()]


@pytest.mark.parametrize(
    "entry",
    [
        {"BACKEND": "mpai.cache.LayeredCache", "LOCATION": REDIS},
        {"BACKEND": "mpai.cache.LayeredCache", "LOCATION": REDIS, "KEY_PREFIX": ""},
        {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS},
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS},
        {
            "BACKEND": "mpai.cache.LayeredCache",
            "LOCATION": "",
            "OPTIONS": {
                "LAYERS": [
                    {"NAME": "memory", "BACKEND": "mpai.cache.memory.MemoryStore"},
                    {
                        "NAME": "redis",
                        "BACKEND": "django_redis.cache.RedisCache",
                        "LOCATION": REDIS,
                    },
                ]
            },
        },
    ],
    ids=["layered", "layered-empty-prefix", "django-redis", "django-redis-cache", "layered-layers"],
)
def test_w002_warns_when_mpais_cache_uses_redis_without_a_key_prefix(
    settings: Any, entry: dict[str, Any]
) -> None:
    assert ids(settings, {"default": entry}) == ["mpai.W002"]


def test_w002_follows_a_layer_given_as_an_alias_of_a_redis_cache(settings: Any) -> None:
    caches = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "redis": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS},
        "mpai": {
            "BACKEND": "mpai.cache.LayeredCache",
            "OPTIONS": {"LAYERS": [{"NAME": "l2", "ALIAS": "redis"}]},
        },
    }
    assert ids(settings, caches, alias="mpai") == ["mpai.W002"]


@pytest.mark.parametrize(
    "entry",
    [
        {"BACKEND": "mpai.cache.LayeredCache", "LOCATION": REDIS, "KEY_PREFIX": "site-a"},
        {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS, "KEY_PREFIX": "site-a"},
        {"BACKEND": "mpai.cache.LayeredCache", "LOCATION": ""},
        {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    ],
    ids=["layered-prefixed", "django-redis-prefixed", "layered-no-redis", "locmem"],
)
def test_w002_is_silent_with_a_key_prefix_or_without_redis(
    settings: Any, entry: dict[str, Any]
) -> None:
    assert ids(settings, {"default": entry}) == []


def test_w002_looks_at_mpais_cache_alias_only(settings: Any) -> None:
    caches = {
        "default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS},
        "mpai": {"BACKEND": "mpai.cache.LayeredCache", "LOCATION": REDIS, "KEY_PREFIX": "a"},
    }
    assert ids(settings, caches, alias="mpai") == []
    assert ids(settings, caches, alias="default") == ["mpai.W002"]


def test_w002_is_a_warning_reported_by_manage_py_check(settings: Any) -> None:
    settings.CACHES = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": REDIS}}
    found = [m for m in checks.run_checks(tags=[checks.Tags.caches]) if m.id == "mpai.W002"]
    assert len(found) == 1
    assert found[0].level == checks.WARNING
    assert "KEY_PREFIX" in found[0].hint
