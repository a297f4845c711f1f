"""Benchmark suite ``tools``: what mpai's tool loop costs besides the tools and the model.

Measured in one run, in this process, with tools configured for the run only
(``MPAI["TOOLS"]`` overridden) and mpai's cache redirected to a private in-memory
alias (so the tool metrics the run records reach no shared cache), under a site
identity of the run's own (known to the process for the run: no database is read),
metrics on:

(a) mpai's own cost per loop iteration, tools returning at once and no provider
(µs; each operation called ``iterations`` times after 20 warm-up calls):

- ``run_tool_calls, N call(s)`` for N = 1, 2, 3: :func:`mpai.tools.run_tool_calls` of
  N calls of a trivial tool (arguments parsed, validated with ``jsonschema``, each
  call handed to a worker of the reused pool, the result encoded), also shown per call;
- ``work of 3 calls without threads``: what ``run_tool_calls`` does for three calls
  besides its worker threads (resolve, parse, validate, run, encode), in the caller's
  thread;
- ``floor: start a thread, wait for it``: a bare ``threading.Thread`` setting an
  Event the caller waits on, what a new thread per call would cost at least (the
  pool's workers are reused: a call costs a hand-off, not a thread start; it varies
  with the machine's load);
- ``validate arguments (jsonschema)``: the schema check of one call alone (part of
  the above);
- ``assemble 3 calls from stream deltas``: :class:`mpai.providers.base.
  ToolCallAssembler` over the deltas OpenAI streams for three calls (id and name,
  then the arguments in four pieces each);
- ``follow-up messages, 3 calls``: the assistant message of the calls, the three
  ``tool`` messages, the three ``Message.tool_calls`` records and the next request
  (:mod:`mpai.chat.tool_loop`, on a 20-message conversation);
- ``tool_called dispatch, 3 calls``: :data:`mpai.signals.tool_called` sent three
  times through :func:`mpai.chat.pipeline.send_robust` with the receivers connected
  (mpai's: the Prometheus metrics, the slow-operation log, the per-tool cache figures);
- ``loop iteration, 3 calls``: all of the above together, as one iteration of
  :meth:`mpai.chat.pipeline.ChatPipeline._converse` runs them; the target is under
  1 ms (:data:`ITERATION_TARGET_US`).

(b) ``20 parallel calls of 50 ms``: twenty calls of a tool that waits 50 ms
(``threading.Event().wait(0.05)``) with ``max_concurrency=20``, wall time per run
(µs in the rows, ms and its ratio to 50 ms in the table), :data:`PARALLEL_RUNS` runs
(fewer when ``iterations`` is smaller). Run one after the other they would take
20 × 50 ms = 1 s.

Run with ``python manage.py mpai_benchmark tools [--iterations N]`` (default 2000).
"""

from __future__ import annotations

import gc
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.test.utils import override_settings

from mpai.benchmarks import Writer
from mpai.benchmarks._results import progress_bar
from mpai.benchmarks._stats import summary_row, time_us

SUITE = "tools"
DEFAULT_ITERATIONS = 2000
WARMUP = 20
#: Runs of the parallel measurement (at most; never more than ``iterations``).
PARALLEL_RUNS = 10
#: Calls of the parallel measurement, each waiting :data:`PARALLEL_WAIT_S` seconds.
PARALLEL_CALLS = 20
PARALLEL_WAIT_S = 0.05
#: What one loop iteration of mpai may cost, tools and provider excluded (µs).
ITERATION_TARGET_US = 1000.0
#: The private cache alias of the run (a LocMemCache).
CACHE_ALIAS = "mpai-benchmark-tools"
ARGUMENTS = json.dumps({"query": "refund policy", "limit": 3})


def _tools() -> tuple[Any, Any]:
    """The run's two tools: ``bench_lookup`` (returns at once) and ``bench_wait``
    (waits :data:`PARALLEL_WAIT_S` s)."""
    from mpai.tools import tool

    def lookup(user: Any, query: str, limit: int = 3) -> dict[str, Any]:
        """Return the query at once (a trivial tool).

        Args:
            query: some keywords.
            limit: the most results.
        """
        return {"query": query, "limit": limit, "results": []}

    def wait(user: Any) -> dict[str, Any]:
        """Wait 50 ms, then answer."""
        threading.Event().wait(PARALLEL_WAIT_S)
        return {"waited_ms": PARALLEL_WAIT_S * 1000}

    return tool(name="bench_lookup")(lookup), tool(name="bench_wait", timeout=5.0)(wait)


def _calls(
    count: int, name: str = "bench_lookup", arguments: str = ARGUMENTS
) -> list[dict[str, str]]:
    return [{"id": f"call_{i}", "name": name, "arguments": arguments} for i in range(count)]


