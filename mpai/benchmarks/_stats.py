"""Shared figures for benchmark suites: nearest-rank percentiles of timings in µs, and
the structured rows suites return (:func:`summary_row`)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any


def nearest_rank(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def time_us(call: Callable[[], object], iterations: int, *, warmup: int = 20) -> list[float]:
    """Call ``call`` ``warmup`` + ``iterations`` times; return the measured times in µs, sorted."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return samples


def median_p99(samples: list[float]) -> tuple[float, float]:
    """Return ``(median, p99)`` of sorted samples."""
    return statistics.median(samples), nearest_rank(samples, 0.99)


def summary_row(
    suite: str, operation: str, samples: list[float], *, peak_bytes: int | None = None
) -> dict[str, Any]:
    """Return the structured result of one operation (every time in µs).

    Keys: ``suite``, ``operation``, ``unit`` (``"us"``), ``n`` (samples), ``mean``,
    ``min``, ``max``, ``p50`` (the median), ``p95`` and ``p99`` (nearest rank), and
    ``peak_bytes`` (bytes, the largest tracemalloc peak of one call) when measured.

    Raises:
        ValueError: ``samples`` is empty.
    """
    if not samples:
        raise ValueError(f"no samples for {suite} / {operation}")
    ordered = sorted(samples)
    row: dict[str, Any] = {
        "suite": suite,
        "operation": operation,
        "unit": "us",
        "n": len(ordered),
        "mean": statistics.fmean(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "p50": statistics.median(ordered),
        "p95": nearest_rank(ordered, 0.95),
        "p99": nearest_rank(ordered, 0.99),
    }
    if peak_bytes is not None:
        row["peak_bytes"] = peak_bytes
    return row
