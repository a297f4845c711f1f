"""Rate limiting: one token bucket per user or client address.

A bucket holds up to ``CAPACITY`` tokens and gains ``REFILL_RATE`` tokens per second;
a chat message costs one token. A full bucket therefore allows a burst of
``CAPACITY`` messages, then ``REFILL_RATE`` messages per second. The seed asks for a
"token bucket algorithm to prevent abuse" with "<0.1ms per check"; the settings live
in ``MPAI["RATE_LIMIT"]`` (see :mod:`mpai.conf`).

Two backends share one interface, :meth:`RateLimiter.check`:

- :class:`RedisTokenBucket`, used whenever Redis is configured: the whole update is one
  Lua script run with EVALSHA (EVAL when the server does not know the script yet), so
  one round trip, atomic across threads and processes. The clock is Redis' own
  ``TIME``, so workers with skewed clocks agree. This is the ARCHITECTURE.md pitfall
  "Token buckets in Redis": DRF's throttles and django-ratelimit read, compute and
  write in separate commands and let extra requests through under concurrency
  (encode/django-rest-framework #5181, #8127).
- :class:`CacheTokenBucket`, the embedded default (CONTRACTS.md: "the rate limiter on
  the default cache"): the same arithmetic over a Django cache under a process-local
  lock, correct for one process (LocMemCache), not across processes.

Both keep the bucket as ``(tokens, stamp)``: the tokens left at ``stamp`` (seconds).
A rejected request writes nothing, so it never advances the refill timestamp (which
would lose the refill accrued so far), and the timestamp never moves backwards: when
the clock reads earlier than the stamp, no time has passed.

Outages: when Redis cannot be reached the limiter *fails open* (allows the request,
``Decision.fail_open`` is True), logs one warning per outage and one line when Redis
is back, and only retries Redis every ``OUTAGE_BACKOFF`` seconds meanwhile. Rate
limiting protects the provider budget; it must not turn a Redis outage into a chat
outage (ARCHITECTURE.md "Read through, fail soft").

A Redis that hangs (accepts connections, never answers) still holds the EVALSHA of a
check the client gave up on, and runs it when it resumes: that would charge a request
that was already let in for free, and refuse the user's next one. So each check
carries a deadline on Redis' clock (when the client's read timeout ends, less a
margin), and the script charges nothing when ``TIME`` is past it. The client knows
Redis' clock as an offset from its monotonic clock, a lower bound taken from every
reply (and one ``TIME`` before its first check), so a deadline is never later than
the client's own give-up time; a reply that arrives yet says "too late" allows the
request without a charge, like an outage.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache as DjangoBuiltinRedisCache
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django_redis import get_redis_connection
from django_redis.cache import RedisCache as DjangoRedisCache
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from mpai.conf import DEFAULTS, mpai_settings
from mpai.exceptions import RateLimited

logger = logging.getLogger(__name__)

__all__ = [
    "CacheTokenBucket",
    "Decision",
    "RateLimiter",
    "RedisTokenBucket",
    "bucket_key",
    "enforce",
    "get_rate_limiter",
    "rate_limit_settings",
]

# Connect and read timeouts (s) of a client built from RATE_LIMIT["REDIS_URL"]; the
# URL's own ``?socket_timeout=…&socket_connect_timeout=…`` take precedence.
REDIS_URL_TIMEOUT = 0.5


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one check.

    Attributes:
        allowed: True when the request may go ahead (its cost has been taken).
        remaining: tokens left in the bucket after this check (float, may be fractional).
        retry_after: seconds until the rejected request would be allowed; 0.0 when allowed.
        fail_open: True when the limiter could not reach its store and allowed by default.
    """

    allowed: bool
    remaining: float
    retry_after: float
    fail_open: bool = False


