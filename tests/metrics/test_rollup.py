"""Hourly roll-ups of the turn metrics (mpai.metrics.storage): summary() over whole hours
plus edge minutes equals a brute-force merge of the minute buckets, in Redis and the
database, reading a bounded number of keys."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis

from mpai import metrics
from mpai.metrics import histogram, storage
from mpai.metrics.record import STAGES
from mpai.models import MetricBucket
from tests.metrics.test_storage import NOW, metrics_db, metrics_redis, turn

__all__ = ["metrics_db", "metrics_redis"]  # fixtures used below

HOUR_START = (int(NOW) // 3600) * 3600.0  # NOW's hour, in s


@pytest.mark.parametrize(
    ("first", "last"),
    [(0, 59), (0, 119), (1, 60), (30, 29 + 60), (59, 59 + 1440), (1, 10080), (0, 10079), (5, 5)],
)
def test_plan_covers_every_minute_once(first: int, last: int):
    hours, minutes = storage.plan(first, last)
    covered = [m for hour in hours for m in range(hour * 60, hour * 60 + 60)] + minutes
    assert sorted(covered) == list(range(first, last + 1))  # each minute exactly once
    assert len(minutes) <= 60 if (last - first + 1) % 60 == 0 else len(minutes) <= 118


def synthetic_turns(now: float, seed: int = 7) -> list[Any]:
    """Turns over the 7 days + 2 hours before ``now`` and 2 minutes after it, denser
    around hour boundaries and the window edges."""
    rng = random.Random(seed)
    times = [now - rng.uniform(0, 7 * 24 * 3600 + 7200) for _ in range(300)]
    for boundary in (HOUR_START, HOUR_START - 3600, HOUR_START - 24 * 3600):
        times += [boundary + offset for offset in (-60.0, -0.001, 0.0, 59.9, 60.0)]
    for window in metrics.WINDOWS.values():  # just inside and just outside each window
        edge = (storage.minute_of(now) - window + 1) * 60.0
        times += [edge, edge + 0.5, edge - 0.001, edge - 60.0]
    times += [now, now + 90.0]  # the current minute, and a turn after "now"
    outcomes = ["complete", "complete", "cancelled", "provider_timeout"]
    return [
        turn(
            rng.choice([0.05, 0.3, 4.0, 55.0, 812.0, 2290.0, 200_000.0]) * rng.uniform(0.9, 1.1),
            outcome=rng.choice(outcomes),
            ended_at=at,
            cached=rng.random() < 0.2,
            replayed=rng.random() < 0.1,
            input_tokens=rng.choice([None, 0, 31]),
            output_tokens=rng.choice([None, 9]),
        )
        for at in times
    ]


def brute_force(records: list[Any], window: str, now: float) -> dict[str, Any]:
    """summary() computed from the records' minutes alone (no hours)."""
    last = storage.minute_of(now)
    first = last - metrics.WINDOWS[window] + 1
    stages = {stage: histogram.empty() for stage in STAGES}
    counters: dict[str, int] = {}
    for record in records:
        if first <= storage.minute_of(record.ended_at) <= last:
            for stage, bucket in storage.buckets_of(record).items():
                stages[stage][bucket] += 1
            for name, amount in storage.counters_of(record).items():
                counters[name] = counters.get(name, 0) + amount
    return {"stages": stages, "counters": counters}


def minute_merge_redis(client: Any, window: str, now: float) -> dict[str, Any]:
    """The pre-roll-up read: every minute hash of the window, added up."""
    last = storage.minute_of(now)
    first = last - metrics.WINDOWS[window] + 1
    stages = {stage: histogram.empty() for stage in STAGES}
    counters: dict[str, int] = {}
    pipe = client.pipeline(transaction=False)
    for minute in range(first, last + 1):
        for stage in STAGES:
            pipe.hgetall(f"mpai:metrics:h:{minute}:{stage}")
        pipe.hgetall(f"mpai:metrics:c:{minute}")
    replies = iter(pipe.execute())
    for _minute in range(first, last + 1):
        for stage in STAGES:
            for index, count in next(replies).items():
                stages[stage][int(index)] += int(count)
        for name, value in next(replies).items():
            counters[name.decode()] = counters.get(name.decode(), 0) + int(value)
    return {"stages": stages, "counters": counters}


