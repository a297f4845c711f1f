"""The limiter's outage handling: the cache layers' circuit breaker, plus what it skipped.

Rate limiting protects the provider budget; it must not turn a store outage into a chat
outage (the README's "The chat pipeline": the limiter fails open). So a limiter whose
store fails allows the request, and its :class:`~mpai.cache.breaker.CircuitBreaker`
(the one every cache layer has, so every dependency reports one kind of state) opens on
the first failure: while it is open, checks are allowed without any I/O, and after
``OUTAGE_BACKOFF`` seconds exactly one check probes the store (half-open) while the
others keep skipping it. A failed probe keeps it open another period; an answered one
closes it.

One warning per outage (when the breaker opens) and one line when the store is back,
with how long it was out and how many checks were allowed unchecked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from mpai.cache.breaker import CLOSED, HALF_OPEN, CircuitBreaker

logger = logging.getLogger("mpai.chat.ratelimit")

__all__ = ["FAILURE_THRESHOLD", "OutageBreaker"]

#: Failures that open the breaker. One: a failed check has already cost a socket
#: timeout, and it was let through unchecked; the next should not pay the same.
FAILURE_THRESHOLD = 1


class OutageBreaker:
    """A limiter store's circuit breaker with its counters and log lines.

    The hot path is :meth:`enter`, one attribute read while the breaker is closed.

    Args:
        dependency: what the store is, for log lines and :meth:`snapshot`
            (``"Redis"``, ``"cache 'default'"``).
        reset_timeout: seconds an open breaker skips the store before one probe.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self, dependency: str, reset_timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.dependency = dependency
        self.breaker = CircuitBreaker(FAILURE_THRESHOLD, reset_timeout, clock)
        self._lock = threading.Lock()
        self.skipped = 0  # checks allowed without trying the store (breaker open)
        self.errors = 0  # checks whose store call failed
        self._skipped_since_open = 0
        self._since: float | None = None  # time.time() of the last open or close

    def enter(self) -> bool:
        """Return whether this check may call the store (False: skip it, fail open)."""
        breaker = self.breaker
        if breaker.state is CLOSED or breaker.request_probe():
            return True
        with self._lock:
            self.skipped += 1
            self._skipped_since_open += 1
        return False

    def succeeded(self) -> None:
        """Note that the store answered; an answered probe closes the breaker."""
        breaker = self.breaker
        if breaker.state is CLOSED:
            breaker.record_success()
            return
        with self._lock:  # one "back" line, however many answers arrive at once
            if breaker.state is not HALF_OPEN:
                # A call begun before another one opened the breaker: the probe decides.
                return
            seconds = breaker.close()
            skipped, self._skipped_since_open = self._skipped_since_open, 0
            self._since = time.time()
        logger.info(
            "Rate limiter: %s is back after %.1f s (%d checks allowed unchecked); limiting again.",
            self.dependency,
            seconds,
            skipped,
        )

    def failed(self, exc: BaseException) -> None:
        """Note that the store failed (the check fails open); may open the breaker."""
        with self._lock:
            self.errors += 1
        if self.breaker.record_failure():
            with self._lock:
                self._since = time.time()
            logger.warning(
                "Rate limiter: %s unavailable (%s: %s); allowing requests (fail open), "
                "probing every %.1f s until it is back.",
                self.dependency,
                type(exc).__name__,
                exc,
                self.breaker.reset_timeout,
            )

    def aborted(self) -> None:
        """Note that a call raised something that is no outage (a bug, an interrupt).

        A half-open probe that ends so must not leave the breaker half-open for ever
        (every later check would skip the store): it opens again for a period.
        """
        if self.breaker.state is HALF_OPEN:
            self.breaker.record_failure()

    def snapshot(self) -> dict[str, Any]:
        """Return the breaker's state for a health page.

        Returns:
            ``dependency``; ``state`` (``"closed"``, ``"open"``, ``"half_open"``);
            ``since`` (epoch seconds when the last outage began, while not closed, or
            ended, while closed; None if there never was one); ``outages`` (times the
            breaker opened); ``skipped`` (checks allowed without trying the store);
            ``errors`` (store calls that failed).
        """
        with self._lock:
            return {
                "dependency": self.dependency,
                "state": self.breaker.state,
                "since": self._since,
                "outages": self.breaker.opened,
                "skipped": self.skipped,
                "errors": self.errors,
            }