class RateLimiter(ABC):
    """A token bucket per key.

    Args:
        capacity: bucket size in tokens (> 0).
        refill_rate: tokens added per second (> 0).
        key_prefix: prepended to every key in the store.

    Raises:
        ValueError: capacity or refill_rate not positive.
    """

    def __init__(self, *, capacity: float, refill_rate: float, key_prefix: str = "") -> None:
        if not capacity > 0 or not refill_rate > 0:
            raise ValueError("capacity and refill_rate must be positive numbers")
        self.capacity = capacity
        self.refill_rate = refill_rate
        self.key_prefix = key_prefix

    @abstractmethod
    def check(self, key: str, *, cost: float = 1) -> Decision:
        """Take ``cost`` tokens from the bucket ``key`` if it holds that many.

        Args:
            key: the bucket, e.g. ``user:42`` or ``ip:203.0.113.9`` (see :func:`bucket_key`).
            cost: tokens this request costs, 0 < cost <= capacity.

        Returns:
            The :class:`Decision`. Never raises for an unreachable store (fail open).

        Raises:
            ValueError: ``cost`` outside (0, capacity] (it could never be allowed).
        """

    def _validate_cost(self, cost: float) -> None:
        if not 0 < cost <= self.capacity:
            raise ValueError(f"cost must be in (0, {self.capacity}], got {cost!r}")

    def _fail_open(self) -> Decision:
        return Decision(
            allowed=True, remaining=float(self.capacity), retry_after=0.0, fail_open=True
        )


# --- the arithmetic, shared by the cache bucket and mirrored by the Lua script -------


@dataclass(frozen=True, slots=True)
class _Step:
    allowed: bool
    remaining: float
    retry_after: float
    tokens: float  # state to store when allowed
    stamp: float
    ttl: float  # seconds until the stored bucket is full again (its expiry)


def _take(
    tokens: float, stamp: float, now: float, capacity: float, rate: float, cost: float
) -> _Step:
    """One token-bucket step; keep in step with :data:`LUA_TOKEN_BUCKET`."""
    elapsed = max(0.0, now - stamp)  # the clock read earlier than the stamp: no time passed
    available = min(capacity, tokens + elapsed * rate)
    if available < cost:
        # Wait for the missing tokens, plus, if the stamp is ahead of the clock, for the
        # clock to reach it (accrual starts there).
        wait = (cost - available) / rate + max(0.0, stamp - now)
        return _Step(False, available, wait, tokens, stamp, 0.0)
    left = available - cost
    new_stamp = max(stamp, now)  # never backwards
    ttl = (capacity - left) / rate + (new_stamp - now)
    return _Step(True, left, 0.0, left, new_stamp, ttl)


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


