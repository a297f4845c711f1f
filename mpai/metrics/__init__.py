"""Turn metrics: per-minute and per-hour histograms of each stage's duration, merged on
read.

Every finished turn (``mpai.signals.request_complete``) is recorded off the streaming
thread (:mod:`mpai.metrics.receivers`) into per-minute and per-hour buckets
(:mod:`mpai.metrics.storage`: Redis when configured, else the database) as counts of a
fixed log-spaced histogram (:mod:`mpai.metrics.histogram`). Counts add, so
:func:`summary` is right across any number of processes: it sums the whole hours of its
window and the minutes at its edges, and reads percentiles off the sum.
The last turn: :func:`mpai.metrics.storage.last_turn`.

This module imports no Django model at import time.
"""

from __future__ import annotations

import time
from typing import Any

#: Window name → minutes.
WINDOWS = {"1h": 60, "24h": 24 * 60, "7d": 7 * 24 * 60}

__all__ = ["WINDOWS", "summary"]


def summary(window: str = "1h", *, now: float | None = None) -> dict[str, Any]:
    """Return the figures of the last ``window`` (``"1h"``, ``"24h"`` or ``"7d"``).

    Shape::

        {"window": "1h", "from_minute": int, "to_minute": int,   # Unix minutes, inclusive
         "turns": int, "cached": int, "replayed": int,
         "outcomes": {"complete": int, "cancelled": int, "<error code>": int, ...},
         "tokens": {"input": int, "output": int},
         "stages": {"total": {"count": int, "p50": ms, "p95": ms, "p99": ms}, ...}}

    Percentiles are in ms (None when the stage has no count), within
    ``mpai.metrics.histogram.MAX_RELATIVE_ERROR`` (about 9 %) of the true
    nearest-rank percentile. ``now`` (s, ``time.time()``) is for tests. A window reads
    at most 168 hour and 60 minute buckets per stage (``"7d"``), see
    :func:`mpai.metrics.storage.plan`.

    Raises:
        ValueError: an unknown ``window``.
    """
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r}; use one of {', '.join(WINDOWS)}")
    from mpai.metrics import histogram, storage

    last = storage.minute_of(time.time() if now is None else now)
    first = last - WINDOWS[window] + 1
    stages, counters = storage.read(first, last)
    return {
        "window": window,
        "from_minute": first,
        "to_minute": last,
        "turns": counters.get("turns", 0),
        "cached": counters.get("cached", 0),
        "replayed": counters.get("replayed", 0),
        "outcomes": {
            name.removeprefix("outcome:"): count
            for name, count in sorted(counters.items())
            if name.startswith("outcome:")
        },
        "tokens": {
            "input": counters.get("input_tokens", 0),
            "output": counters.get("output_tokens", 0),
        },
        "stages": {
            stage: {
                "count": sum(counts),
                "p50": histogram.percentile(counts, 0.50),
                "p95": histogram.percentile(counts, 0.95),
                "p99": histogram.percentile(counts, 0.99),
            }
            for stage, counts in stages.items()
        },
    }
