"""Shared figures for benchmark suites: nearest-rank percentiles of timings in µs."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable


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