class _OutageGate:
    """Fail-open bookkeeping: one warning per outage, retry every ``backoff`` seconds."""

    def __init__(self, backoff: float, what: str) -> None:
        self.backoff = backoff
        self.what = what
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0

    def closed(self) -> bool:
        """True while an outage is recent enough that the store should not be tried."""
        return self._down and time.monotonic() < self._retry_at

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            first = not self._down
            self._down = True
            self._retry_at = time.monotonic() + self.backoff
        if first:
            logger.warning(
                "Rate limiter: %s unavailable (%s: %s); allowing requests (fail open) "
                "until it is back.",
                self.what,
                type(exc).__name__,
                exc,
            )

    def succeeded(self) -> None:
        if not self._down:
            return
        with self._lock:
            was_down, self._down = self._down, False
        if was_down:
            logger.info("Rate limiter: %s is back; limiting again.", self.what)


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
        outage_backoff: seconds between attempts to reach Redis during an outage.
    """

    def __init__(
        self,
        client: Redis | Callable[[], Redis],
        *,
        capacity: float,
        refill_rate: float,
        key_prefix: str = "mpai:rl:",
        outage_backoff: float = 1.0,
    ) -> None:
        super().__init__(capacity=capacity, refill_rate=refill_rate, key_prefix=key_prefix)
        self._client: Redis | None = client if isinstance(client, Redis) else None
        self._client_factory = None if isinstance(client, Redis) else client
        self._gate = _OutageGate(outage_backoff, "Redis")
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
        if _redis_client_of_cache(alias) is None:
            raise ImproperlyConfigured(f"Cache {alias!r} is not a Redis cache.")
        return cls(lambda: cast(Redis, _redis_client_of_cache(alias)), **kwargs)

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
        if self._gate.closed():
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
            self._gate.failed(exc)
            return self._fail_open()
        self._gate.succeeded()
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


# Serialises the read-compute-write of every CacheTokenBucket in this process (the
# Django cache objects are per thread; the LocMemCache storage behind them is shared).
_cache_lock = threading.Lock()


class CacheTokenBucket(RateLimiter):
    """The token bucket over a Django cache, atomic within one process only.

    For the embedded default (LocMemCache, one process). Over a cache shared by several
    processes it would let extra requests through (DRF #5181): use Redis there.

    Args:
        alias: the Django cache alias.
        capacity: bucket size in tokens.
        refill_rate: tokens per second.
        key_prefix: prefix of the cache keys.
        clock: seconds since the epoch (injectable for tests); defaults to ``time.time``.
    """

    def __init__(
        self,
        alias: str = "default",
        *,
        capacity: float,
        refill_rate: float,
        key_prefix: str = "mpai:rl:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(capacity=capacity, refill_rate=refill_rate, key_prefix=key_prefix)
        self.alias = alias
        self.clock = clock
        self._gate = _OutageGate(0.0, f"cache {alias!r}")

    def check(self, key: str, *, cost: float = 1) -> Decision:
        self._validate_cost(cost)
        name = self.key_prefix + key
        cache = caches[self.alias]
        try:
            with _cache_lock:
                now = self.clock()
                state = cache.get(name)
                tokens, stamp = state if state is not None else (float(self.capacity), now)
                step = _take(tokens, stamp, now, self.capacity, self.refill_rate, cost)
                if step.allowed:
                    cache.set(name, (step.tokens, step.stamp), timeout=max(1, math.ceil(step.ttl)))
        except Exception as exc:  # any cache backend's failure: fail open, never raise
            self._gate.failed(exc)
            return self._fail_open()
        self._gate.succeeded()
        return Decision(
            allowed=step.allowed, remaining=step.remaining, retry_after=step.retry_after
        )


# --- configuration --------------------------------------------------------------------


def rate_limit_settings() -> dict[str, Any]:
    """Return ``MPAI["RATE_LIMIT"]`` merged over its defaults.

    Raises:
        ImproperlyConfigured: CAPACITY or REFILL_RATE not a positive number.
    """
    config = {**DEFAULTS["RATE_LIMIT"], **(mpai_settings.RATE_LIMIT or {})}
    for name in ("CAPACITY", "REFILL_RATE"):
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ImproperlyConfigured(f'MPAI["RATE_LIMIT"]["{name}"] must be a positive number.')
    return config


def _redis_client_of_cache(alias: str) -> Redis | None:
    """The redis-py client behind cache ``alias``, or None when it is not a Redis cache."""
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
    }
    if config["REDIS_URL"]:
        return RedisTokenBucket.from_url(
            config["REDIS_URL"], outage_backoff=config["OUTAGE_BACKOFF"], **common
        )
    alias = config["CACHE"]
    if _redis_client_of_cache(alias) is not None:
        return RedisTokenBucket.from_cache(alias, outage_backoff=config["OUTAGE_BACKOFF"], **common)
    return CacheTokenBucket(alias, **common)


@receiver(setting_changed)
def _drop_limiters(*, setting: str, **kwargs: Any) -> None:
    # A new CACHES means new connections; a new MPAI may mean new figures.
    if setting in ("MPAI", "CACHES"):
        with _limiters_lock:
            _limiters.clear()


# --- the service used by the chat pipeline -----------------------------------------------


def bucket_key(*, user: Any = None, address: str | None = None) -> str:
    """Return the bucket of a request: ``user:<pk>`` when authenticated, else ``ip:<address>``.

    An anonymous request without an address shares the bucket ``ip:unknown``.
    """
    if user is not None and getattr(user, "is_authenticated", False):
        return f"user:{user.pk}"
    return f"ip:{address or 'unknown'}"


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
    config = rate_limit_settings()
    if not config["ENABLED"]:
        return Decision(allowed=True, remaining=float(config["CAPACITY"]), retry_after=0.0)
    decision = get_rate_limiter().check(bucket_key(user=user, address=address), cost=cost)
    if not decision.allowed:
        retry_after = max(0.001, math.ceil(decision.retry_after * 1000) / 1000)
        raise RateLimited(
            f"Too many messages; please try again in {math.ceil(retry_after)} s.",
            retry_after=retry_after,
        )
    return decision
