"""``manage.py mpai_benchmark`` as a toolkit: several suites, ``ops``, JSON rows,
baselines and comparisons. Small iteration counts; no timing assertions."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.management import CommandError, call_command

from mpai.benchmarks import ops
from mpai.benchmarks._results import compare, load_rows, progress_enabled
from mpai.benchmarks._stats import summary_row
from mpai.models import Message

pytestmark = pytest.mark.django_db

OPERATIONS = (
    "validate_content",
    "context build",
    "memory turn (append/end_turn)",
    "final frame + json.dumps",
    "history query [:20] (database)",
    "signal dispatch per turn (5 signals)",
    "rate-limit check (Redis)",
)
#: Nothing listens there: the rate-limit check is skipped.
NO_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    """The private test Redis (ops touches a unique key prefix only, deleted after)."""
    return f"{redis_server.url}/7"


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("mpai_benchmark", *args, "--no-progress", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_ops_reports_every_operation_with_sane_figures(tmp_path: Path, redis_url: str) -> None:
    target = tmp_path / "rows.json"
    report, _ = run("ops", "--iterations", "30", "--redis-url", redis_url, "--json", str(target))
    rows = json.loads(target.read_text())
    assert [row["operation"] for row in rows] == list(OPERATIONS)
    for row in rows:
        assert row["suite"] == "ops"
        assert row["unit"] == "us"
        assert row["n"] == 30
        assert 0 < row["min"] <= row["p50"] <= row["p95"] <= row["p99"] <= row["max"]
        assert row["min"] <= row["mean"] <= row["max"]
        assert isinstance(row["peak_bytes"], int)
        assert row["peak_bytes"] >= 0
        assert row["operation"] in report
    assert "receivers connected per signal:" in report
    # The history user's messages are gone, and so is the rate-limit bucket.
    assert not Message.objects.filter(owner__username__startswith="mpai-bench-").exists()
    client = redis.Redis.from_url(redis_url)
    assert list(client.scan_iter(match="mpai:rl:bench:*")) == []


def test_ops_skips_the_rate_limit_check_without_redis() -> None:
    report, _ = run("ops", "--iterations", "5", "--redis-url", NO_REDIS)
    assert "rate-limit check skipped: Redis at redis://127.0.0.1:1/0 did not answer" in report
    assert "rate-limit check (Redis)" not in report


def test_several_suites_run_in_order_and_json_to_stdout(redis_url: str) -> None:
    out, err = run("context", "ops", "--iterations", "5", "--redis-url", redis_url, "--json", "-")
    rows = json.loads(out)  # stdout is the JSON alone; the tables went to stderr
    suites = [row["suite"] for row in rows]
    assert suites == ["context"] * 3 + ["ops"] * len(OPERATIONS)
    assert "== context ==" in err
    assert "== ops ==" in err
    assert "context building" in err
    assert "key operations" in err


def test_no_suite_runs_the_default_set(tmp_path: Path) -> None:
    target = tmp_path / "rows.json"
    run("--iterations", "3", "--redis-url", NO_REDIS, "--json", str(target))
    assert {row["suite"] for row in json.loads(target.read_text())} == {"context", "ops"}


def test_unknown_suite_is_an_error() -> None:
    with pytest.raises(CommandError, match="No benchmark suite named 'nope'"):
        run("nope")


def test_baseline_then_compare(tmp_path: Path) -> None:
    rows_file, baseline = tmp_path / "rows.json", tmp_path / "baseline.json"
    report, _ = run(
        "ops",
        "--iterations",
        "10",
        "--redis-url",
        NO_REDIS,
        "--json",
        str(rows_file),
        "--save-baseline",
        str(baseline),
    )
    assert f"saved to {baseline}" in report
    saved = json.loads(baseline.read_text())
    assert saved["format"] == "mpai-benchmark-baseline"
    assert saved["rows"] == json.loads(rows_file.read_text())

    # The same rows against their own baseline: every ratio 1.00, nothing flagged.
    report, _ = run(
        "--from-json", str(rows_file), "--compare", str(baseline), "--fail-on-regression"
    )
    assert "SLOWER" not in report
    assert report.count(" 1.00  ok") == len(saved["rows"])

    # A baseline twice as fast (p50 halved): every operation flagged.
    doctored = tmp_path / "doctored.json"
    for row in saved["rows"]:
        row["p50"] /= 2
    doctored.write_text(json.dumps(saved))
    report, _ = run("--from-json", str(rows_file), "--compare", str(doctored))
    assert report.count("SLOWER (flagged)") == len(saved["rows"])
    assert " 2.00  SLOWER" in report
    with pytest.raises(CommandError, match="slower than the baseline"):
        run("--from-json", str(rows_file), "--compare", str(doctored), "--fail-on-regression")
    # A looser threshold lets a 2x slowdown through.
    run(
        "--from-json",
        str(rows_file),
        "--compare",
        str(doctored),
        "--threshold",
        "1.5",
        "--fail-on-regression",
    )


def test_a_live_run_compares_with_a_baseline(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    run("ops", "--iterations", "5", "--redis-url", NO_REDIS, "--save-baseline", str(baseline))
    for row in (document := json.loads(baseline.read_text()))["rows"]:
        row["p50"] /= 2
    baseline.write_text(json.dumps(document))
    report, _ = run("ops", "--iterations", "5", "--redis-url", NO_REDIS, "--compare", str(baseline))
    for operation in OPERATIONS[:-1]:
        assert report.count(operation) == 2  # its row in the table, and its comparison


def test_compare_pairs_by_suite_and_operation() -> None:
    current = [summary_row("ops", "a", [1.0, 2.0, 3.0]), summary_row("ops", "new", [1.0])]
    baseline = [summary_row("ops", "a", [1.0, 1.5, 2.0]), summary_row("ops", "gone", [1.0])]
    result = {(item.operation): item for item in compare(current, baseline, 0.10)}
    assert result["a"].ratio == pytest.approx(2.0 / 1.5)
    assert result["a"].regressed
    assert result["new"].ratio is None
    assert not result["new"].regressed
    assert result["gone"].current_p50 is None
    assert not result["gone"].regressed
    same = compare(current, current, 0.10)
    assert not any(item.regressed for item in same)


def test_malformed_rows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an mpai benchmark baseline"):
        load_rows('{"rows": []}')
    with pytest.raises(ValueError, match="malformed row"):
        load_rows('[{"suite": "ops"}]')
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(CommandError, match="Cannot read benchmark rows"):
        run("--from-json", str(bad))


def test_fail_on_regression_needs_compare() -> None:
    with pytest.raises(CommandError, match="needs --compare"):
        run("ops", "--fail-on-regression")


def test_the_progress_bar_needs_a_terminal_and_no_opt_out() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress_enabled({}, Tty())
    assert not progress_enabled({"progress": False}, Tty())
    assert not progress_enabled({}, io.StringIO())


def test_summary_row_figures() -> None:
    row = summary_row("s", "o", [5.0, 1.0, 3.0], peak_bytes=10)
    assert row == {
        "suite": "s",
        "operation": "o",
        "unit": "us",
        "n": 3,
        "mean": 3.0,
        "min": 1.0,
        "max": 5.0,
        "p50": 3.0,
        "p95": 5.0,
        "p99": 5.0,
        "peak_bytes": 10,
    }
    assert ops.DEFAULT_ITERATIONS == 2000


@pytest.mark.django_db(transaction=True)  # its relayed turns save from worker threads
def test_the_turn_suite_returns_its_rows(tmp_path: Path) -> None:
    target = tmp_path / "rows.json"
    report, _ = run("turn", "--iterations", "2", "--json", str(target))
    rows = json.loads(target.read_text())
    assert {row["suite"] for row in rows} == {"turn"}
    assert "mpai turn: per delta" in {row["operation"] for row in rows}
    assert "CPU per turn" in report


@pytest.mark.django_db(transaction=True)
def test_the_turn_suite_runs_on_a_site_whose_quota_would_refuse_its_turns(settings) -> None:
    # One message a day for everyone: the benchmark's own turns are not the site's
    # members' and must not be refused (a refused relayed turn once hung the run).
    settings.MPAI = {
        **settings.MPAI,
        "QUOTAS": {
            "default": {"messages_per_day": 1, "tokens_per_day": None, "tokens_per_month": None}
        },
    }
    report, _ = run("turn", "--iterations", "3")
    assert "CPU per turn" in report


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_memory_suite_reports_rss_growth_and_top_allocations() -> None:
    import io

    from mpai.benchmarks import memory

    out = io.StringIO()
    rows = memory.run(out, {"iterations": 300})
    text = out.getvalue()
    assert "RSS after   300 turns" in text
    assert "tracemalloc, top growth" in text
    names = {row["operation"] for row in rows}
    assert names == {"rss at the end", "growth per 100 turns"}
    assert all(row["unit"] == "bytes" and row["n"] == 1 for row in rows)
