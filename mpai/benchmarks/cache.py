"""Benchmark suite ``cache``: the layered cache against each Django backend alone.

Reports, in one run, the median and p99 in microseconds of an L1 hit, L2 hit, L3 hit,
miss and set on :class:`mpai.cache.LayeredCache` (memory, django-redis, Django's
DatabaseCache) and of a hit, miss and set on ``LocMemCache``, django-redis
``RedisCache`` and ``DatabaseCache`` alone, with the ratios to the issue's targets:

- L1 hit <= a LocMemCache hit;
- L2 hit <= 1.2 x a django-redis hit;
- set <= 1.2 x the sum of the three backends' own sets.

It also measures the coherence bound: a second process (``python -m
mpai.benchmarks.cache --peer``) keeps reading one key from its L1 while this process
sets it; the figure is the time from the end of ``set()`` here to the peer seeing the
new value (it includes the peer's polling interval, about 0.1 ms).

Run with ``python manage.py mpai_benchmark cache [--redis-url URL] [--iterations N]``.
Nothing is flushed: keys use a unique prefix and are deleted at the end, and the
database layer uses a table created for the run and dropped after it.
"""

from __future__ import annotations

import gc
import json
import os
import select
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from django.core.cache.backends.db import DatabaseCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.management import call_command
from django.db import DEFAULT_DB_ALIAS, connections

from mpai.benchmarks import Writer, default_redis_url
from mpai.benchmarks._stats import nearest_rank, summary_row

DEFAULT_ITERATIONS = 2000
WARMUP = 50
#: A user-context-like value (about 300 bytes pickled).
VALUE = {
    "user_id": 42,
    "membership": "gold",
    "groups": ["members", "beta"],
    "bio": "Lorem ipsum dolor sit amet. " * 8,
}
REDIS_OPTIONS = {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.25}
DB_OPTIONS = {"MAX_ENTRIES": 1_000_000}  # no culling during the run (both sides alike)


def _timed(call: Callable[[int], object], argument: int) -> float:
    start = time.perf_counter_ns()
    call(argument)
    return (time.perf_counter_ns() - start) / 1000


def _layered_params(
    redis_url: str, table: str, prefix: str, with_db: bool = True
) -> dict[str, Any]:
    layers: list[dict[str, Any]] = [
        {"NAME": "memory", "BACKEND": "mpai.cache.memory.MemoryStore"},
        {
            "NAME": "redis",
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_url,
            "OPTIONS": dict(REDIS_OPTIONS),
        },
    ]
    if with_db:
        layers.append(
            {
                "NAME": "database",
                "BACKEND": "django.core.cache.backends.db.DatabaseCache",
                "LOCATION": table,
                "OPTIONS": dict(DB_OPTIONS),
            }
        )
    return {
        "KEY_PREFIX": prefix,
        "TIMEOUT": 300,
        "OPTIONS": {"LAYERS": layers, "INVALIDATION_CHANNEL": f"{prefix}:invalidate"},
    }


