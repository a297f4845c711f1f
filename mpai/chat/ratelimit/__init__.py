"""Rate limiting: one token bucket per user or client address.

A bucket holds up to ``CAPACITY`` tokens and gains ``REFILL_RATE`` tokens per second;
a chat message costs one token. A full bucket therefore allows a burst of ``CAPACITY``
messages, then ``REFILL_RATE`` messages per second (README, "The chat pipeline", "Rate
limit"; a check costs about one Redis round trip, README "Benchmarks"). The settings
live in ``MPAI["RATE_LIMIT"]`` (README, "Settings").

- :mod:`.algorithm`: the decision, the limiter interface and the pure arithmetic.
- :mod:`.redis_bucket`: the atomic bucket in Redis, one Lua script per check (DRF
  #5181, #8127), with a deadline so a script Redis runs after the client gave up
  charges nothing.
- :mod:`.cache_bucket`: the same bucket over a Django cache, for one process (the
  embedded default).
- :mod:`.outage`: failing open through the circuit breaker the cache layers use
  (:mod:`mpai.cache.breaker`).
- :mod:`.service`: the configured limiter, :func:`bucket_key`, :func:`check`,
  :func:`enforce` and :func:`breaker_state`.
"""

from mpai.chat.ratelimit.algorithm import Decision, RateLimiter, TokenBucket
from mpai.chat.ratelimit.cache_bucket import CacheTokenBucket
from mpai.chat.ratelimit.outage import OutageBreaker
from mpai.chat.ratelimit.redis_bucket import (
    LUA_TOKEN_BUCKET,
    LUA_TOKEN_BUCKET_SHA,
    RedisTokenBucket,
)
from mpai.chat.ratelimit.service import (
    breaker_state,
    bucket_key,
    check,
    enforce,
    get_rate_limiter,
    rate_limit_settings,
)

__all__ = [
    "LUA_TOKEN_BUCKET",
    "LUA_TOKEN_BUCKET_SHA",
    "CacheTokenBucket",
    "Decision",
    "OutageBreaker",
    "RateLimiter",
    "RedisTokenBucket",
    "TokenBucket",
    "breaker_state",
    "bucket_key",
    "check",
    "enforce",
    "get_rate_limiter",
    "rate_limit_settings",
]
