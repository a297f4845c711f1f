"""The atomic token bucket in Redis: one Lua script per check.

The whole update is one script run with EVALSHA (EVAL when the server does not know the
script yet): one round trip, atomic across threads and processes. The clock is Redis'
own ``TIME``, so workers with skewed clocks agree. DRF's throttles and django-ratelimit
read, compute and write in separate commands and let extra requests through under
concurrency (encode/django-rest-framework #5181, #8127).

A Redis that hangs (accepts connections, never answers) still holds the EVALSHA of a
check the client gave up on, and runs it when it resumes: that would charge a request
that was already let in for free, and refuse the user's next one. So each check carries
a deadline on Redis' clock (when the client's read timeout ends, less a margin), and the
script charges nothing when ``TIME`` is past it. The client knows Redis' clock as an
offset from its monotonic clock, a lower bound taken from every reply (and one ``TIME``
before its first check), so a deadline is never later than the client's own give-up
time; a reply that arrives yet says "too late" allows the request without a charge,
like an outage.

Outages fail open through the limiter's circuit breaker (:mod:`.outage`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache as DjangoBuiltinRedisCache
from django.core.exceptions import ImproperlyConfigured
from django_redis import get_redis_connection
from django_redis.cache import RedisCache as DjangoRedisCache
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from mpai.cache.breaker import CLOSED
from mpai.chat.ratelimit.algorithm import Decision, RateLimiter
from mpai.chat.ratelimit.outage import OutageBreaker

logger = logging.getLogger("mpai.chat.ratelimit")

__all__ = [
    "DEADLINE_SHARE",
    "LUA_TOKEN_BUCKET",
    "LUA_TOKEN_BUCKET_SHA",
    "OFFSET_REFRESH",
    "REDIS_URL_TIMEOUT",
    "RedisTokenBucket",
    "redis_client_of_cache",
]

# Connect and read timeouts (s) of a client built from RATE_LIMIT["REDIS_URL"]; the
# URL's own ``?socket_timeout=…&socket_connect_timeout=…`` take precedence.
REDIS_URL_TIMEOUT = 0.5

# The step of mpai.chat.ratelimit.algorithm.take, inside Redis; keep the two in step.
# KEYS[1]: the bucket, a hash {tokens, ts}. ARGV: capacity (tokens), rate (tokens/s),
# cost (tokens), deadline (Redis-clock seconds; 0 = none). Returns {allowed 1|0|-1,
# remaining, retry_after, now} with the floats as strings (Redis turns Lua numbers into
# integers); -1: run after the deadline, nothing charged. A rejection writes nothing.
LUA_TOKEN_BUCKET = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local deadline = tonumber(ARGV[4]) or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local clock = string.format('%.17g', now)
if deadline > 0 and now > deadline then
  return {-1, '0', '0', clock}
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
local available = math.min(capacity, tokens + elapsed * rate)
if available < cost then
  local wait = (cost - available) / rate
  if ts > now then wait = wait + (ts - now) end
  return {0, string.format('%.17g', available), string.format('%.17g', wait), clock}
end
local left = available - cost
local new_ts = now
if ts > now then new_ts = ts end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', left),
           'ts', string.format('%.17g', new_ts))
local ttl_ms = math.ceil(((capacity - left) / rate + (new_ts - now)) * 1000)
if ttl_ms < 1 then ttl_ms = 1 end
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return {1, string.format('%.17g', left), '0', clock}
"""

LUA_TOKEN_BUCKET_SHA = hashlib.sha1(LUA_TOKEN_BUCKET.encode()).hexdigest()

#: Share of the client's read timeout a check's script has to start in Redis; the rest
#: covers the reply's way back, so a reply Redis sends in time is not given up on.
DEADLINE_SHARE = 0.9
#: Seconds after which a lower clock-offset sample replaces a higher one (Redis' clock
#: was stepped back, or another server answers the same address).
OFFSET_REFRESH = 10.0


def _read_timeout(client: Any) -> float | None:
    """The client's socket read timeout in seconds (None: it waits for ever)."""
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None)
    timeout = kwargs.get("socket_timeout") if isinstance(kwargs, dict) else None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        return None
    return float(timeout)


def redis_client_of_cache(alias: str) -> Redis | None:
    """Return the redis-py client behind cache ``alias``, or None when it is not Redis.

    Raises:
        ImproperlyConfigured: the alias is unknown or its backend cannot be built.
    """
    try:
        cache = caches[alias]
    except Exception as exc:  # InvalidCacheBackendError and import errors
        raise ImproperlyConfigured(f'MPAI["RATE_LIMIT"]["CACHE"]: {exc}') from exc
    if isinstance(cache, DjangoRedisCache):
        return cast(Redis, get_redis_connection(alias))
    if isinstance(cache, DjangoBuiltinRedisCache):
        # Django's own Redis backend: its (private) client exposes the pool's client.
        return cast(Redis, cast(Any, cache)._cache.get_client(write=True))
    return None


