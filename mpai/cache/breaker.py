"""A small circuit breaker, one per cache layer.

Why: django-redis turns a Redis outage into a slow miss (jazzband/django-redis issue
#155: a 0.5 s socket timeout became about 16 s per lookup through retries), and a
slow database does the
same to every request. After ``failure_threshold`` consecutive outage-class failures
the breaker opens and the layer is skipped without any I/O for ``reset_timeout``
seconds; then exactly one caller is allowed to probe the layer (half-open) while the
others keep skipping it. A successful probe closes the breaker.

The closed state is checked with one attribute read (``breaker.state is CLOSED``)
so the hot path of a healthy layer costs nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure circuit breaker.

    Args:
        failure_threshold: consecutive failures that open the breaker (>= 1).
        reset_timeout: seconds an open breaker waits before one probe is allowed.
        clock: monotonic clock in seconds (injectable for tests).

    Attributes:
        state: ``"closed"``, ``"open"`` or ``"half_open"``.
        opened: how many times the breaker has opened (one per outage).
        opened_at: ``clock()`` value when it last opened, or None.
    """

    def __init__(
        self,
        failure_threshold: int = 2,
        reset_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if reset_timeout < 0:
            raise ValueError("reset_timeout must be >= 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CLOSED
        self.failures = 0
        self.opened = 0
        self.opened_at: float | None = None
        self._retry_at = 0.0

    def request_probe(self) -> bool:
        """Ask, while not closed, whether this caller may probe the layer now.

        Returns:
            True for exactly one caller once ``reset_timeout`` has passed since the
            breaker opened (the breaker is then half-open); False otherwise, meaning
            the caller must skip the layer.
        """
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == OPEN and self._clock() >= self._retry_at:
                self.state = HALF_OPEN
                return True
            return False

    def record_success(self) -> None:
        """Note a successful call made while closed (resets the failure count)."""
        if self.failures:
            self.failures = 0

    def record_failure(self) -> bool:
        """Note an outage-class failure.

        Returns:
            True when this failure opened the breaker (closed -> open), so the caller
            can log the outage exactly once.
        """
        with self._lock:
            now = self._clock()
            if self.state == HALF_OPEN:
                # The probe failed: stay open for another full period, not a new outage.
                self.state = OPEN
                self._retry_at = now + self.reset_timeout
                return False
            if self.state == OPEN:
                return False
            self.failures += 1
            if self.failures < self.failure_threshold:
                return False
            self.state = OPEN
            self.opened += 1
            self.opened_at = now
            self._retry_at = now + self.reset_timeout
            return True

    def close(self) -> float:
        """Close the breaker after a successful probe.

        Returns:
            Seconds the breaker was open (0.0 if it was not).
        """
        with self._lock:
            was_open = self.state != CLOSED
            self.state = CLOSED
            self.failures = 0
            if was_open and self.opened_at is not None:
                return max(0.0, self._clock() - self.opened_at)
            return 0.0
