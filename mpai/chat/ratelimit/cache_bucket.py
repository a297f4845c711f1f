"""The token bucket over a Django cache, for one process (the embedded default).

Without Redis, the limiter runs on the default cache (the README's "The chat pipeline":
the same bucket, for one process). Its read-compute-write is serialised by a
process-local lock, which is correct for LocMemCache in one process and not across
processes: a cache shared by several processes would let extra requests through, as
DRF's own throttles do (encode/django-rest-framework #5181). Use Redis there.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from django.core.cache import caches

from mpai.cache.breaker import CLOSED
from mpai.chat.ratelimit.algorithm import Decision, RateLimiter, TokenBucket
from mpai.chat.ratelimit.outage import OutageBreaker

__all__ = ["CacheTokenBucket"]

# Serialises the read-compute-write of every CacheTokenBucket in this process (the
# Django cache objects are per thread; the LocMemCache storage behind them is shared).
_cache_lock = threading.Lock()


class CacheTokenBucket(RateLimiter):
    """The token bucket over a Django cache, atomic within one process only.

    The cache holds ``(tokens, stamp)`` per key, expiring when the bucket would be full.

    Args:
        alias: the Django cache alias.
        capacity: bucket size in tokens.
        refill_rate: tokens per second.
        key_prefix: prefix of the cache keys.
        clock: the bucket's clock in seconds (injectable for tests); ``time.time`` by
            default, so processes restarted on one cache agree.
        outage_backoff: seconds the circuit breaker skips the cache after a failure,
            before one check probes it again.
        breaker_clock: the circuit breaker's monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        alias: str = "default",
        *,
        capacity: float,
        refill_rate: float,
        key_prefix: str = "mpai:rl:",
        clock: Callable[[], float] = time.time,
        outage_backoff: float = 1.0,
        breaker_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(capacity=capacity, refill_rate=refill_rate, key_prefix=key_prefix)
        self.alias = alias
        self.bucket = TokenBucket(capacity, refill_rate, clock)
        self.outage = OutageBreaker(f"cache {alias!r}", outage_backoff, breaker_clock)
        self._breaker = self.outage.breaker

    @property
    def clock(self) -> Callable[[], float]:
        """The bucket's clock."""
        return self.bucket.clock

    def check(self, key: str, *, cost: float = 1) -> Decision:
        """Take ``cost`` tokens (see :meth:`RateLimiter.check`)."""
        self._validate_cost(cost)
        if self._breaker.state is not CLOSED and not self.outage.enter():
            return self._fail_open()
        name = self.key_prefix + key
        cache = caches[self.alias]  # an unknown alias is a configuration error: raise
        try:
            with _cache_lock:
                step = self.bucket.take(cache.get(name), cost)
                if step.allowed:
                    cache.set(name, (step.tokens, step.stamp), timeout=max(1, math.ceil(step.ttl)))
        except Exception as exc:  # any cache backend's failure: fail open, never raise
            self.outage.failed(exc)
            return self._fail_open()
        except BaseException:
            self.outage.aborted()
            raise
        self.outage.succeeded()
        return Decision(
            allowed=step.allowed, remaining=step.remaining, retry_after=step.retry_after
        )
