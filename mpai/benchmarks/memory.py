"""Benchmark suite ``memory``: does a process's memory level off over many turns?

Leak detection in the manner of a soak test: ``--iterations`` turns (default 1,000)
through one :class:`~mpai.chat.pipeline.ChatPipeline` on the offline provider (unpaced,
a 100-word reply), each in a conversation of its own as a new member would start one,
on the project's database and caches (a user is created and deleted again, with its
history). Resident memory (RSS, from ``/proc/self/statm``; Linux) is read after every
100 turns; the first 200 are the warm-up (imports, caches, the database pool). Printed:

- RSS after each hundred turns (MiB) and the growth per 100 turns after the warm-up
  (KiB; a level process stays well under 1 MiB);
- tracemalloc's top allocations by size growth between the end of the warm-up and the
  end of the run (file and line; run once more with tracemalloc on, since tracing slows
  every allocation).

Run with ``python manage.py mpai_benchmark memory [--iterations N]``.
"""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.test.utils import override_settings

from mpai.benchmarks import Writer
from mpai.metrics.memory import resident_bytes

DEFAULT_ITERATIONS = 1000
WARMUP = 200
STEP = 100
REPLY = " ".join(f"word{i}" for i in range(100))


def _drive(pipeline: Any, user: Any, count: int) -> None:
    for _ in range(count):
        with pipeline.stream(user=user, content="What does my plan include?") as events:
            for _event in events:
                pass


def _row(operation: str, value: float) -> dict[str, Any]:
    figures = dict.fromkeys(("mean", "min", "max", "p50", "p95", "p99"), float(value))
    return {"suite": "memory", "operation": operation, "unit": "bytes", "n": 1, **figures}


def run(stdout: Writer, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Print the figures of the module docstring; return two rows (unit ``bytes``):
    ``rss at the end`` and ``growth per 100 turns`` after the warm-up, each with its
    one value as ``p50`` (and mean, min, max, p95, p99), so baselines compare them."""
    from mpai.benchmarks.turn import UNLIMITED
    from mpai.chat.pipeline import ChatPipeline
    from mpai.providers.offline import OfflineProvider

    iterations = max(int(options.get("iterations") or DEFAULT_ITERATIONS), WARMUP + STEP)
    mpai_options = {
        **getattr(settings, "MPAI", {}),
        "RATE_LIMIT": {"ENABLED": False},
        # The site's quotas would refuse a thousand turns of one user in a day.
        "QUOTAS": {"default": UNLIMITED},
        "RESPONSE_CACHE_ENABLED": False,
    }
    provider = OfflineProvider(first_token_ms=0, tokens_per_second=0, reply=REPLY)
    user = get_user_model()._default_manager.create_user(
        username=f"mpai-bench-{uuid.uuid4().hex[:12]}"
    )
    rows: list[dict[str, Any]] = []
    try:
        with override_settings(MPAI=mpai_options):
            pipeline = ChatPipeline(provider)
            samples: list[tuple[int, int]] = []
            done = 0
            while done < iterations:
                _drive(pipeline, user, STEP)
                done += STEP
                rss = resident_bytes()
                if rss is not None:
                    samples.append((done, rss))
            # Again, traced: what grew between the end of the warm-up and the end.
            tracemalloc.start(5)
            try:
                _drive(pipeline, user, WARMUP)
                before = tracemalloc.take_snapshot()
                _drive(pipeline, user, iterations - WARMUP)
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
    finally:
        user.delete()

    stdout.write(f"memory over {iterations} turns in one process (offline provider, unpaced)\n")
    for count, rss in samples:
        stdout.write(f"  RSS after {count:>5} turns: {rss / 2**20:8.1f} MiB\n")
    if samples:
        rows.append(_row("rss at the end", samples[-1][1]))
    settled = [(count, rss) for count, rss in samples if count >= WARMUP]
    if len(settled) >= 2:
        (first_count, first_rss), (last_count, last_rss) = settled[0], settled[-1]
        growth = (last_rss - first_rss) * STEP / (last_count - first_count)
        stdout.write(
            f"growth after the {WARMUP}-turn warm-up: {growth / 1024:.1f} KiB per {STEP} turns\n"
        )
        rows.append(_row(f"growth per {STEP} turns", growth))
    elif not samples:
        stdout.write("RSS not available here (no /proc/self/statm)\n")
    stdout.write("tracemalloc, top growth after the warm-up (traced run):\n")
    for stat in after.compare_to(before, "lineno")[:10]:
        frame = stat.traceback[0]
        stdout.write(
            f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  "
            f"{frame.filename}:{frame.lineno}\n"
        )
    return rows