class RedisTokenBucket(RateLimiter):
    """The atomic token bucket in Redis: one EVALSHA per check, clock from ``TIME``.

    Each bucket is a hash ``<key_prefix><key>`` with fields ``tokens`` and ``ts``
    (seconds, Redis clock) that expires when it would be full again, so idle buckets
    cost no memory.

    Args:
        client: a redis-py client, or a callable returning one (resolved on first use,
            e.g. the django-redis connection of a cache alias).
        capacity: bucket size in tokens.
        refill_rate: tokens per second.
        key_prefix: prefix of the Redis keys.
        outage_backoff: seconds the circuit breaker skips Redis after a failure, before
            one check probes it again.
        breaker_clock: the circuit breaker's monotonic clock in seconds (injectable
            for tests; the deadlines always use ``time.monotonic``).
    """

    def __init__(
        self,
        client: Redis | Callable[[], Redis],
        *,
        capacity: float,
        refill_rate: float,
        key_prefix: str = "mpai:rl:",
        outage_backoff: float = 1.0,
        breaker_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(capacity=capacity, refill_rate=refill_rate, key_prefix=key_prefix)
        self._client: Redis | None = client if isinstance(client, Redis) else None
        self._client_factory = None if isinstance(client, Redis) else client
        self.outage = OutageBreaker("Redis", outage_backoff, breaker_clock)
        self._breaker = self.outage.breaker
        # Redis' clock minus time.monotonic() (s), a lower bound; None until measured.
        self._offset: float | None = None
        self._offset_at = 0.0

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisTokenBucket:
        """Build a bucket on its own client for ``url`` (``redis://host:port/db``).

        The client fails fast: 0.5 s connect and read timeouts unless the URL sets them,
        no retries (an outage fails open instead of stalling the chat).
        """
        client = Redis.from_url(
            url,
            socket_connect_timeout=REDIS_URL_TIMEOUT,
            socket_timeout=REDIS_URL_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, **kwargs)

    @classmethod
    def from_cache(cls, alias: str, **kwargs: Any) -> RedisTokenBucket:
        """Build a bucket on the Redis connection of the Django cache ``alias``.

        Raises:
            ImproperlyConfigured: the cache is neither django-redis nor Django's RedisCache.
        """
        if redis_client_of_cache(alias) is None:
            raise ImproperlyConfigured(f"Cache {alias!r} is not a Redis cache.")
        return cls(lambda: cast(Redis, redis_client_of_cache(alias)), **kwargs)

    @property
    def client(self) -> Redis:
        """The redis-py client (resolved from the factory on first use)."""
        if self._client is None:
            assert self._client_factory is not None
            self._client = self._client_factory()
        return self._client

    def check(self, key: str, *, cost: float = 1) -> Decision:
        """Take ``cost`` tokens (see :meth:`RateLimiter.check`).

        One EVALSHA, plus one ``TIME`` before the first check (the clock offset). A
        check the client gives up on (read timeout) fails open and charges nothing,
        even if Redis runs its script later (module docs: a Redis that hangs).
        """
        self._validate_cost(cost)
        if self._breaker.state is not CLOSED and not self.outage.enter():
            return self._fail_open()
        name = self.key_prefix + key
        try:
            client = self.client
            timeout = _read_timeout(client)
            if timeout is not None and self._offset is None:
                self._measure_offset(client)
            try:
                reply = client.evalsha(LUA_TOKEN_BUCKET_SHA, 1, name, *self._args(cost, timeout))
            except NoScriptError:
                # First use on this server (or after a restart / SCRIPT FLUSH): EVAL
                # runs the script and caches it, so the next check is one EVALSHA again.
                reply = client.eval(LUA_TOKEN_BUCKET, 1, name, *self._args(cost, timeout))
        except (RedisError, OSError) as exc:
            self.outage.failed(exc)
            return self._fail_open()
        except BaseException:
            self.outage.aborted()
            raise
        self.outage.succeeded()
        allowed, remaining, retry_after, clock = cast(list[Any], reply)
        self._sample_offset(float(clock))
        if int(allowed) < 0:
            # Redis ran the script after its deadline: nothing was charged, so the
            # request goes ahead as in an outage (the client would have given up).
            logger.debug("Rate limiter: a check reached Redis too late; allowed uncharged.")
            return self._fail_open()
        return Decision(
            allowed=bool(allowed), remaining=float(remaining), retry_after=float(retry_after)
        )

    def _args(self, cost: float, timeout: float | None) -> tuple[float, ...]:
        """The script's ARGV: capacity, rate, cost and the deadline (0 = none)."""
        deadline = 0.0
        if timeout is not None and self._offset is not None:
            deadline = time.monotonic() + self._offset + timeout * DEADLINE_SHARE
        return (self.capacity, self.refill_rate, cost, deadline)

    def _measure_offset(self, client: Redis) -> None:
        seconds, micros = cast(tuple[int, int], client.time())
        self._sample_offset(seconds + micros / 1_000_000)

    def _sample_offset(self, redis_now: float) -> None:
        # redis_now was read before this moment, so the sample is a lower bound of the
        # true offset: the highest recent one is the closest (threads may race here;
        # every sample is a valid bound).
        now = time.monotonic()
        sample = redis_now - now
        if self._offset is None or sample > self._offset or now - self._offset_at > OFFSET_REFRESH:
            self._offset = sample
            self._offset_at = now
