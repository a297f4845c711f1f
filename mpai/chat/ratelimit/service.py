"""The rate-limit service: the configured limiter, the caller's bucket, the checks.

The chat pipeline calls :func:`enforce` (raises
:class:`~mpai.exceptions.RateLimited`); the DRF throttle calls :func:`check` (returns
the :class:`~mpai.chat.ratelimit.algorithm.Decision`). Both take the same bucket, so
HTTP and websocket messages share one budget. :func:`breaker_state` reports the
limiter's circuit breaker in the shape every dependency uses, for a health page.

The settings are ``MPAI["RATE_LIMIT"]``, already merged over their defaults by
:mod:`mpai.conf`; this module only checks the figures.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from mpai.chat.ratelimit.algorithm import Decision, RateLimiter
from mpai.chat.ratelimit.cache_bucket import CacheTokenBucket
from mpai.chat.ratelimit.redis_bucket import RedisTokenBucket, redis_client_of_cache
from mpai.conf import mpai_settings
from mpai.exceptions import RateLimited

__all__ = [
    "breaker_state",
    "bucket_key",
    "check",
    "enforce",
    "get_rate_limiter",
    "rate_limit_settings",
]


def rate_limit_settings() -> dict[str, Any]:
    """Return ``MPAI["RATE_LIMIT"]`` (complete: :mod:`mpai.conf` merged the defaults).

    Raises:
        ImproperlyConfigured: CAPACITY or REFILL_RATE not a positive number.
    """
    config: dict[str, Any] = mpai_settings.RATE_LIMIT
    for name in ("CAPACITY", "REFILL_RATE"):
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ImproperlyConfigured(f'MPAI["RATE_LIMIT"]["{name}"] must be a positive number.')
    return config


_limiters: dict[tuple[Any, ...], RateLimiter] = {}
_limiters_lock = threading.Lock()


def get_rate_limiter() -> RateLimiter:
    """Return the configured limiter (built once per configuration, shared by threads).

    Redis when ``RATE_LIMIT["REDIS_URL"]`` is set or the ``RATE_LIMIT["CACHE"]`` cache is
    django-redis (or Django's RedisCache); otherwise the cache bucket on that cache.

    Raises:
        ImproperlyConfigured: invalid RATE_LIMIT settings or an unknown cache alias.
    """
    config = rate_limit_settings()
    memo_key = tuple(sorted((k, repr(v)) for k, v in config.items()))
    limiter = _limiters.get(memo_key)
    if limiter is not None:
        return limiter
    with _limiters_lock:
        limiter = _limiters.get(memo_key)
        if limiter is None:
            limiter = _build(config)
            _limiters[memo_key] = limiter
    return limiter


def _build(config: dict[str, Any]) -> RateLimiter:
    common: dict[str, Any] = {
        "capacity": config["CAPACITY"],
        "refill_rate": config["REFILL_RATE"],
        "key_prefix": config["KEY_PREFIX"],
        "outage_backoff": config["OUTAGE_BACKOFF"],
    }
    if config["REDIS_URL"]:
        return RedisTokenBucket.from_url(config["REDIS_URL"], **common)
    alias = config["CACHE"]
    if redis_client_of_cache(alias) is not None:
        return RedisTokenBucket.from_cache(alias, **common)
    return CacheTokenBucket(alias, **common)


@receiver(setting_changed)
def _drop_limiters(*, setting: str, **kwargs: Any) -> None:
    # A new CACHES means new connections; a new MPAI may mean new figures.
    if setting in ("MPAI", "CACHES"):
        with _limiters_lock:
            _limiters.clear()


def bucket_key(*, user: Any = None, address: str | None = None, scope: str | None = None) -> str:
    """Return the bucket of a request: ``user:<pk>`` when authenticated, else ``ip:<address>``.

    An anonymous request without an address shares the bucket ``ip:unknown``. A
    ``scope`` gives a bucket of its own, ``<scope>:user:<pk>`` (the chat has none).
    """
    if user is not None and getattr(user, "is_authenticated", False):
        key = f"user:{user.pk}"
    else:
        key = f"ip:{address or 'unknown'}"
    return f"{scope}:{key}" if scope else key


def check(
    *, user: Any = None, address: str | None = None, cost: float = 1, scope: str | None = None
) -> Decision:
    """Take ``cost`` tokens from the caller's bucket if it holds them.

    Blocking (one Redis round trip): async callers run it in a thread.

    Args:
        user: the request's user; an authenticated one is limited per user.
        address: the client address, used for anonymous requests.
        cost: tokens this request costs (1 per chat message).
        scope: a bucket apart from the chat's (see :func:`bucket_key`).

    Returns:
        The :class:`Decision`: allowed or not (with ``retry_after`` in seconds);
        ``fail_open`` when the store was unreachable. With ``ENABLED`` False, allowed
        without touching any store.

    Raises:
        ImproperlyConfigured: invalid RATE_LIMIT settings.
        ValueError: ``cost`` outside (0, CAPACITY].
    """
    config = rate_limit_settings()
    if not config["ENABLED"]:
        return Decision(allowed=True, remaining=float(config["CAPACITY"]), retry_after=0.0)
    key = bucket_key(user=user, address=address, scope=scope)
    return get_rate_limiter().check(key, cost=cost)


def enforce(*, user: Any = None, address: str | None = None, cost: float = 1) -> Decision:
    """Take ``cost`` tokens from the caller's bucket, or raise :class:`RateLimited`.

    Blocking (one Redis round trip): async callers run it in a thread.

    Args:
        user: the request's user; an authenticated one is limited per user.
        address: the client address, used for anonymous requests.
        cost: tokens this request costs (1 per chat message).

    Returns:
        The :class:`Decision` (allowed; ``fail_open`` when Redis was unreachable).

    Raises:
        RateLimited: the bucket is empty; ``retry_after`` is in seconds, a float rounded
            up to the millisecond (never 0).
        ImproperlyConfigured: invalid RATE_LIMIT settings.
    """
    decision = check(user=user, address=address, cost=cost)
    if not decision.allowed:
        retry_after = max(0.001, math.ceil(decision.retry_after * 1000) / 1000)
        raise RateLimited(
            f"Too many messages; please try again in {math.ceil(retry_after)} s.",
            retry_after=retry_after,
        )
    return decision


def breaker_state() -> dict[str, Any] | None:
    """Return the limiter's circuit-breaker state, or None when rate limiting is off.

    Returns:
        The :meth:`~mpai.chat.ratelimit.outage.OutageBreaker.snapshot` of the
        configured limiter's store: ``dependency``, ``state`` (closed, open, half_open),
        ``since``, ``outages``, ``skipped``, ``errors``. No I/O.

    Raises:
        ImproperlyConfigured: invalid RATE_LIMIT settings.
    """
    if not rate_limit_settings()["ENABLED"]:
        return None
    return get_rate_limiter().outage.snapshot()
