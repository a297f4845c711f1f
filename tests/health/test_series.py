"""Hourly series of the turn metrics (mpai.metrics.series) from the hour roll-ups, in
the database and in Redis: one point per hour, rates and percentiles per hour, one
query / one round trip for a whole week."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext

from mpai.metrics import histogram, series, storage
from mpai.metrics.record import STAGES
from tests.metrics.test_storage import NOW, metrics_db, metrics_redis, turn

__all__ = ["metrics_db", "metrics_redis"]  # fixtures used below

AT = (NOW // 3600) * 3600 + 1800  # the middle of an hour
HOUR = int(AT // 3600)  # its Unix hour


def record_some() -> None:
    """Three hours with turns: AT's hour, 2 hours before, and 30 hours before."""
    # AT's hour: 4 turns, 1 error, 1 cancelled, 1 cached.
    storage.record(turn(10.0, ended_at=AT))
    storage.record(turn(20.0, ended_at=AT - 1, cached=True))
    storage.record(turn(30.0, ended_at=AT - 2, outcome="cancelled"))
    storage.record(turn(4000.0, ended_at=AT - 3, outcome="provider_timeout"))
    # Two hours before: 1 turn, only the total stage timed.
    storage.record(turn(ended_at=(HOUR - 2) * 3600 + 5, timings_ms={"total": 250.0}))
    # 30 hours before: outside 24h, inside 7d.
    storage.record(turn(99.0, ended_at=(HOUR - 30) * 3600 + 100, outcome="provider_error"))


def check_points(points: list[series.Point], hours: int) -> None:
    assert len(points) == hours
    assert [p["hour"] for p in points] == list(range(HOUR - hours + 1, HOUR + 1))
    assert all(p["start"] == p["hour"] * 3600 for p in points)
    assert points[-1]["start_iso"] == datetime.fromtimestamp(HOUR * 3600, UTC).isoformat()

    last = points[-1]
    assert (last["turns"], last["errors"], last["cached"]) == (4, 1, 1)
    assert last["error_rate"] == pytest.approx(0.25)
    assert last["cache_hit_rate"] == pytest.approx(0.25)
    total = last["stages"]["total"]
    assert total["count"] == 4
    assert total["p50"] == pytest.approx(20.0, rel=histogram.MAX_RELATIVE_ERROR)
    assert total["p99"] == pytest.approx(4000.0, rel=histogram.MAX_RELATIVE_ERROR)
    assert set(last["stages"]) == set(STAGES)

    two_before = points[-3]
    assert (two_before["turns"], two_before["errors"]) == (1, 0)
    assert two_before["error_rate"] == 0.0
    assert two_before["stages"]["total"]["p95"] == pytest.approx(250.0, rel=0.1)
    assert two_before["stages"]["context"] == {"count": 0, "p50": None, "p95": None, "p99": None}

    empty = points[-2]
    assert (empty["turns"], empty["error_rate"], empty["cache_hit_rate"]) == (0, None, None)


def test_database_series_day_and_week(metrics_db):
    record_some()
    day = series.series("24h", now=AT)
    check_points(day, 24)
    assert sum(p["turns"] for p in day) == 5
    with CaptureQueriesContext(connection) as queries:
        week = series.series("7d", now=AT)
    assert len(queries) == 1  # the whole week in one query
    check_points(week, 168)
    assert sum(p["turns"] for p in week) == 6
    [old] = [p for p in week if p["hour"] == HOUR - 30]
    assert (old["turns"], old["errors"], old["error_rate"]) == (1, 1, 1.0)


def test_redis_series_day_and_week_in_one_round_trip(metrics_redis, monkeypatch):
    record_some()
    check_points(series.series("24h", now=AT), 24)
    client = storage.redis_client(metrics_redis)
    client.ping()
    sent: list[Any] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(command)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    week = series.series("7d", now=AT)
    monkeypatch.undo()
    assert len(sent) == 1
    check_points(week, 168)
    assert sum(p["turns"] for p in week) == 6


def test_series_agrees_with_summary_over_whole_hours(metrics_db):
    """The hours of the series add up to summary()'s counters over the same whole hours."""
    from mpai import metrics

    record_some()
    end = (HOUR + 1) * 3600 - 1  # the last second of AT's hour: 24 whole hours
    points = series.series("24h", now=end)
    figures = metrics.summary("24h", now=end)
    assert sum(p["turns"] for p in points) == figures["turns"]
    assert sum(p["cached"] for p in points) == figures["cached"]


def test_unknown_window_and_failing_store(metrics_db, monkeypatch):
    with pytest.raises(ValueError, match="unknown window"):
        series.series("1h")

    def broken(hours: range) -> Any:
        raise ConnectionError("store down")

    monkeypatch.setattr(series, "read_hours", broken)
    points = series.series("24h", now=AT)
    assert len(points) == 24
    assert all(p["turns"] == 0 for p in points)
