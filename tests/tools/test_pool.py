"""The process-wide pool of tool-call workers (mpai.tools.execution): reused threads,
stuck workers that block nothing, a bounded thread count, and per-call isolation."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

from django.utils import translation

from mpai.tools import execution, run_tool_calls, tool
from tests.tools.test_execution import blocking_tool, call
from tests.waiting import wait_until

#: A context variable a tool sets; the next call must not see it.
MARK: contextvars.ContextVar[str] = contextvars.ContextVar("mark", default="unset")


def workers() -> int:
    """How many pool worker threads are alive."""
    return sum(1 for t in threading.enumerate() if t.name == execution.WORKER_NAME)


@tool
def quick(user: Any, n: int = 0) -> dict[str, int]:
    """Answer at once."""
    return {"n": n}


def test_a_worker_stuck_in_a_timed_out_call_does_not_block_later_calls(configure, release) -> None:
    limit = execution.pool_idle_max(2) + 2  # more stuck calls than the pool keeps idle
    # Earlier tests may have left more idle workers (they end after POOL_IDLE_SECONDS).
    ceiling = max(workers(), execution.pool_idle_max(2))
    configure([blocking_tool(release, timeout=0.05), quick])
    stuck = run_tool_calls(
        None, [call("wait", call_id=f"w{i}") for i in range(limit)], max_concurrency=limit
    )
    assert [r.error_code for r in stuck] == ["timeout"] * limit
    # Every worker that existed may be stuck now; later calls still run (a timeout of
    # 30 s: were they queued behind a stuck worker, they would wait for it).
    for turn in range(3):
        results = run_tool_calls(
            None,
            [call("quick", f'{{"n": {i}}}', call_id=f"q{i}") for i in range(2)],
            max_concurrency=2,
            timeout_s=30,
        )
        assert [(r.status, r.content) for r in results] == [
            ("ok", '{"n": 0}'),
            ("ok", '{"n": 1}'),
        ], turn
    assert workers() >= limit  # the stuck ones are still there, not counted as free
    release.set()  # the stuck calls return: their workers rejoin the pool or end
    wait_until(
        lambda: workers() <= ceiling,
        timeout=10,
        what="the stuck workers to rejoin the pool or end",
    )


def test_many_turns_reuse_the_workers_and_do_not_grow_the_thread_count(configure) -> None:
    configure([quick])
    idle_max = execution.pool_idle_max(3)
    # Earlier tests may have left more idle workers (they end after POOL_IDLE_SECONDS).
    ceiling = max(workers(), idle_max)
    started = execution._pool.started
    for turn in range(200):
        results = run_tool_calls(
            None, [call("quick", call_id=f"c{i}") for i in range(3)], max_concurrency=3
        )
        assert [r.status for r in results] == ["ok"] * 3, turn
    # 600 calls, yet at most a pool's worth of threads started (idle workers of earlier
    # tests may have ended meanwhile and been replaced), not one per call.
    assert execution._pool.started - started <= idle_max
    wait_until(lambda: workers() <= ceiling, timeout=10, what="at most the pool's workers")


def test_calls_on_a_reused_worker_share_no_context(configure) -> None:
    @tool
    def mark(user: Any) -> dict[str, str]:
        """Set a context variable and a language, return what was there before."""
        before = {"mark": MARK.get(), "language": translation.get_language()}
        MARK.set(f"user {getattr(user, 'pk', None)}")
        translation.activate("fr")
        return before

    configure([mark])
    started = execution._pool.started
    seen = [
        run_tool_calls(user, [call("mark")], max_concurrency=1)[0].content
        for user in (type("U", (), {"pk": 1})(), type("U", (), {"pk": 2})())
    ]
    assert execution._pool.started - started <= 1  # the same worker, reused
    language = translation.get_language()
    for content in seen:
        assert content == f'{{"mark": "unset", "language": "{language}"}}'