class _Bench:
    """Interleaved sampling. Operations come in groups of like cost (in-memory, one
    Redis round trip, database); a round runs every group in rotating order, and a
    group runs ``BATCH`` passes over its operations, one call each, so the figures
    compared in a ratio are sampled side by side and drift on a noisy machine affects
    them alike (an in-memory lookup right after a database wait would also measure
    the CPU waking up, hence the grouping)."""

    BATCH = 20

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.operations: dict[
            str, tuple[Callable[[int], None] | None, Callable[[int], object]]
        ] = {}
        self.samples: dict[str, list[float]] = {}

    def group(self) -> None:
        """Start a new group for the next :meth:`add` calls."""
        self.groups.append([])

    def add(
        self, name: str, call: Callable[[int], object], prepare: Callable[[int], None] | None = None
    ) -> None:
        self.groups[-1].append(name)
        self.operations[name] = (prepare, call)
        self.samples[name] = []

    def run(self, iterations: int) -> None:
        rounds = -(-iterations // self.BATCH)
        warmup_rounds = -(-WARMUP // self.BATCH)
        groups = self.groups
        for round_ in range(-warmup_rounds, rounds):
            for offset in range(len(groups)):
                names = groups[(round_ + offset) % len(groups)]
                for index in range(round_ * self.BATCH, (round_ + 1) * self.BATCH):
                    shift = index % len(names)
                    for name in names[shift:] + names[:shift]:
                        prepare, call = self.operations[name]
                        if prepare is not None:
                            prepare(index)
                        elapsed = _timed(call, index)
                        samples = self.samples[name]
                        if round_ >= 0 and len(samples) < iterations:
                            samples.append(elapsed)

    def figures(self) -> dict[str, tuple[float, float]]:
        result = {}
        for name, values in self.samples.items():
            ordered = sorted(values)
            result[name] = (statistics.median(ordered), nearest_rank(ordered, 0.99))
        return result


def run(stdout: Writer, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run the cache benchmark, write the report to ``stdout`` and return one
    :func:`~mpai.benchmarks._stats.summary_row` per operation and for the coherence
    latency (µs).

    Args:
        options: ``redis_url`` (str or None, see :func:`default_redis_url`),
            ``iterations`` (int or None: 2000) per operation, optionally ``database``
            (the database alias, default ``"default"``).

    Raises:
        redis.exceptions.ConnectionError: Redis is unreachable (the benchmark needs it).
        ValueError: ``iterations`` < 1.
    """
    from django_redis.cache import RedisCache

    from mpai.cache import LayeredCache
    from mpai.cache.stack import discard_stack

    redis_url = options.get("redis_url") or default_redis_url()
    iterations = int(options.get("iterations") or DEFAULT_ITERATIONS)
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    database = options.get("database") or DEFAULT_DB_ALIAS
    token = uuid.uuid4().hex[:12]
    prefix = f"mpai-bench-{token}"
    table = f"mpai_bench_{token}"
    call_command("createcachetable", table, database=database, verbosity=0)
    layered = LayeredCache(redis_url, _layered_params(redis_url, table, prefix))
    redis_cache = RedisCache(redis_url, {"KEY_PREFIX": f"{prefix}-r", "OPTIONS": REDIS_OPTIONS})
    db_cache = DatabaseCache(table, {"KEY_PREFIX": f"{prefix}-d", "OPTIONS": DB_OPTIONS})
    locmem = LocMemCache(prefix, {"KEY_PREFIX": prefix, "OPTIONS": {"MAX_ENTRIES": 1_000_000}})
    stack = layered.stack
    try:
        redis_cache.client.get_client().ping()  # fail loudly before measuring
        if not layered.wait_ready(5.0):
            stdout.write("warning: the invalidation listener did not connect within 5 s\n")
        bench = _measure(layered, locmem, redis_cache, db_cache, iterations)
        coherence = _measure_coherence(redis_url, prefix, max(20, min(200, iterations // 10)))
        _report(stdout, bench.figures(), coherence, iterations, redis_url, database, layered)
        rows = [summary_row("cache", name, values) for name, values in bench.samples.items()]
        if coherence:
            rows.append(summary_row("cache", "coherence (set here to peer L1)", coherence))
        return rows
    finally:
        discard_stack(stack)
        with connections[database].cursor() as cursor:
            cursor.execute(f"DROP TABLE {connections[database].ops.quote_name(table)}")
        try:  # only the keys under this run's prefix; never a flush
            client = redis_cache.client.get_client()
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)
        except Exception as exc:  # Redis is unreachable: the original error matters more
            stdout.write(f"warning: could not delete the keys under {prefix!r}: {exc}\n")


def _measure(
    layered: Any, locmem: LocMemCache, redis_cache: Any, db_cache: DatabaseCache, iterations: int
) -> _Bench:
    stack = layered.stack
    redis_layer = next(layer for layer in stack.layers if layer.name == "redis")
    for cache in (layered, locmem, redis_cache, db_cache):
        cache.set("hit", VALUE)
    full = layered.make_key("hit")

    def drop_l1(_: int) -> None:
        stack.store.invalidate([full])

    def drop_l1_l2(_: int) -> None:
        stack.store.invalidate([full])
        redis_layer.backend.delete(full)

    bench = _Bench()
    bench.group()
    bench.add("layered L1 hit", lambda _: layered.get("hit"))
    bench.add("LocMemCache hit", lambda _: locmem.get("hit"))
    bench.add("LocMemCache miss", lambda i: locmem.get(f"missing-{i}"))
    bench.add("LocMemCache set", lambda i: locmem.set(f"set-{i % 200}", VALUE))
    bench.group()
    bench.add("layered L2 hit", lambda _: layered.get("hit"), drop_l1)
    bench.add("RedisCache hit", lambda _: redis_cache.get("hit"))
    bench.add("RedisCache miss", lambda i: redis_cache.get(f"missing-{i}"))
    bench.add("RedisCache set", lambda i: redis_cache.set(f"set-{i % 200}", VALUE))
    bench.group()
    bench.add("layered L3 hit", lambda _: layered.get("hit"), drop_l1_l2)
    bench.add("layered miss", lambda i: layered.get(f"missing-{i}"))
    bench.add("layered set", lambda i: layered.set(f"set-{i % 200}", VALUE))
    bench.add("DatabaseCache hit", lambda _: db_cache.get("hit"))
    bench.add("DatabaseCache miss", lambda i: db_cache.get(f"missing-{i}"))
    bench.add("DatabaseCache set", lambda i: db_cache.set(f"set-{i % 200}", VALUE))
    gc.collect()
    gc.disable()
    try:
        bench.run(iterations)
    finally:
        gc.enable()
    return bench


def _measure_coherence(redis_url: str, prefix: str, trials: int) -> list[float]:
    """Return microseconds from the end of a set here to a peer process seeing it."""
    from mpai.cache import LayeredCache
    from mpai.cache.stack import discard_stack

    params = _layered_params(redis_url, "", f"{prefix}-coherence", with_db=False)
    writer = LayeredCache(redis_url, params)
    writer.wait_ready(5.0)
    peer = subprocess.Popen(
        [sys.executable, "-m", "mpai.benchmarks.cache", "--peer", json.dumps([redis_url, params])],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    latencies: list[float] = []
    try:
        if _read_line(peer, 20.0) != "ready":
            return latencies
        writer.set("coherence", -1, 300)
        if _read_line(peer, 10.0) is None:
            return latencies
        for trial in range(trials):
            time.sleep(0.002)  # let the peer serve the old value from its L1 again
            writer.set("coherence", trial, 300)
            done = time.monotonic_ns()
            line = _read_line(peer, 10.0)
            if line is None:
                break
            value, seen = line.split()
            if int(value) == trial:
                latencies.append((int(seen) - done) / 1000)
    finally:
        peer.terminate()
        peer.wait(5)
        discard_stack(writer.stack)
    return latencies


def _read_line(process: subprocess.Popen[str], timeout: float) -> str | None:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        return None
    line = process.stdout.readline()
    return line.strip() or None


def _peer(config: str) -> None:
    """Coherence peer: print ``ready``, then ``<value> <monotonic ns>`` per new value."""
    import django

    django.setup()
    from mpai.cache import LayeredCache

    redis_url, params = json.loads(config)
    cache = LayeredCache(redis_url, params)
    cache.wait_ready(10.0)
    print("ready", flush=True)
    last: Any = None
    while True:
        value = cache.get("coherence")
        if value is not None and value != last:
            print(value, time.monotonic_ns(), flush=True)
            last = value
        time.sleep(0.0001)


def _report(
    stdout: Writer,
    figures: dict[str, tuple[float, float]],
    coherence: list[float],
    iterations: int,
    redis_url: str,
    database: str,
    layered: Any,
) -> None:
    import pickle

    size = len(pickle.dumps(VALUE, pickle.HIGHEST_PROTOCOL))
    vendor = connections[database].vendor
    stdout.write(
        f"cache benchmark: {iterations} iterations per operation, value {size} bytes pickled; "
        f"Redis {redis_url}; database {vendor} ({database!r})\n"
    )
    stdout.write(f"{'operation':<22}{'median us':>12}{'p99 us':>12}\n")
    for name, (median, p99) in figures.items():
        stdout.write(f"{name:<22}{median:>12.1f}{p99:>12.1f}\n")

    def med(name: str) -> float:
        return figures[name][0]

    rows = [
        ("L1 hit / LocMemCache hit", med("layered L1 hit") / med("LocMemCache hit"), 1.0),
        ("L2 hit / RedisCache hit", med("layered L2 hit") / med("RedisCache hit"), 1.2),
        (
            "set / sum of the 3 sets",
            med("layered set")
            / (med("LocMemCache set") + med("RedisCache set") + med("DatabaseCache set")),
            1.2,
        ),
        ("L3 hit / DatabaseCache hit", med("layered L3 hit") / med("DatabaseCache hit"), None),
        (
            "miss / sum of the 3 misses",
            med("layered miss")
            / (med("LocMemCache miss") + med("RedisCache miss") + med("DatabaseCache miss")),
            None,
        ),
    ]
    stdout.write(f"{'ratio (medians)':<30}{'value':>8}  target\n")
    for label, ratio, target in rows:
        verdict = (
            "no target"
            if target is None
            else (f"<= {target:.1f}  {'OK' if ratio <= target else 'MISSED'}")
        )
        stdout.write(f"{label:<30}{ratio:>8.2f}  {verdict}\n")
    if coherence:
        ordered = sorted(coherence)
        stdout.write(
            f"coherence: another process's L1 drops a key set here after "
            f"median {statistics.median(ordered):.0f} us, "
            f"p99 {nearest_rank(ordered, 0.99):.0f} us, "
            f"max {ordered[-1]:.0f} us ({len(ordered)} trials; includes ~100 us peer polling)\n"
        )
    else:
        stdout.write("coherence: not measured (the peer process did not answer)\n")
    config = layered._config
    stdout.write(
        f"coherence bound while the listener is down: INVALIDATION_TIMEOUT "
        f"{config.dead_after:.1f} s + DEGRADED_L1_TIMEOUT {config.degraded_l1_timeout:.1f} s\n"
    )


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--peer":
    _peer(sys.argv[2])
