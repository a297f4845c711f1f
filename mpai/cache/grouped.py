"""The seed's grouped cache API on top of a Django cache alias.

The seed's ``MPAI_Cache::get($key, $group)``, ``set($key, $data, $group, $expiration)``
and ``delete($key, $group)`` become :func:`get`, :func:`set` and :func:`delete`, plus
:func:`delete_group`, which forgets a whole group at once.

Keys: ``mpai:<group>:<group version>:<key>`` in the cache alias named by
``settings.MPAI["CACHE_ALIAS"]`` (default ``"default"``). The group version lives
under ``mpai:group:<group>`` with no expiry; :func:`delete_group` replaces it, so the
group's old entries can no longer be reached and expire on their own. Versions start
at ``time.time_ns()``, so a version lost with its cache never brings old entries back.

Lifetimes: ``timeout`` not given means the group's default from
``settings.MPAI["CACHE_TIMEOUTS"]`` (seconds; seed categories: ``user_context``
300, ``api_response`` 1800, ``tool_metrics`` 3600, ``query_analysis`` 1200,
``conversation_context`` 900), else ``settings.MPAI["CACHE_DEFAULT_TIMEOUT"]``
(3600, the seed's default). None = forever, 0 = expire at once.

Errors: those of the underlying cache. ``mpai.cache.LayeredCache`` never raises on a
layer outage; other backends may (e.g. django-redis without ``IGNORE_EXCEPTIONS``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.core.cache import BaseCache, caches

from mpai.conf import DEFAULTS, mpai_settings

DEFAULT_GROUP = "default"

#: Group of the per-user context entries (keys and claims: ``mpai.chat.usercontext``).
USER_CONTEXT = "user_context"


class _NotGiven:
    def __repr__(self) -> str:
        return "<group default>"


NOT_GIVEN: Any = _NotGiven()


def get_cache() -> BaseCache:
    """Return the cache the grouped API uses (``settings.MPAI["CACHE_ALIAS"]``)."""
    return caches[mpai_settings.CACHE_ALIAS]


def group_timeout(group: str) -> float | None:
    """Return the default lifetime of ``group`` in seconds (None = forever)."""
    timeouts = {**DEFAULTS["CACHE_TIMEOUTS"], **(mpai_settings.CACHE_TIMEOUTS or {})}
    if group in timeouts:
        return timeouts[group]
    return mpai_settings.CACHE_DEFAULT_TIMEOUT


def _version_key(group: str) -> str:
    return f"mpai:group:{group}"


def group_version(group: str) -> int:
    """Return the current version number of ``group`` (creating it on first use)."""
    cache = get_cache()
    key = _version_key(group)
    version = cache.get(key)
    if version is None:
        cache.add(key, time.time_ns(), timeout=None)
        version = cache.get(key)
        if version is None:  # the cache keeps nothing (e.g. DummyCache)
            version = 0
    return int(version)


def group_key(key: Any, group: str = DEFAULT_GROUP) -> str:
    """Return the cache key of ``key`` in ``group`` at the group's current version."""
    return f"mpai:{group}:{group_version(group)}:{key}"


def get(key: Any, group: str = DEFAULT_GROUP, default: Any = None) -> Any:
    """Return the value of ``key`` in ``group``, or ``default``."""
    return get_cache().get(group_key(key, group), default)


def set(  # the seed's name, exported as mpai.cache.set
    key: Any, value: Any, group: str = DEFAULT_GROUP, timeout: Any = NOT_GIVEN
) -> None:
    """Store ``value`` under ``key`` in ``group``.

    Args:
        timeout: seconds; not given = the group's default lifetime; None = forever;
            0 = expire at once.
    """
    if timeout is NOT_GIVEN:
        timeout = group_timeout(group)
    get_cache().set(group_key(key, group), value, timeout)


def get_or_set(key: Any, default: Any, group: str = DEFAULT_GROUP, timeout: Any = NOT_GIVEN) -> Any:
    """Return the value of ``key`` in ``group``, storing ``default`` on a miss.

    A callable ``default`` is called once for concurrent misses when the alias is a
    ``LayeredCache`` (stampede protection).
    """
    if timeout is NOT_GIVEN:
        timeout = group_timeout(group)
    return get_cache().get_or_set(group_key(key, group), default, timeout)


def delete(key: Any, group: str = DEFAULT_GROUP) -> bool:
    """Delete ``key`` from ``group``; return whether it was cached."""
    return bool(get_cache().delete(group_key(key, group)))


def delete_group(group: str) -> int:
    """Forget every entry of ``group`` at once; return the group's new version."""
    cache = get_cache()
    key = _version_key(group)
    old = cache.get(key)
    version = max(time.time_ns(), int(old or 0) + 1)
    cache.set(key, version, timeout=None)
    return version


def stats() -> dict[str, dict[str, Any]]:
    """Return ``stats()`` of the grouped API's cache (``{}`` if it has none)."""
    cache = get_cache()
    method: Callable[[], dict[str, dict[str, Any]]] | None = getattr(cache, "stats", None)
    return method() if callable(method) else {}
