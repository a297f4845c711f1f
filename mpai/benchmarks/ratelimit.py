"""Benchmark suite ``ratelimit``: the Redis token-bucket check against a bare PING.

A check's floor is one Redis round trip, so the figure that matters is the ratio of a
check to a ``PING`` on the same connection (target: about 1, i.e. one round trip plus
the script's few microseconds; README, "Benchmarks").

Run with ``python manage.py mpai_benchmark ratelimit`` (the command passes
``options``), or directly::

    from mpai.benchmarks import ratelimit
    ratelimit.run(sys.stdout, {"redis_url": None, "iterations": 5000})

Nothing is flushed: the buckets use a unique key prefix and are deleted at the end.
"""

from __future__ import annotations

import math
import statistics
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from redis import Redis

from mpai.benchmarks import Writer, default_redis_url
from mpai.benchmarks._stats import nearest_rank, summary_row
from mpai.chat.ratelimit.redis_bucket import RedisTokenBucket

DEFAULT_ITERATIONS = 5000
WARMUP = 50


def _time_us(call: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - start) / 1000


def run(stdout: Writer, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Measure the rate-limit check and print median and p99 in microseconds; return one
    :func:`~mpai.benchmarks._stats.summary_row` per operation (µs).

    Args:
        stdout: where the table goes (a management command's ``self.stdout`` or a file).
        options: ``redis_url`` (str or None: :func:`mpai.benchmarks.default_redis_url`,
            touched only under a unique key prefix) and ``iterations`` (int,
            default 5000) per measured operation.

    Raises:
        redis.exceptions.ConnectionError: Redis is unreachable (the benchmark does not
            fail open, unlike the limiter).
        ValueError: ``iterations`` < 1.
    """
    url = options.get("redis_url") or default_redis_url()
    iterations = int(options.get("iterations") or DEFAULT_ITERATIONS)
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    # One connection: every operation goes over the same socket, so the ratio compares
    # round trips, not connection set-up.
    client = Redis.from_url(url, max_connections=1)
    client.ping()  # fail loudly before measuring
    prefix = f"mpai:rl:bench:{uuid.uuid4().hex}:"
    # Allowed path: a bucket that never runs dry (writes HSET + PEXPIRE every time).
    allowing = RedisTokenBucket(
        client, capacity=iterations + WARMUP + 1, refill_rate=1.0, key_prefix=prefix
    )
    # Rejected path: an empty bucket that refills too slowly to allow anything.
    rejecting = RedisTokenBucket(client, capacity=1, refill_rate=1e-6, key_prefix=prefix)
    rejecting.check("rejecting")

    samples: dict[str, list[float]] = {"PING": [], "check (allowed)": [], "check (rejected)": []}
    operations: dict[str, Callable[[], object]] = {
        "PING": client.ping,
        "check (allowed)": lambda: allowing.check("allowing"),
        "check (rejected)": lambda: rejecting.check("rejecting"),
    }
    try:
        for _ in range(WARMUP):  # load the script, warm caches and the socket
            for call in operations.values():
                call()
        for _ in range(iterations):  # interleaved, so drift affects all rows alike
            for name, call in operations.items():
                samples[name].append(_time_us(call))
        fail_open = allowing.check("allowing").fail_open or rejecting.check("rejecting").fail_open
    finally:
        client.delete(prefix + "allowing", prefix + "rejecting")
        client.close()

    figures = {name: sorted(values) for name, values in samples.items()}
    ping_median = statistics.median(figures["PING"])
    stdout.write(f"rate limit check (Redis token bucket): {iterations} iterations on {url}\n")
    stdout.write(f"{'operation':<20}{'median us':>12}{'p99 us':>12}{'x PING':>10}\n")
    for name, values in figures.items():
        median = statistics.median(values)
        p99 = nearest_rank(values, 0.99)
        ratio = median / ping_median if ping_median else math.nan
        stdout.write(f"{name:<20}{median:>12.1f}{p99:>12.1f}{ratio:>10.2f}\n")
    stdout.write(
        "target: a check costs about one round trip (x PING near 1; one EVALSHA per check)\n"
    )
    if fail_open:
        stdout.write("warning: the limiter failed open during the run; figures are not valid\n")
    return [summary_row("ratelimit", name, values) for name, values in figures.items()]
