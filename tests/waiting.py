"""Waiting on conditions with deadlines (tests never sleep a fixed time to assert)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

_never = threading.Event()


def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    """Poll ``condition`` every ``interval`` s until it returns a truthy value, which is
    returned; raise AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout} s: {what or condition}")
        _never.wait(interval)
