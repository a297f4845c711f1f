"""Benchmark: ``check_quota`` and the usage record per call, beside a bare Redis PING.

Not collected with the suite (no ``test_`` prefix); run it explicitly, against the
private redis-server and the test PostgreSQL::

    .venv/bin/pytest tests/usage/benchmark_quota.py -s -p no:cacheprovider

Prints median and p99 (µs) of each operation over ``ITERATIONS`` calls.
"""

from __future__ import annotations

import os

import pytest

from mpai.benchmarks._stats import median_p99, time_us
from mpai.chat.ratelimit.redis_bucket import redis_client_of_cache
from mpai.usage import quotas, store
from mpai.usage.quotas import check_quota
from mpai.usage.recording import record_usage
from mpai.usage.windows import user_windows

ITERATIONS = int(os.environ.get("MPAI_BENCH_ITERATIONS", "2000"))
# Autocommit, as in a chat turn (not inside the test transaction).
pytestmark = pytest.mark.django_db(transaction=True)


def test_benchmark_check_quota_and_record_usage(configure, make_user, settings) -> None:
    big = 10**12
    configure(
        QUOTAS={
            "default": {"messages_per_day": big, "tokens_per_day": big, "tokens_per_month": big}
        },
        PRICES={"bench-model": {"input": "2.50", "output": "10.00"}},
    )
    user = make_user()
    client = redis_client_of_cache("default")
    assert client is not None
    check_quota(user)  # fills the counters
    windows = user_windows(user)
    rows: list[tuple[str, float, float]] = []
    for name, call in (
        ("redis PING (same connection)", client.ping),
        ("check_quota (Redis, 1 EVALSHA)", lambda: check_quota(user)),
        ("charge_tokens (Redis, 1 EVALSHA)", lambda: quotas.charge_tokens(user, 10, windows)),
        (
            "add_usage (PostgreSQL upsert)",
            lambda: store.add_usage(user_id=user.pk, day=windows.day, model="bench-model"),
        ),
        (
            "record_usage (upsert + charge + plan)",
            lambda: record_usage(
                user, model="bench-model", prompt_tokens=300, completion_tokens=50
            ),
        ),
    ):
        median, p99 = median_p99(time_us(call, ITERATIONS, warmup=50))
        rows.append((name, median, p99))
    # The database path (Redis down or none configured): the rate limiter's cache is
    # a local-memory one here.
    settings.CACHES = {
        **settings.CACHES,
        "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    configure(QUOTAS={"default": {"messages_per_day": big}}, RATE_LIMIT={"CACHE": "local"})
    assert check_quota(user).source == "database"
    median, p99 = median_p99(time_us(lambda: check_quota(user), ITERATIONS, warmup=50))
    rows.append(("check_quota (database: 1 aggregate query)", median, p99))
    print(f"\nmpai usage benchmark, {ITERATIONS} calls each (µs)")
    print(f"{'operation':44} {'median':>9} {'p99':>9}")
    for name, median, p99 in rows:
        print(f"{name:44} {median:9.1f} {p99:9.1f}")
