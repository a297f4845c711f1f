"""Fixtures for the layered cache tests.

Every test gets its own Redis database on the suite's private server (flushed before
use; never the shared server at 6379) and its own key prefix, so tests cannot see
each other's entries in Redis or in the shared cache table.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.core.cache import caches
from django.core.management import call_command

from mpai.cache import LayeredCache
from mpai.cache import stack as stack_module

TABLE = "mpai_cache"
# Databases 0 and 1 are the suite's default cache and channel layer.
_REDIS_DBS = itertools.cycle(range(8, 32))


def custom_key_func(key: str, key_prefix: str, version: int) -> str:
    """A customized cache key function (Django's cache tests use the same)."""
    return "CUSTOM-" + "-".join([key_prefix, str(version), key])


@pytest.fixture(scope="session")
def cache_table(django_db_setup: Any, django_db_blocker: Any) -> str:
    """The database layer's table, created once (committed) in the test database."""
    with django_db_blocker.unblock():
        call_command("createcachetable", TABLE, verbosity=0)
    return TABLE


@pytest.fixture
def redis_db(redis_server: Any) -> str:
    """URL of a flushed database on the private Redis server."""
    number = next(_REDIS_DBS)
    client = redis.Redis(port=redis_server.port, db=number)
    client.flushdb()
    client.close()
    return f"{redis_server.url}/{number}"


@pytest.fixture
def raw_redis(redis_db: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test's Redis database."""
    client = redis.Redis.from_url(redis_db)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _forget_new_stacks() -> Iterator[None]:
    """Stop the listener threads of stacks a test built, and forget those stacks."""
    before = set(stack_module._stacks)
    yield
    for identity in set(stack_module._stacks) - before:
        stack = stack_module._stacks.get(identity)
        if stack is not None:
            stack_module.discard_stack(stack)


def layered_params(
    redis_url: str | None, table: str | None = TABLE, prefix: str = "", **options: Any
) -> dict[str, Any]:
    """A CACHES entry for a LayeredCache over memory, ``redis_url`` and ``table``."""
    layers: list[dict[str, Any]] = [{"NAME": "memory", "BACKEND": "mpai.cache.memory.MemoryStore"}]
    if redis_url:
        layers.append(
            {
                "NAME": "redis",
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": redis_url,
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.25},
            }
        )
    if table:
        layers.append(
            {
                "NAME": "database",
                "BACKEND": "django.core.cache.backends.db.DatabaseCache",
                "LOCATION": table,
            }
        )
    return {
        "BACKEND": "mpai.cache.LayeredCache",
        "LOCATION": redis_url or "",
        "KEY_PREFIX": prefix,
        "OPTIONS": {
            "LAYERS": layers,
            "INVALIDATION_CHANNEL": f"mpai-test:{redis_url}:invalidate",
            **options,
        },
    }


@pytest.fixture
def configure(settings: Any, redis_db: str, cache_table: str) -> Callable[..., LayeredCache]:
    """Point CACHES at layered caches on this test's Redis database and return the
    default one. Aliases as in Django's cache tests: ``prefix``, ``v2``,
    ``custom_key``, ``custom_key2``. Keyword arguments go to OPTIONS; ``layers`` may
    drop Redis (``redis=False``) or the database (``database=False``)."""

    def make(*, redis: bool = True, database: bool = True, **options: Any) -> LayeredCache:
        prefix = f"t{uuid.uuid4().hex[:8]}"
        base = layered_params(
            redis_db if redis else None, cache_table if database else None, prefix, **options
        )
        settings.CACHES = {
            "default": base,
            "prefix": {**base, "KEY_PREFIX": f"{prefix}-p"},
            "v2": {**base, "VERSION": 2},
            "custom_key": {**base, "KEY_FUNCTION": custom_key_func},
            "custom_key2": {**base, "KEY_FUNCTION": "tests.cache.conftest.custom_key_func"},
        }
        cache = caches["default"]
        assert isinstance(cache, LayeredCache)
        assert cache.wait_ready(10.0)
        return cache

    return make
