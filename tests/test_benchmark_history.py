"""The ``history`` benchmark suite, tiny: it fills, serves, measures, explains, cleans up
and drops its own scratch database (no timing is asserted)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from urllib.parse import urlparse

import psycopg
import pytest

from mpai.benchmarks import history, suite_names

BASE_URL = os.environ.get(
    "MPAI_TEST_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/mpai"
)


def _scratch_url() -> str:
    return urlparse(BASE_URL)._replace(path=f"/mpai_bench_test_{os.getpid()}").geturl()


def _exists(url: str) -> bool:
    name = urlparse(url).path.lstrip("/")
    maintenance = urlparse(url)._replace(path="/postgres").geturl()
    with psycopg.connect(maintenance, autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            is not None
        )


@pytest.fixture
def scratch(monkeypatch: pytest.MonkeyPatch, django_db_blocker: object) -> Iterator[str]:
    url = _scratch_url()
    monkeypatch.setenv(history.ENV_URL, url)
    for name, value in {
        "MPAI_BENCH_HISTORY_MESSAGES": "2000",
        "MPAI_BENCH_HISTORY_USERS": "20",
        "MPAI_BENCH_HISTORY_HEAVY": "1000",
        "MPAI_BENCH_HISTORY_SPREAD": "400",
        "MPAI_BENCH_HISTORY_QUERY": "the",
        "MPAI_BENCH_HISTORY_DEPTH": "20",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MPAI_BENCH_KEEP", raising=False)
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        try:
            yield url
        finally:
            history.drop_database(url)


def test_history_is_a_suite() -> None:
    assert "history" in suite_names()


def test_refuses_without_a_scratch_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(history.ENV_URL, raising=False)
    with pytest.raises(history.BenchmarkRefused):
        history.bench_database_url()
    monkeypatch.setenv(history.ENV_URL, "postgres://postgres@127.0.0.1:5432/mpai")
    with pytest.raises(history.BenchmarkRefused):
        history.bench_database_url()
    monkeypatch.setenv(history.ENV_URL, "sqlite:///mpai_bench.sqlite3")
    with pytest.raises(history.BenchmarkRefused):
        history.bench_database_url()


@pytest.mark.timeout(300)
def test_tiny_run_produces_figures_and_drops_its_database(scratch: str) -> None:
    out = io.StringIO()

    class Out:
        def write(self, s: str, /) -> object:
            return out.write(s + "\n")

    rows = history.run(Out(), {"iterations": 5, "redis_url": None})
    text = out.getvalue()
    operations = {row["operation"] for row in rows}
    assert "fill (COPY + indexes + ANALYZE)" in operations
    assert "bare DRF view (token auth, 1 indexed query, 10 rows)" in operations
    assert "history page 1, heavy_oldest" in operations
    assert "history page 20, heavy_oldest" in operations
    assert "cleanup 10% (cleanup_chat_history)" in operations
    assert all(row["n"] >= 1 and row["p50"] > 0 for row in rows)
    assert "EXPLAIN (ANALYZE, BUFFERS): COUNT(*) of heavy_oldest" in text
    assert "Execution Time" in text
    assert text.count("cursor page == page 20: True") == 2
    assert "history cursor page at depth 20, heavy_spread" in operations
    assert not _exists(scratch)
