"""``manage.py mpai_benchmark cache`` runs and reports every figure (no timing asserts)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.db import connection

from mpai.benchmarks import default_redis_url, suite_names

pytestmark = pytest.mark.django_db


def test_the_cache_suite_reports_every_operation_and_ratio(redis_db: str, tmp_path: Path) -> None:
    out = io.StringIO()
    rows_file = tmp_path / "rows.json"
    call_command(
        "mpai_benchmark",
        "cache",
        "--iterations",
        "40",
        "--redis-url",
        redis_db,
        "--json",
        str(rows_file),
        stdout=out,
    )
    report = out.getvalue()
    rows = {row["operation"]: row for row in json.loads(rows_file.read_text())}
    assert {row["suite"] for row in rows.values()} == {"cache"}
    assert rows["layered L1 hit"]["n"] == 40
    assert "coherence (set here to peer L1)" in rows
    for operation in (
        "layered L1 hit",
        "layered L2 hit",
        "layered L3 hit",
        "layered miss",
        "layered set",
        "LocMemCache hit",
        "RedisCache hit",
        "DatabaseCache hit",
        "DatabaseCache set",
    ):
        assert operation in report
    assert "L1 hit / LocMemCache hit" in report
    assert "L2 hit / RedisCache hit" in report
    assert "set / sum of the 3 sets" in report
    assert "coherence: another process's L1 drops a key set here after median" in report
    # Nothing is left behind: no keys, no table.
    client = redis.Redis.from_url(redis_db)
    assert [key for key in client.scan_iter(match="mpai-bench-*")] == []
    assert not [name for name in connection.introspection.table_names() if "mpai_bench" in name]


def test_the_ratelimit_suite_returns_its_rows(redis_db: str) -> None:
    from mpai.benchmarks import ratelimit

    rows = ratelimit.run(io.StringIO(), {"redis_url": redis_db, "iterations": 20})
    assert [row["operation"] for row in rows] == ["PING", "check (allowed)", "check (rejected)"]
    assert all(row["min"] <= row["p50"] <= row["p99"] <= row["max"] for row in rows)


def test_suites_are_the_modules_of_the_package() -> None:
    assert {"cache", "context", "ops", "ratelimit", "turn"} <= set(suite_names())


def test_default_redis_url(settings: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    if hasattr(settings, "REDIS_URL"):
        del settings.REDIS_URL
    assert default_redis_url() == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("REDIS_URL", "redis://example:6380")
    assert default_redis_url() == "redis://example:6380/0"
    settings.REDIS_URL = "redis://example:6381/4"
    assert default_redis_url() == "redis://example:6381/4"
