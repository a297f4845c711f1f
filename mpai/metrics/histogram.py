"""A fixed-bucket, log-spaced histogram of durations in milliseconds.

Every process uses the same bucket layout, so histograms recorded anywhere (two
processes, two minutes, two machines) merge by adding their counts bucket by bucket,
and a percentile of the merged counts is as accurate as one of a single process. The
idea is that of HdrHistogram (http://hdrhistogram.org/) and of DDSketch (Masson,
Rim, Lee, "DDSketch: A Fast and Fully-Mergeable Quantile Sketch with Relative-Error
Guarantees", VLDB 2019, https://arxiv.org/abs/1908.10693): buckets whose bounds grow
by a constant ratio bound the *relative* error of every estimate. Prometheus
histograms (https://prometheus.io/docs/practices/histograms/) merge the same way
(counts add) but with hand-picked buckets, so their error depends on the layout.

Layout (the constants below; never change them for data already stored):

- bucket 0: the underflow, ``[0, LOWEST_MS)``;
- bucket ``i`` for ``1 <= i <= BUCKETS - 2``: ``[LOWEST_MS * RATIO**(i-1), LOWEST_MS * RATIO**i)``;
- bucket ``BUCKETS - 1``: the overflow, ``[HIGHEST_MS, inf)``.

With ``LOWEST_MS = 0.1`` ms, ``RATIO = 2**(1/4)`` and 81 regular buckets the regular
range is 0.1 ms to ``0.1 * 2**(81/4)`` ms, about 124.6 s (covering 120 s): 83 buckets
in all.

Error bound. :func:`percentile` finds the bucket that holds the sample's
nearest-rank percentile exactly and returns the bucket's geometric midpoint
``sqrt(lo * hi)``. For a true value ``v`` in a regular bucket the estimate ``e``
satisfies ``1/sqrt(RATIO) < e / v <= sqrt(RATIO)``, so the relative error
``|e - v| / v`` is at most ``MAX_RELATIVE_ERROR = sqrt(RATIO) - 1 = 2**(1/8) - 1``,
about 9.05 %. In the underflow bucket the estimate is ``LOWEST_MS / 2`` (absolute
error at most 0.05 ms); in the overflow bucket it is ``HIGHEST_MS`` (a lower bound).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

#: Lower bound (ms) of the first regular bucket; shorter durations go to bucket 0.
LOWEST_MS = 0.1
#: Ratio of consecutive bucket bounds.
RATIO = 2 ** (1 / 4)
#: Regular buckets between LOWEST_MS and HIGHEST_MS.
REGULAR_BUCKETS = 81
#: All buckets: underflow + regular + overflow.
BUCKETS = REGULAR_BUCKETS + 2
#: Upper bound (ms) of the last regular bucket, about 124.6 s.
HIGHEST_MS = LOWEST_MS * RATIO**REGULAR_BUCKETS
#: Largest relative error of :func:`percentile` for values in [LOWEST_MS, HIGHEST_MS).
MAX_RELATIVE_ERROR = math.sqrt(RATIO) - 1

_LOG_RATIO = math.log(RATIO)


def lower_bound(index: int) -> float:
    """Return the lower bound (ms) of bucket ``index`` (0 for the underflow)."""
    if index <= 0:
        return 0.0
    return LOWEST_MS * RATIO ** (index - 1)


def upper_bound(index: int) -> float:
    """Return the upper bound (ms, exclusive) of bucket ``index`` (inf for the overflow)."""
    if index >= BUCKETS - 1:
        return math.inf
    return LOWEST_MS * RATIO**index


def bucket_index(ms: float) -> int:
    """Return the bucket (0 .. BUCKETS - 1) of a duration of ``ms`` milliseconds.

    Negative and NaN durations count as 0 ms (underflow).
    """
    if not ms >= LOWEST_MS:  # also NaN
        return 0
    if ms >= HIGHEST_MS:
        return BUCKETS - 1
    index = int(math.log(ms / LOWEST_MS) / _LOG_RATIO) + 1
    # Floating-point rounding near a bound: settle on the bucket whose bounds hold ms.
    if ms < lower_bound(index):
        index -= 1
    elif ms >= upper_bound(index):
        index += 1
    return min(max(index, 1), BUCKETS - 2)


def estimate(index: int) -> float:
    """Return the value (ms) that stands for bucket ``index``: its geometric midpoint."""
    if index <= 0:
        return LOWEST_MS / 2
    if index >= BUCKETS - 1:
        return HIGHEST_MS
    return math.sqrt(lower_bound(index) * upper_bound(index))


def empty() -> list[int]:
    """Return the counts of an empty histogram (a list of BUCKETS zeros)."""
    return [0] * BUCKETS


def counts_of(values: Iterable[float]) -> list[int]:
    """Return the histogram counts of ``values`` (ms)."""
    counts = empty()
    for value in values:
        counts[bucket_index(value)] += 1
    return counts


def dense(sparse: Mapping[int | str | bytes, int | str | bytes]) -> list[int]:
    """Return the counts of ``{bucket index: count}`` (as Redis ``HGETALL`` gives them,
    bytes or str or int); indexes outside the layout are ignored."""
    counts = empty()
    for key, value in sparse.items():
        index = int(key)
        if 0 <= index < BUCKETS:
            counts[index] += int(value)
    return counts


def merge(*histograms: Sequence[int]) -> list[int]:
    """Return the bucket-by-bucket sum of ``histograms`` (the merged histogram)."""
    total = empty()
    for counts in histograms:
        for index, count in enumerate(counts):
            total[index] += count
    return total


def percentile(counts: Sequence[int], q: float) -> float | None:
    """Return an estimate (ms) of the ``q``-quantile (0 < q <= 1, e.g. 0.95) of ``counts``.

    The bucket is the one holding the nearest-rank value (rank ``ceil(q * n)``, at
    least 1) of the recorded sample; within :data:`MAX_RELATIVE_ERROR` of it for
    durations in [LOWEST_MS, HIGHEST_MS). None for an empty histogram.

    Raises:
        ValueError: ``q`` outside (0, 1].
    """
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], not {q!r}")
    total = sum(counts)
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total - 1e-9))
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return estimate(index)
    return estimate(len(counts) - 1)  # unreachable with non-negative counts
