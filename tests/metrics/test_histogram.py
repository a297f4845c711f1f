"""The log-spaced histogram (mpai.metrics.histogram): layout, merging, error bound."""

from __future__ import annotations

import math
import random

import pytest

from mpai.metrics import histogram as h


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1]


def test_layout_covers_a_tenth_of_a_millisecond_to_two_minutes():
    assert h.BUCKETS == 83
    assert h.lower_bound(1) == pytest.approx(0.1)
    assert h.HIGHEST_MS >= 120_000
    assert h.upper_bound(h.BUCKETS - 2) == pytest.approx(h.HIGHEST_MS)
    for index in range(1, h.BUCKETS - 1):
        assert h.upper_bound(index) / h.lower_bound(index) == pytest.approx(h.RATIO)
        assert h.upper_bound(index) == pytest.approx(h.lower_bound(index + 1))
    assert pytest.approx(2 ** (1 / 8) - 1) == h.MAX_RELATIVE_ERROR
    assert h.MAX_RELATIVE_ERROR < 0.091


def test_every_value_falls_in_the_bucket_whose_bounds_hold_it():
    rng = random.Random(1)
    values = [10 ** rng.uniform(-2, 5.3) for _ in range(20_000)]
    values += [h.lower_bound(i) for i in range(1, h.BUCKETS)]  # exact bounds
    for value in values:
        index = h.bucket_index(value)
        assert h.lower_bound(index) <= value < h.upper_bound(index), (value, index)


def test_underflow_overflow_and_odd_values():
    assert h.bucket_index(0.0) == 0
    assert h.bucket_index(0.0999) == 0
    assert h.bucket_index(-5.0) == 0
    assert h.bucket_index(float("nan")) == 0
    assert h.bucket_index(0.1) == 1
    assert h.bucket_index(10**9) == h.BUCKETS - 1
    assert h.bucket_index(float("inf")) == h.BUCKETS - 1


@pytest.mark.parametrize("seed", range(20))
def test_percentiles_are_within_the_stated_relative_error(seed):
    """Property: over random samples (log-uniform, lognormal, a few values repeated), every
    estimated percentile is within MAX_RELATIVE_ERROR of the sample's nearest-rank one."""
    rng = random.Random(seed)
    size = rng.choice([1, 2, 7, 100, 1000, 5000])
    kind = seed % 3
    if kind == 0:
        values = [10 ** rng.uniform(-1, 5) for _ in range(size)]
    elif kind == 1:
        values = [min(100_000.0, rng.lognormvariate(5, 1.5)) + 0.1 for _ in range(size)]
    else:
        values = [rng.choice([0.5, 3.0, 250.0, 9_000.0]) for _ in range(size)]
    counts = h.counts_of(values)
    for q in (0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        true = nearest_rank(values, q)
        estimate = h.percentile(counts, q)
        assert estimate is not None
        assert abs(estimate - true) / true <= h.MAX_RELATIVE_ERROR + 1e-12, (q, true, estimate)


def test_the_bound_is_tight_at_the_edges_of_a_bucket():
    index = h.bucket_index(100.0)
    low, high = h.lower_bound(index), h.upper_bound(index)
    assert h.percentile(h.counts_of([low]), 0.5) == pytest.approx(low * math.sqrt(h.RATIO))
    just_below_high = math.nextafter(high, 0)
    estimate = h.percentile(h.counts_of([just_below_high]), 0.5)
    assert estimate is not None
    assert estimate / just_below_high == pytest.approx(1 / math.sqrt(h.RATIO))


def test_underflow_and_overflow_estimates():
    assert h.percentile(h.counts_of([0.0, 0.01]), 1.0) == pytest.approx(0.05)
    assert h.percentile(h.counts_of([500_000.0]), 0.5) == h.HIGHEST_MS


def test_merge_by_addition_equals_the_histogram_of_all_values():
    rng = random.Random(7)
    parts = [[10 ** rng.uniform(-1, 5) for _ in range(300)] for _ in range(4)]
    merged = h.merge(*(h.counts_of(part) for part in parts))
    everything = [value for part in parts for value in part]
    assert merged == h.counts_of(everything)
    for q in (0.5, 0.95, 0.99):
        assert h.percentile(merged, q) == h.percentile(h.counts_of(everything), q)


def test_dense_reads_redis_hashes():
    assert h.dense({b"3": b"2", "5": "1", 7: 4, b"999": b"1"})[:8] == [0, 0, 0, 2, 0, 1, 0, 4]


def test_empty_and_bad_quantiles():
    assert h.percentile(h.empty(), 0.5) is None
    with pytest.raises(ValueError, match="q must be"):
        h.percentile(h.empty(), 0)
    with pytest.raises(ValueError, match="q must be"):
        h.percentile(h.empty(), 95)
