"""The ``tools`` benchmark suite, tiny: it has its rows and sane figures (no timing
target is asserted; the parallel bound is behaviour: calls run at once, not in turn)."""

from __future__ import annotations

import io

from django.core.management import call_command

from mpai.benchmarks import suite_names
from mpai.benchmarks import tools as suite
from mpai.tools import metrics

OPERATIONS = [
    "run_tool_calls, 1 call",
    "run_tool_calls, 2 calls",
    "run_tool_calls, 3 calls",
    "work of 3 calls without threads",
    "floor: start a thread, wait for it",
    "validate arguments (jsonschema)",
    "assemble 3 calls from stream deltas",
    "follow-up messages, 3 calls",
    "tool_called dispatch, 3 calls",
    "loop iteration, 3 calls",
    "20 parallel calls of 50 ms",
]


class Out:
    def __init__(self) -> None:
        self.text = io.StringIO()

    def write(self, s: str, /) -> object:
        return self.text.write(s)


def test_tools_is_a_suite() -> None:
    assert "tools" in suite_names()


def test_tiny_run_has_every_row_and_sane_figures() -> None:
    out = Out()
    rows = suite.run(out, {"iterations": 5, "progress": False})
    assert [row["operation"] for row in rows] == OPERATIONS
    for row in rows:
        assert row["suite"] == "tools"
        assert row["unit"] == "us"
        assert 0 < row["min"] <= row["p50"] <= row["max"], row
    parallel = rows[-1]
    assert parallel["n"] == 5
    # At once, not one after the other (that would be 20 x 50 ms = 1000 ms): loose bound.
    assert parallel["max"] < 10 * 50_000
    assert parallel["wall_ms"] >= 50.0  # every call waited its 50 ms
    assert parallel["ratio"] == parallel["wall_ms"] / 50.0
    assert rows[2]["per_call"] == rows[2]["p50"] / 3
    text = out.text.getvalue()
    assert "loop iteration of 3 calls: p50" in text
    assert "(b) 20 parallel calls of 50 ms, max_concurrency=20, 5 runs: wall p50" in text
    for name in OPERATIONS[:-1]:
        assert name in text


def test_the_run_leaves_no_tool_figures_in_the_cache() -> None:
    metrics._reset()
    suite.run(Out(), {"iterations": 2, "progress": False})
    assert metrics.flush_tool_metrics() == 0  # the run's figures went to its own cache
    names = {row["tool"] for row in metrics.tool_summary()}
    assert not names & {"bench_lookup", "bench_wait"}


def test_the_command_writes_json_rows(tmp_path) -> None:
    target = tmp_path / "rows.json"
    out = io.StringIO()
    call_command(
        "mpai_benchmark",
        "tools",
        "--iterations",
        "3",
        "--no-progress",
        "--json",
        str(target),
        stdout=out,
    )
    import json

    rows = json.loads(target.read_text())
    assert [row["operation"] for row in rows] == OPERATIONS
    assert "(a) mpai's cost per tool-loop iteration" in out.getvalue()
