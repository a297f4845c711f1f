"""mpai's cache groups: their names, their lifetimes and a grouped cache API.

A WordPress-style grouped cache (``get($key, $group)``, ``set($key, $data, $group,
$expiration)``, ``delete($key, $group)``) becomes :func:`get`, :func:`set` and :func:`delete`, plus
:func:`delete_group`, which forgets a whole group at once, over any Django cache (mpai's
``LayeredCache`` by default; README, "The layered cache"). Every group mpai caches in is
named here, with its default lifetime:

========================  =======  =============================================
group                     seconds  what
========================  =======  =============================================
``user_context``              300  a user's profile for the prompt (:mod:`.profile`)
``api_response``             1800  complete replies (:mod:`.response_cache`)
``tool_metrics``             3600  per-tool call figures (:mod:`mpai.tools.metrics`)
``query_analysis``           1200  query analysis
``conversation_context``      900  a conversation's recent messages (:mod:`.history_cache`)
========================  =======  =============================================

``settings.MPAI["CACHE_TIMEOUTS"]`` is merged over these, group by group; any other
group lives ``settings.MPAI["CACHE_DEFAULT_TIMEOUT"]`` seconds (3600 by
default). A ``timeout`` given to :func:`set` or :func:`get_or_set` wins: None = forever,
0 = expire at once.

Keys: ``mpai:<group>:<group version>:<key>`` in the cache alias named by
``settings.MPAI["CACHE_ALIAS"]`` (default ``"default"``). The group version lives
under ``mpai:group:<group>`` with no expiry; :func:`delete_group` replaces it, so the
group's old entries can no longer be reached and expire on their own. Versions start
at ``time.time_ns()``, so a version lost with its cache never brings old entries back.

Data that can reach a prompt is not cached here directly but through
:mod:`mpai.chat.scoped_cache`, whose entries prove their site, owner and conversation.

Errors: those of the underlying cache. ``LayeredCache`` never raises on a layer outage;
other backends may (e.g. django-redis without ``IGNORE_EXCEPTIONS``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from django.core.cache import BaseCache, caches

from mpai.conf import DEFAULTS, mpai_settings

#: Group of keys stored without one.
DEFAULT_GROUP = "default"
#: A user's profile for the prompt (keys and claims: :mod:`mpai.chat.profile`).
USER_CONTEXT = "user_context"
#: Complete replies of the response cache (:mod:`mpai.chat.response_cache`).
API_RESPONSE = "api_response"
#: Per-tool call counts and durations, by minute (:mod:`mpai.tools.metrics`).
TOOL_METRICS = "tool_metrics"
#: Query analysis.
QUERY_ANALYSIS = "query_analysis"
#: A conversation's recent messages (:mod:`mpai.chat.history_cache`).
CONVERSATION_CONTEXT = "conversation_context"

#: Default lifetime in seconds of each group (None = forever), read-only. Its one
#: source is ``mpai.conf.DEFAULTS["CACHE_TIMEOUTS"]``, which a site's
#: ``MPAI["CACHE_TIMEOUTS"]`` is merged over (``mpai_settings.CACHE_TIMEOUTS``).
DEFAULT_TIMEOUTS: Mapping[str, float | None] = MappingProxyType(DEFAULTS["CACHE_TIMEOUTS"])


class _NotGiven:
    def __repr__(self) -> str:
        return "<group default>"


#: ``timeout`` not given: the group's default lifetime.
NOT_GIVEN: Any = _NotGiven()


def get_cache() -> BaseCache:
    """Return the cache the grouped API uses (``settings.MPAI["CACHE_ALIAS"]``)."""
    return caches[mpai_settings.CACHE_ALIAS]


def group_timeout(group: str) -> float | None:
    """Return the default lifetime of ``group`` in seconds (None = forever)."""
    timeouts = mpai_settings.CACHE_TIMEOUTS
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


def group_prefix(group: str) -> str:
    """Return the prefix of every key of ``group`` at its current version,
    ``mpai:<group>:<version>:`` (one cache read), for callers that build many keys at
    once and read them with the cache's own ``get_many``."""
    return f"mpai:{group}:{group_version(group)}:"


def get(key: Any, group: str = DEFAULT_GROUP, default: Any = None) -> Any:
    """Return the value of ``key`` in ``group``, or ``default``."""
    return get_cache().get(group_key(key, group), default)


def set(  # the grouped API's name
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
