"""The token bucket itself: the decision, the limiter interface and the arithmetic.

No I/O here. The bucket is ``(tokens, stamp)``: the tokens left at ``stamp`` (seconds).
:func:`take` is one step of the algorithm for a given ``now``; :class:`TokenBucket`
binds the figures to a clock (injectable, as DRF's ``SimpleRateThrottle.timer``) for
stores that keep the state themselves. The Lua script of
:mod:`mpai.chat.ratelimit.redis_bucket` does the same step inside Redis and must stay in
step with :func:`take`.

Two rules, from the failures of read-compute-write throttles (DRF #5181, #8127): a
rejected request writes nothing, so it never advances the refill timestamp (which would
lose the refill accrued so far); and the timestamp never moves backwards: when the clock
reads earlier than the stamp, no time has passed.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mpai.chat.ratelimit.outage import OutageBreaker

__all__ = ["Decision", "RateLimiter", "Step", "TokenBucket", "take"]


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


def _check_figures(capacity: float, refill_rate: float) -> None:
    if not capacity > 0 or not refill_rate > 0:
        raise ValueError("capacity and refill_rate must be positive numbers")


class RateLimiter(ABC):
    """A token bucket per key, in some store (Redis, a Django cache).

    Args:
        capacity: bucket size in tokens (> 0).
        refill_rate: tokens added per second (> 0).
        key_prefix: prepended to every key in the store.

    Attributes:
        outage: the store's circuit breaker and outage counters
            (:class:`~mpai.chat.ratelimit.outage.OutageBreaker`), set by each store.

    Raises:
        ValueError: capacity or refill_rate not positive.
    """

    outage: OutageBreaker

    def __init__(self, *, capacity: float, refill_rate: float, key_prefix: str = "") -> None:
        _check_figures(capacity, refill_rate)
        self.capacity = capacity
        self.refill_rate = refill_rate
        self.key_prefix = key_prefix

    @abstractmethod
    def check(self, key: str, *, cost: float = 1) -> Decision:
        """Take ``cost`` tokens from the bucket ``key`` if it holds that many.

        Args:
            key: the bucket, e.g. ``user:42`` or ``ip:203.0.113.9``.
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


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one :func:`take`.

    Attributes:
        allowed: the cost was taken.
        remaining: tokens available after the step.
        retry_after: seconds until a rejected cost would fit; 0.0 when allowed.
        tokens: the state to store when allowed (unchanged when rejected: store nothing).
        stamp: the state's stamp to store (never earlier than the old one).
        ttl: seconds until the stored bucket is full again (its expiry); 0.0 when rejected.
    """

    allowed: bool
    remaining: float
    retry_after: float
    tokens: float
    stamp: float
    ttl: float


def take(
    tokens: float, stamp: float, *, now: float, capacity: float, refill_rate: float, cost: float
) -> Step:
    """Take ``cost`` tokens from the bucket ``(tokens, stamp)`` at ``now`` if it holds them.

    Returns:
        The :class:`Step`; when it is not ``allowed`` the caller must write nothing.
    """
    elapsed = max(0.0, now - stamp)  # the clock read earlier than the stamp: no time passed
    available = min(capacity, tokens + elapsed * refill_rate)
    if available < cost:
        # Wait for the missing tokens, plus, if the stamp is ahead of the clock, for the
        # clock to reach it (accrual starts there).
        wait = (cost - available) / refill_rate + max(0.0, stamp - now)
        return Step(False, available, wait, tokens, stamp, 0.0)
    left = available - cost
    new_stamp = max(stamp, now)  # never backwards
    ttl = (capacity - left) / refill_rate + (new_stamp - now)
    return Step(True, left, 0.0, left, new_stamp, ttl)


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """A bucket's figures bound to a clock: :func:`take` at ``clock()``.

    Args:
        capacity: bucket size in tokens (> 0).
        refill_rate: tokens added per second (> 0).
        clock: seconds (``time.time`` by default; a fake one in tests). Stamps written
            with one clock are read with the same one, so it need not be the epoch.

    Raises:
        ValueError: capacity or refill_rate not positive.
    """

    capacity: float
    refill_rate: float
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        _check_figures(self.capacity, self.refill_rate)

    def take(self, state: tuple[float, float] | None, cost: float = 1) -> Step:
        """One step on ``state`` (``None``: a new bucket, full now)."""
        now = self.clock()
        tokens, stamp = state if state is not None else (float(self.capacity), now)
        return take(
            tokens,
            stamp,
            now=now,
            capacity=self.capacity,
            refill_rate=self.refill_rate,
            cost=cost,
        )
