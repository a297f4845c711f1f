"""Quotas per membership plan: ``MPAI["QUOTAS"]``, :func:`check_quota` and the counters.

``MPAI["QUOTAS"]`` maps a plan name (``MembershipAdapter.plan_for(user)``) to its
limits, ``messages_per_day``, ``tokens_per_day`` and ``tokens_per_month`` (None =
unlimited); ``"default"`` applies to users without a plan or with a plan not listed.
Staff users are unlimited unless ``MPAI["QUOTAS_APPLY_TO_STAFF"]``. Windows are
calendar days and months in UTC or the user's zone (:mod:`mpai.usage.windows`). The
plan is asked on every check, so a plan change takes effect on the next message.

The counters live in the rate limiter's Redis (``RATE_LIMIT["REDIS_URL"]``, else the
``RATE_LIMIT["CACHE"]`` cache's connection): a hash per user and day (``m`` messages,
``t`` tokens) and per user and month (``t``), expiring an hour after their window.
:func:`check_quota` is one Lua script, one round trip: it refuses when a counter has
reached its limit and otherwise counts the message, atomically across processes. Tokens
are only known after the reply, so :func:`charge_tokens` adds them then: the check
refuses once the tokens *used* reach the limit, and the reply that crosses it is
finished (a reply may overshoot a token limit once). A counter Redis does not hold (a
new window, a Redis restart, a plan that just got limits) is first filled from the
usage rows, so a restart loses nothing recorded.

When Redis is down (or none is configured) the check reads the usage rows instead (one
query; exact up to the turns still streaming), behind a circuit breaker so an outage
costs one timeout per ``RATE_LIMIT["OUTAGE_BACKOFF"]`` seconds. If the database fails
too, the message is allowed (fail open). Tokens charged while Redis was down are in the
rows but not in the counters of that window.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, cast

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils import timezone
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from mpai.cache.breaker import CLOSED, HALF_OPEN, CircuitBreaker
from mpai.chat.ratelimit.redis_bucket import REDIS_URL_TIMEOUT, redis_client_of_cache
from mpai.conf import mpai_settings
from mpai.exceptions import MpaiError
from mpai.usage import store
from mpai.usage.windows import UTC, Windows, user_windows

logger = logging.getLogger("mpai.usage")

__all__ = [
    "KEY_PREFIX",
    "LIMIT_NAMES",
    "Limits",
    "QuotaExceeded",
    "QuotaStatus",
    "charge_tokens",
    "check_quota",
    "limits_for",
    "plan_of",
]

#: Prefix of the counters' Redis keys.
KEY_PREFIX = "mpai:quota:"
#: Seconds a counter outlives its window (late charges of a reply that crossed midnight).
GRACE_SECONDS = 3600
LIMIT_NAMES = ("messages_per_day", "tokens_per_day", "tokens_per_month")
DEFAULT_QUOTA = "default"


class QuotaExceeded(MpaiError):
    """The user's plan quota is used up: HTTP 429 with ``Retry-After``, like
    ``rate_limited`` (not its subclass, so ``mpai_rate_limited_total`` does not count
    it); ``retry_after`` is the seconds until the window resets.

    Attributes:
        limit: the limit reached, one of :data:`LIMIT_NAMES`.
        plan: the ``MPAI["QUOTAS"]`` key applied (``default`` without a plan).
    """

    code = "quota_exceeded"
    status_code = 429
    default_detail = "You have reached your plan's usage limit."

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: float | None = None,
        limit: str = "",
        plan: str = DEFAULT_QUOTA,
    ) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.limit = limit
        self.plan = plan


@dataclass(frozen=True, slots=True)
class Limits:
    """A plan's limits (None = unlimited): messages per day, tokens per day and month."""

    messages_per_day: int | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None

    @property
    def unlimited(self) -> bool:
        return (
            self.messages_per_day is None
            and self.tokens_per_day is None
            and self.tokens_per_month is None
        )

    def as_dict(self) -> dict[str, int | None]:
        """``{"messages_per_day", "tokens_per_day", "tokens_per_month"}``."""
        return {name: getattr(self, name) for name in LIMIT_NAMES}