def _deltas(calls: list[dict[str, str]]) -> list[list[dict[str, Any]]]:
    """The ``delta.tool_calls`` pieces of ``calls`` as OpenAI streams them, one list per
    chunk: id and name first, then the arguments in four pieces."""
    chunks: list[list[dict[str, Any]]] = []
    for index, call in enumerate(calls):
        chunks.append(
            [{"index": index, "id": call["id"], "type": "function", "name": call["name"]}]
        )
        text, step = call["arguments"], -(-len(call["arguments"]) // 4)
        for start in range(0, len(text), step):
            chunks.append([{"index": index, "arguments": text[start : start + step]}])
    return chunks


def _operations(user: Any) -> list[tuple[str, Callable[[], object], int]]:
    """(name, call, tool calls per call) of every operation of part (a)."""
    from mpai import signals
    from mpai.chat.pipeline import send_robust
    from mpai.chat.tool_loop import assistant_tool_message, tool_record
    from mpai.chat.trace import Trace
    from mpai.providers import ChatRequest
    from mpai.providers.base import ToolCallAssembler
    from mpai.tools import get_tool, run_tool_calls, tool_messages
    from mpai.tools.execution import _outcome, _prepare, _schema_problem

    three = _calls(3)
    deltas = _deltas(three)
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 20}
        for i in range(20)
    ]
    request = ChatRequest(model="offline-1", messages=history, tools=[{"type": "function"}])
    results = run_tool_calls(user, three)
    lookup = get_tool("bench_lookup")
    assert lookup is not None
    arguments = json.loads(ARGUMENTS)
    trace = Trace()
    conversation = SimpleNamespace(pk=0)

    def assemble() -> Any:
        assembler = ToolCallAssembler()
        for chunk in deltas:
            assembler.add(chunk)
        return assembler.calls()

    def follow_up(calls: Any, done: Any) -> Any:
        records = [tool_record(call, result) for call, result in zip(calls, done, strict=True)]
        messages = [*request.messages, assistant_tool_message("", calls), *tool_messages(done)]
        return replace(request, messages=messages), records

    def dispatch(done: Any) -> None:
        for result in done:
            send_robust(
                signals.tool_called,
                trace=trace,
                user=user,
                conversation=conversation,
                name=result.name,
                call_id=result.call_id,
                status=result.status,
                duration_ms=result.duration_ms,
                error_code=result.error_code,
            )

    def iteration() -> Any:
        calls = assemble()
        done = run_tool_calls(user, calls)
        dispatch(done)
        return follow_up(calls, done)

    def runner(calls: list[dict[str, str]]) -> Callable[[], object]:
        return lambda: run_tool_calls(user, calls)

    operations: list[tuple[str, Callable[[], object], int]] = [
        (f"run_tool_calls, {n} call{'s' if n > 1 else ''}", runner(_calls(n)), n) for n in (1, 2, 3)
    ]

    def thread_floor() -> None:
        done = threading.Event()
        threading.Thread(target=done.set, daemon=True).start()
        done.wait()

    def inline() -> None:
        for raw in three:
            call = _prepare(user, raw, 5.0)
            _outcome(user, call, 16 * 1024)

    operations += [
        ("work of 3 calls without threads", inline, 3),
        ("floor: start a thread, wait for it", thread_floor, 1),
        ("validate arguments (jsonschema)", lambda: _schema_problem(lookup, arguments), 1),
        ("assemble 3 calls from stream deltas", assemble, 3),
        ("follow-up messages, 3 calls", lambda: follow_up(three, results), 3),
        ("tool_called dispatch, 3 calls", lambda: dispatch(results), 3),
        ("loop iteration, 3 calls", iteration, 3),
    ]
    return operations


@contextmanager
def _own_site() -> Iterator[None]:
    """Make this process know a site identity of the run's own (the tool metrics are
    kept per site) without reading or writing any database; forget it afterwards."""
    from django.db import connections, router

    from mpai import site_identity
    from mpai.models import SiteIdentity

    alias = router.db_for_write(SiteIdentity)
    memo = (alias, str(connections[alias].settings_dict.get("NAME")))
    previous = site_identity._known.get(memo)
    site_identity._known[memo] = uuid.uuid4().hex
    try:
        yield
    finally:
        if previous is None:
            site_identity._known.pop(memo, None)
        else:
            site_identity._known[memo] = previous


def _parallel(user: Any, runs: int) -> list[float]:
    """Wall time (µs) of each run of :data:`PARALLEL_CALLS` waiting calls at once."""
    from mpai.tools import run_tool_calls

    calls = _calls(PARALLEL_CALLS, "bench_wait", "{}")
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        results = run_tool_calls(user, calls, max_concurrency=PARALLEL_CALLS)
        samples.append((time.perf_counter_ns() - start) / 1000)
        bad = [result for result in results if result.status != "ok"]
        if bad:
            raise RuntimeError(f"a parallel call failed: {bad[0]}")
    return samples


