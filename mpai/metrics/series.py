"""Hourly time series of the turn metrics, for the system-health dashboard's charts.

One point per Unix hour of the window, read from the hourly roll-ups of
:mod:`mpai.metrics.storage` (never the minute figures), all hours in one round trip:
one pipelined batch of ``HGETALL`` in Redis, one query in the database. A week is 168
points of at most 7 small hashes (or a few rows) each.

This module imports no Django model at import time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, TypedDict

#: Window name → hours (one point each). The last point is the current, partial hour.
WINDOWS = {"24h": 24, "7d": 7 * 24}

#: Outcomes that are not errors; every other outcome (an error code) is.
NOT_ERRORS = frozenset({"complete", "cancelled"})

__all__ = ["NOT_ERRORS", "WINDOWS", "Point", "StageFigures", "hours_of", "read_hours", "series"]


class StageFigures(TypedDict):
    """One stage's figures in one hour: turns timed, and percentiles in ms (None: none)."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None


class Point(TypedDict):
    """One hour of the series.

    ``hour``: Unix hour (``seconds // 3600``); ``start``: its first second (Unix s);
    ``start_iso``: the same, ISO 8601 in UTC; ``turns``, ``errors`` (turns whose outcome
    is neither ``complete`` nor ``cancelled``), ``cached``: counts; ``error_rate`` and
    ``cache_hit_rate``: fractions 0..1 of ``turns`` (None when there was no turn);
    ``stages``: stage → :class:`StageFigures` (ms).
    """

    hour: int
    start: int
    start_iso: str
    turns: int
    errors: int
    cached: int
    error_rate: float | None
    cache_hit_rate: float | None
    stages: dict[str, StageFigures]


def hours_of(window: str, now: float | None = None) -> range:
    """Return the Unix hours of ``window`` ending with the hour of ``now`` (s).

    Raises:
        ValueError: an unknown ``window``.
    """
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r}; use one of {', '.join(WINDOWS)}")
    last = int((time.time() if now is None else now) // 3600)
    return range(last - WINDOWS[window] + 1, last + 1)


def series(window: str = "24h", *, now: float | None = None) -> list[Point]:
    """Return one :class:`Point` per hour of the last ``window`` (``"24h"``: 24 points,
    ``"7d"``: 168), oldest first, the last one being the current hour so far.

    Percentiles are read off each hour's merged histogram (ms, within
    ``mpai.metrics.histogram.MAX_RELATIVE_ERROR``). ``now`` (s, ``time.time()``) is for
    tests. A failing store gives the points with no turns (never raises for it).

    Raises:
        ValueError: an unknown ``window``.
    """
    from mpai.metrics import histogram
    from mpai.metrics.record import STAGES

    hours = hours_of(window, now)
    try:
        figures = read_hours(hours)
    except Exception:
        from mpai.metrics import storage

        storage._log_failure("reading the hourly series")
        figures = {}
    points: list[Point] = []
    for hour in hours:
        stages, counters = figures.get(hour, ({}, {}))
        turns = counters.get("turns", 0)
        errors = sum(
            count
            for name, count in counters.items()
            if name.startswith("outcome:") and name.removeprefix("outcome:") not in NOT_ERRORS
        )
        cached = counters.get("cached", 0)
        points.append(
            {
                "hour": hour,
                "start": hour * 3600,
                "start_iso": datetime.fromtimestamp(hour * 3600, UTC).isoformat(),
                "turns": turns,
                "errors": errors,
                "cached": cached,
                "error_rate": errors / turns if turns else None,
                "cache_hit_rate": cached / turns if turns else None,
                "stages": {
                    stage: _stage_figures(stages.get(stage) or histogram.empty())
                    for stage in STAGES
                },
            }
        )
    return points


def _stage_figures(counts: list[int]) -> StageFigures:
    from mpai.metrics import histogram

    return {
        "count": sum(counts),
        "p50": histogram.percentile(counts, 0.50),
        "p95": histogram.percentile(counts, 0.95),
        "p99": histogram.percentile(counts, 0.99),
    }


Figures = tuple[dict[str, list[int]], dict[str, int]]


def read_hours(hours: range) -> dict[int, Figures]:
    """Return Unix hour → (stage → histogram counts, counter → sum) for the hours that
    have figures, from the configured store's hourly roll-ups, in one round trip."""
    from mpai.metrics import storage

    if not hours:
        return {}
    url = storage.redis_url()
    if url:
        return _read_hours_redis(storage.redis_client(url), hours)
    return _read_hours_database(hours)


def _read_hours_redis(client: Any, hours: range) -> dict[int, Figures]:
    from mpai.metrics import histogram, storage
    from mpai.metrics.record import STAGES

    pipe = client.pipeline(transaction=False)
    for hour in hours:
        for stage in STAGES:
            pipe.hgetall(f"{storage.KEY_PREFIX}hh:{hour}:{stage}")
        pipe.hgetall(f"{storage.KEY_PREFIX}hc:{hour}")
    replies = iter(pipe.execute())
    result: dict[int, Figures] = {}
    for hour in hours:
        stages: dict[str, list[int]] = {}
        for stage in STAGES:
            reply = next(replies)  # an absent key: {}
            if reply:
                counts = histogram.empty()
                for index, count in reply.items():
                    if 0 <= int(index) < histogram.BUCKETS:
                        counts[int(index)] += int(count)
                stages[stage] = counts
        counters = {
            (name.decode() if isinstance(name, bytes) else str(name)): int(value)
            for name, value in next(replies).items()
        }
        if stages or counters:
            result[hour] = (stages, counters)
    return result


def _read_hours_database(hours: range) -> dict[int, Figures]:
    from mpai.metrics import histogram, storage
    from mpai.models import MetricBucket

    rows = MetricBucket.objects.filter(
        minute__gte=hours.start * 60,
        minute__lte=(hours.stop - 1) * 60,
        stage__startswith=storage.HOUR,
    ).values_list("minute", "stage", "bucket", "count")
    result: dict[int, Figures] = {}
    for minute, stored, bucket, count in rows:
        if minute % 60:  # not an hour row (an hour row sits on its first minute)
            continue
        stages, counters = result.setdefault(minute // 60, ({}, {}))
        stage = stored.removeprefix(storage.HOUR)
        if stage.startswith(storage.COUNTER):
            name = stage[len(storage.COUNTER) :]
            counters[name] = counters.get(name, 0) + int(count)
        elif 0 <= bucket < histogram.BUCKETS:
            stages.setdefault(stage, histogram.empty())[bucket] += int(count)
    return result