def assert_summary_matches(report: dict[str, Any], expected: dict[str, Any]) -> None:
    counters = expected["counters"]
    assert report["turns"] == counters.get("turns", 0)
    assert report["cached"] == counters.get("cached", 0)
    assert report["replayed"] == counters.get("replayed", 0)
    assert report["tokens"] == {
        "input": counters.get("input_tokens", 0),
        "output": counters.get("output_tokens", 0),
    }
    assert report["outcomes"] == {
        k.removeprefix("outcome:"): v for k, v in sorted(counters.items()) if "outcome:" in k
    }
    for stage, counts in expected["stages"].items():
        assert report["stages"][stage] == {
            "count": sum(counts),
            "p50": histogram.percentile(counts, 0.50),
            "p95": histogram.percentile(counts, 0.95),
            "p99": histogram.percentile(counts, 0.99),
        }, stage


# "now" on an hour boundary, just after one, mid-hour, and on an hour's last second
NOWS = [HOUR_START, HOUR_START + 0.5, HOUR_START + 1234.5, HOUR_START + 3599.9]


def test_redis_summary_equals_the_minute_merge_across_hour_boundaries(metrics_redis):
    client = storage.redis_client(metrics_redis)
    records = synthetic_turns(NOWS[2])
    for record in records:
        storage.record_redis(client, record)
    for now in NOWS:
        for window in metrics.WINDOWS:
            report = metrics.summary(window, now=now)
            expected = brute_force(records, window, now)
            assert expected["counters"]["turns"] > 0
            assert_summary_matches(report, expected)
            assert_summary_matches(report, minute_merge_redis(client, window, now))


def test_redis_summary_reads_a_bounded_number_of_keys(metrics_redis, monkeypatch):
    client = storage.redis_client(metrics_redis)
    client.ping()
    storage.record(turn())
    read: list[list[str]] = []
    original = redis.client.Pipeline.execute

    def spying(self: Any, raise_on_error: bool = True) -> Any:
        read.append([str(args[1]) for args, _options in self.command_stack])
        return original(self, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", spying)
    per_span = len(STAGES) + 1  # one hash per stage and the counters
    for window, hours_most in (("1h", 1), ("24h", 24), ("7d", 168)):
        for now in NOWS:
            read.clear()
            metrics.summary(window, now=now)
            [keys] = read  # one pipelined round trip
            hour_keys = [k for k in keys if k.startswith(("mpai:metrics:hh:", "mpai:metrics:hc:"))]
            minute_keys = [k for k in keys if k.startswith(("mpai:metrics:h:", "mpai:metrics:c:"))]
            assert len(hour_keys) + len(minute_keys) == len(keys) == len(set(keys))
            assert len(hour_keys) <= hours_most * per_span, (window, now)
            assert len(minute_keys) <= 60 * per_span, (window, now)
            if window == "7d":
                assert len(keys) <= (168 + 60) * per_span < 70_560 / 40


def test_database_summary_equals_the_minute_merge_and_redis(metrics_db):
    records = synthetic_turns(NOWS[2], seed=11)
    for record in records:
        storage.record_database(record)
    for now in NOWS:
        for window in metrics.WINDOWS:
            report = metrics.summary(window, now=now)
            assert_summary_matches(report, brute_force(records, window, now))
    # hour rows exist, one per (hour, stage, bucket), beside the minute rows
    hour = storage.minute_of(HOUR_START) // 60
    hour_turns = MetricBucket.objects.get(minute=hour * 60, stage="@#turns", bucket=0).count
    assert hour_turns == sum(1 for r in records if storage.minute_of(r.ended_at) // 60 == hour)