def run(stdout: Writer, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Measure parts (a) and (b) of the module docstring; print a table, return the rows.

    Args:
        options: ``iterations`` (int or None: 2000) per operation of part (a); part
            (b) runs ``min(iterations, PARALLEL_RUNS)`` times. ``progress`` (bool,
            default True: a tqdm bar on stderr when it is a TTY).

    Returns:
        One :func:`mpai.benchmarks._stats.summary_row` per operation (µs); the
        ``run_tool_calls`` rows add ``per_call`` (µs, p50 / calls), the parallel row
        ``wall_ms`` (ms, p50) and ``ratio`` (p50 wall / 50 ms).

    Raises:
        ValueError: ``iterations`` < 1.
    """
    iterations = int(options.get("iterations") or DEFAULT_ITERATIONS)
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    from mpai import signals
    from mpai.tools import metrics

    lookup, wait = _tools()
    caches = {
        **settings.CACHES,
        CACHE_ALIAS: {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    mpai = {
        **getattr(settings, "MPAI", {}),
        "TOOLS": [lookup, wait],
        "CACHE_ALIAS": CACHE_ALIAS,
        "METRICS_ENABLED": True,
    }
    user = SimpleNamespace(pk=0, username="bench", is_authenticated=True)
    rows: list[dict[str, Any]] = []
    runs = min(iterations, PARALLEL_RUNS)
    receivers = len(signals.tool_called.receivers)
    with override_settings(CACHES=caches, MPAI=mpai), _own_site():
        try:
            operations = _operations(user)
            bar = progress_bar(options, total=len(operations) + 1, desc="tools")
            with closing(bar):
                for name, call, count in operations:
                    bar.set_postfix_str(name, refresh=False)
                    gc.collect()
                    row = summary_row(SUITE, name, time_us(call, iterations, warmup=WARMUP))
                    if name.startswith("run_tool_calls"):
                        row["per_call"] = row["p50"] / count
                    rows.append(row)
                    bar.update(1)
                gc.collect()
                samples = _parallel(user, runs)
                bar.update(1)
            name = f"{PARALLEL_CALLS} parallel calls of {PARALLEL_WAIT_S * 1000:g} ms"
            row = summary_row(SUITE, name, samples)
            row["wall_ms"] = row["p50"] / 1000
            row["ratio"] = row["wall_ms"] / (PARALLEL_WAIT_S * 1000)
            rows.append(row)
        finally:
            metrics.flush_tool_metrics()  # into the private cache, not a shared one
            metrics._reset()
    _report(stdout, rows, iterations, runs, receivers)
    return rows


def _report(
    stdout: Writer, rows: list[dict[str, Any]], iterations: int, runs: int, receivers: int
) -> None:
    stdout.write(
        f"(a) mpai's cost per tool-loop iteration, trivial tools, no provider: "
        f"{iterations} iterations each (µs)\n"
    )
    stdout.write(
        f"{'operation':<40}{'mean':>9}{'min':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>10}"
        f"{'per call':>10}\n"
    )
    for row in rows[:-1]:
        per_call = f"{row['per_call']:>10.1f}" if "per_call" in row else f"{'':>10}"
        stdout.write(
            f"{row['operation']:<40}{row['mean']:>9.1f}{row['min']:>9.1f}{row['p50']:>9.1f}"
            f"{row['p95']:>9.1f}{row['p99']:>9.1f}{row['max']:>10.1f}{per_call}\n"
        )
    iteration = next(row for row in rows if row["operation"] == "loop iteration, 3 calls")
    ops = {row["operation"]: row["p50"] for row in rows}
    verdict = "under" if iteration["p50"] < ITERATION_TARGET_US else "OVER"
    threads = max(ops["run_tool_calls, 3 calls"] - ops["work of 3 calls without threads"], 0.0)
    bare = ops["floor: start a thread, wait for it"]
    stdout.write(
        f"loop iteration of 3 calls: p50 {iteration['p50']:.0f} µs, {verdict} the "
        f"{ITERATION_TARGET_US:.0f} µs target; run_tool_calls' hand-off of 3 calls to "
        f"pooled workers about {threads:.0f} µs of it (p50 of run_tool_calls, 3 calls, minus "
        f"the work without threads; one bare thread: {bare:.0f} µs); "
        f"tool_called receivers: {receivers}\n"
    )
    parallel = rows[-1]
    stdout.write(
        f"(b) {parallel['operation']}, max_concurrency={PARALLEL_CALLS}, {runs} runs: "
        f"wall p50 {parallel['wall_ms']:.1f} ms (min {parallel['min'] / 1000:.1f}, "
        f"max {parallel['max'] / 1000:.1f}), {parallel['ratio']:.2f} × "
        f"{PARALLEL_WAIT_S * 1000:g} ms (one after the other: "
        f"{PARALLEL_CALLS * PARALLEL_WAIT_S * 1000:.0f} ms)\n"
    )