UNLIMITED = Limits()


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """The outcome of an allowed :func:`check_quota`.

    Attributes:
        plan: the user's plan name (None: no plan).
        quota: the ``MPAI["QUOTAS"]`` key applied.
        limits: the limits applied (unlimited for staff, anonymous users, no quota).
        messages: messages counted today including this one (None: not counted).
        day_tokens, month_tokens: tokens used so far (None: not counted).
        source: ``"none"`` (no limit), ``"redis"``, ``"database"`` (Redis down or not
            configured) or ``"fail_open"`` (neither answered).
    """

    plan: str | None
    quota: str
    limits: Limits
    messages: int | None = None
    day_tokens: int | None = None
    month_tokens: int | None = None
    source: str = "none"


def plan_of(user: Any) -> str | None:
    """The user's plan: ``MembershipAdapter.plan_for(user)`` (None when it has none or
    fails; a failure is logged)."""
    from mpai.tools.membership import get_membership_adapter

    if not getattr(user, "is_authenticated", False):
        return None
    try:
        plan = get_membership_adapter().plan_for(user)
    except Exception:
        logger.exception("mpai usage: the membership adapter's plan_for failed")
        return None
    return str(plan) if plan else None


def _limit(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(f"{where} must be an int >= 0 or None, not {value!r}.")
    return value


def limits_for(user: Any, plan: str | None = None) -> tuple[str, Limits]:
    """The quota key and the :class:`Limits` for ``user`` holding ``plan``.

    Raises:
        ImproperlyConfigured: a limit that is not an int >= 0 or None.
    """
    quotas: dict[str, Any] = mpai_settings.QUOTAS or {}
    key = plan if plan is not None and plan in quotas else DEFAULT_QUOTA
    if getattr(user, "is_staff", False) and not mpai_settings.QUOTAS_APPLY_TO_STAFF:
        return key, UNLIMITED
    entry = quotas.get(key) or {}
    return key, Limits(
        **{
            name: _limit(entry.get(name), f'MPAI["QUOTAS"][{key!r}][{name!r}]')
            for name in LIMIT_NAMES
        }
    )


# --- Redis ----------------------------------------------------------------------------

# KEYS[1]: the day hash {m, t}, KEYS[2]: the month hash {t}. ARGV: messages/day,
# tokens/day, tokens/month limits (-1 = none), the day's and the month's expiry (Unix s),
# then optionally the starting m, day t, month t (from the database; HSETNX, so a racing
# filler adds nothing). Returns {outcome, m, day t, month t}: outcome 0 allowed (m
# counted), 1/2/3 the limit reached (nothing written), -1 a counter is missing: call
# again with the starting figures.
LUA_QUOTA_CHECK = """
if ARGV[6] then
  redis.call('HSETNX', KEYS[1], 'm', ARGV[6])
  redis.call('HSETNX', KEYS[1], 't', ARGV[7])
  redis.call('HSETNX', KEYS[2], 't', ARGV[8])
  redis.call('EXPIREAT', KEYS[1], ARGV[4])
  redis.call('EXPIREAT', KEYS[2], ARGV[5])
elseif redis.call('HEXISTS', KEYS[1], 'm') == 0 or redis.call('HEXISTS', KEYS[2], 't') == 0 then
  return {-1, 0, 0, 0}
end
local m = tonumber(redis.call('HGET', KEYS[1], 'm')) or 0
local dt = tonumber(redis.call('HGET', KEYS[1], 't')) or 0
local mt = tonumber(redis.call('HGET', KEYS[2], 't')) or 0
local ml = tonumber(ARGV[1])
local dl = tonumber(ARGV[2])
local tl = tonumber(ARGV[3])
if ml >= 0 and m >= ml then return {1, m, dt, mt} end
if dl >= 0 and dt >= dl then return {2, m, dt, mt} end
if tl >= 0 and mt >= tl then return {3, m, dt, mt} end
m = redis.call('HINCRBY', KEYS[1], 'm', 1)
return {0, m, dt, mt}
"""
LUA_QUOTA_CHECK_SHA = hashlib.sha1(LUA_QUOTA_CHECK.encode()).hexdigest()

# KEYS: the day and month hashes; ARGV[1]: tokens. Adds them to the counters that exist
# (a missing one is filled from the database on the next check, which has them).
LUA_QUOTA_CHARGE = """
for i = 1, 2 do
  if redis.call('HEXISTS', KEYS[i], 't') == 1 then
    redis.call('HINCRBY', KEYS[i], 't', ARGV[1])
  end
end
return 1
"""
LUA_QUOTA_CHARGE_SHA = hashlib.sha1(LUA_QUOTA_CHARGE.encode()).hexdigest()


class _Counters:
    """The counters' Redis client and its circuit breaker."""

    def __init__(self, client: Redis | Any, backoff: float) -> None:
        self._client = client if isinstance(client, Redis) else None
        self._factory = None if isinstance(client, Redis) else client
        self.breaker = CircuitBreaker(1, backoff)

    @property
    def client(self) -> Redis:
        if self._client is None:
            self._client = cast(Redis, self._factory())  # type: ignore[misc]
        return self._client

    def enter(self) -> bool:
        return self.breaker.state is CLOSED or self.breaker.request_probe()

    def ok(self) -> None:
        if self.breaker.state is not CLOSED:
            seconds = self.breaker.close()
            logger.info("Quotas: Redis is back after %.1f s; counting there again.", seconds)

    def aborted(self) -> None:
        """A call ended by something that is no outage: a half-open probe must not
        leave the breaker half-open for ever, so it opens again for a period."""
        if self.breaker.state == HALF_OPEN:
            self.breaker.record_failure()

    def failed(self, exc: BaseException) -> None:
        if self.breaker.record_failure():
            logger.warning(
                "Quotas: Redis unavailable (%s: %s); checking the usage rows instead.",
                type(exc).__name__,
                exc,
            )

    def run(self, sha: str, script: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return self.client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            return self.client.eval(script, len(keys), *keys, *args)


_counters: dict[tuple[Any, ...], _Counters | None] = {}
_counters_lock = threading.Lock()


def _get_counters() -> _Counters | None:
    """The configured counters (the rate limiter's Redis), or None without Redis."""
    config = mpai_settings.RATE_LIMIT
    memo = (config.get("REDIS_URL"), config.get("CACHE"), config.get("OUTAGE_BACKOFF"))
    if memo in _counters:
        return _counters[memo]
    with _counters_lock:
        if memo not in _counters:
            backoff = float(config.get("OUTAGE_BACKOFF") or 1.0)
            counters: _Counters | None = None
            if config.get("REDIS_URL"):
                client = Redis.from_url(
                    config["REDIS_URL"],
                    socket_connect_timeout=REDIS_URL_TIMEOUT,
                    socket_timeout=REDIS_URL_TIMEOUT,
                    retry=Retry(NoBackoff(), 0),
                )
                counters = _Counters(client, backoff)
            elif redis_client_of_cache(config["CACHE"]) is not None:
                alias = config["CACHE"]
                counters = _Counters(lambda: redis_client_of_cache(alias), backoff)
            _counters[memo] = counters
        return _counters[memo]


@receiver(setting_changed)
def _drop_counters(*, setting: str, **kwargs: Any) -> None:
    if setting in ("MPAI", "CACHES"):
        with _counters_lock:
            _counters.clear()


def _keys(user_pk: Any, windows: Windows) -> list[str]:
    return [
        f"{KEY_PREFIX}{user_pk}:d:{windows.day.isoformat()}",
        f"{KEY_PREFIX}{user_pk}:m:{windows.month_start.isoformat()[:7]}",
    ]


def _database_counts(user_pk: Any, windows: Windows) -> tuple[int, int, int]:
    """(messages today, tokens today, tokens this month) from the usage rows."""
    return store.window_counts(user_pk, windows.day, windows.month_start)


def _redis_check(
    counters: _Counters, user_pk: Any, windows: Windows, limits: Limits
) -> tuple[int, int, int, int]:
    keys = _keys(user_pk, windows)
    args: list[Any] = [
        -1 if value is None else value
        for value in (limits.messages_per_day, limits.tokens_per_day, limits.tokens_per_month)
    ]
    args += [
        int(windows.day_end.timestamp()) + GRACE_SECONDS,
        int(windows.month_end.timestamp()) + GRACE_SECONDS,
    ]
    reply = counters.run(LUA_QUOTA_CHECK_SHA, LUA_QUOTA_CHECK, keys, args)
    if int(reply[0]) == -1:
        reply = counters.run(
            LUA_QUOTA_CHECK_SHA,
            LUA_QUOTA_CHECK,
            keys,
            args + list(_database_counts(user_pk, windows)),
        )
    outcome, messages, day_tokens, month_tokens = (int(value) for value in reply)
    return outcome, messages, day_tokens, month_tokens


def _database_check(user_pk: Any, windows: Windows, limits: Limits) -> tuple[int, int, int, int]:
    messages, day_tokens, month_tokens = _database_counts(user_pk, windows)
    for outcome, used, limit in (
        (1, messages, limits.messages_per_day),
        (2, day_tokens, limits.tokens_per_day),
        (3, month_tokens, limits.tokens_per_month),
    ):
        if limit is not None and used >= limit:
            return outcome, messages, day_tokens, month_tokens
    return 0, messages + 1, day_tokens, month_tokens


def _refuse(
    outcome: int, quota: str, windows: Windows, now: Any, plan: str | None
) -> QuotaExceeded:
    from mpai.usage import metrics

    limit = LIMIT_NAMES[outcome - 1]
    end = windows.month_end if limit == "tokens_per_month" else windows.day_end
    retry_after = math.ceil(windows.seconds_to(end, now) * 1000) / 1000
    metrics.quota_exceeded(quota)
    try:
        store.add_rejection(day=now.astimezone(UTC).date(), plan=quota, limit=limit)
    except Exception:
        logger.warning("mpai usage: counting a quota rejection failed", exc_info=True)
    what = {
        "messages_per_day": "messages for today",
        "tokens_per_day": "usage for today",
        "tokens_per_month": "usage for this month",
    }[limit]
    return QuotaExceeded(
        f"You have used your plan's {what}; it resets at {end.strftime('%Y-%m-%d %H:%M %Z')}.",
        retry_after=retry_after,
        limit=limit,
        plan=quota,
    )


def check_quota(user: Any, *, now: Any = None) -> QuotaStatus:
    """Count one message of ``user`` against their plan's quota, or refuse it.

    Blocking: one Redis round trip (two, plus one query, on a counter's first use in
    a window); the database instead when Redis is down (module docs). Staff (unless
    ``QUOTAS_APPLY_TO_STAFF``), anonymous users and unlimited plans cost no I/O beyond
    ``plan_for``.

    Args:
        user: the signed-in user.
        now: an aware datetime (tests); default the current time.

    Returns:
        The :class:`QuotaStatus` of the allowed message.

    Raises:
        QuotaExceeded: a limit is reached; ``retry_after`` (s, float rounded up to the
            ms) until the window resets (next midnight, or the next month's first
            midnight, in the quota zone); ``limit`` and ``plan`` say which.
        ImproperlyConfigured: malformed ``MPAI["QUOTAS"]``.
    """
    plan = plan_of(user)
    quota, limits = limits_for(user, plan)
    if limits.unlimited or not getattr(user, "is_authenticated", False):
        return QuotaStatus(plan, quota, limits)
    now = now or timezone.now()
    windows = user_windows(user, now)
    counters = _get_counters()
    figures: tuple[int, int, int, int] | None = None
    source = "redis"
    if counters is not None and counters.enter():
        try:
            figures = _redis_check(counters, user.pk, windows, limits)
        except (RedisError, OSError) as exc:
            counters.failed(exc)
        except Exception:  # e.g. the database failed while filling a counter
            counters.aborted()
            logger.warning("mpai usage: quota check in Redis failed", exc_info=True)
        else:
            counters.ok()
    if figures is None:
        source = "database"
        try:
            figures = _database_check(user.pk, windows, limits)
        except Exception:
            logger.warning("mpai usage: quota check failed; allowing (fail open)", exc_info=True)
            return QuotaStatus(plan, quota, limits, source="fail_open")
    outcome, messages, day_tokens, month_tokens = figures
    if outcome > 0:
        raise _refuse(outcome, quota, windows, now, plan)
    return QuotaStatus(plan, quota, limits, messages, day_tokens, month_tokens, source)


def charge_tokens(user: Any, tokens: int, windows: Windows) -> bool:
    """Add a finished reply's ``tokens`` to the user's day and month counters in Redis
    (those that exist). Never raises: returns False when Redis failed or is skipped
    (the usage rows have the tokens anyway)."""
    counters = _get_counters()
    if tokens <= 0 or counters is None or not counters.enter():
        return False
    try:
        counters.run(LUA_QUOTA_CHARGE_SHA, LUA_QUOTA_CHARGE, _keys(user.pk, windows), [tokens])
    except (RedisError, OSError) as exc:
        counters.failed(exc)
        return False
    except Exception:
        counters.aborted()
        logger.warning("mpai usage: charging tokens in Redis failed", exc_info=True)
        return False
    counters.ok()
    return True
