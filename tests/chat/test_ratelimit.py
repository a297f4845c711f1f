"""Rate limiting: the token bucket in Redis and in the cache, enforce(), the DRF throttle.

Redis tests run against the suite's private redis-server (``redis_server``), each under
a key prefix of its own; nothing flushes a database. Timing is never asserted: waits
poll a condition under a deadline.
"""

from __future__ import annotations

import io
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory, force_authenticate
from rest_framework.views import APIView

from mpai.api.throttling import TokenBucketThrottle
from mpai.benchmarks import ratelimit as ratelimit_benchmark
from mpai.chat import ratelimit
from mpai.chat.ratelimit import (
    LUA_TOKEN_BUCKET,
    LUA_TOKEN_BUCKET_SHA,
    CacheTokenBucket,
    Decision,
    RedisTokenBucket,
    TokenBucket,
    breaker_state,
    bucket_key,
    enforce,
    get_rate_limiter,
    rate_limit_settings,
)
from mpai.chat.ratelimit.algorithm import take
from mpai.exceptions import RateLimited
from tests.redis_server import RedisServer
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SLOW = 0.001  # tokens/s: no visible refill during a test (one token per 1000 s)


wait_for = wait_until


@pytest.fixture
def prefix() -> str:
    return f"mpai:rl:test:{uuid.uuid4().hex}:"


@pytest.fixture
def redis_url(redis_server: Any) -> str:
    return f"{redis_server.url}/0"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_bucket(redis_url: str, prefix: str) -> Iterator[Callable[..., RedisTokenBucket]]:
    made: list[RedisTokenBucket] = []

    def make(capacity: float = 3, refill_rate: float = SLOW, **kwargs: Any) -> RedisTokenBucket:
        bucket = RedisTokenBucket.from_url(
            redis_url, capacity=capacity, refill_rate=refill_rate, key_prefix=prefix, **kwargs
        )
        made.append(bucket)
        return bucket

    yield make
    for bucket in made:
        bucket.client.close()


@pytest.fixture
def rate_limit(settings: Any, prefix: str) -> Callable[..., None]:
    """Set ``MPAI["RATE_LIMIT"]`` (only the given keys; the test's own key prefix)."""

    def configure(**options: Any) -> None:
        settings.MPAI = {**settings.MPAI, "RATE_LIMIT": {"KEY_PREFIX": prefix, **options}}

    return configure


@pytest.fixture
def locmem(settings: Any) -> str:
    """A LocMemCache alias ``rl`` of its own."""
    settings.CACHES = {
        **settings.CACHES,
        "rl": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"rl-{uuid.uuid4().hex}",
        },
    }
    return "rl"


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the Redis bucket ------------------------------------------------------------------


def test_full_bucket_allows_capacity_then_rejects_with_retry_after(make_bucket):
    bucket = make_bucket(capacity=3, refill_rate=0.01)  # one token per 100 s

    decisions = [bucket.check("user:1") for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == pytest.approx([2, 1, 0], abs=0.01)
    assert not any(d.fail_open for d in decisions)
    rejected = decisions[3]
    assert rejected.remaining == pytest.approx(0, abs=0.01)
    # One token at 0.01 tokens/s: 100 s, less the little refilled since the last take.
    assert 99 < rejected.retry_after <= 100


def test_buckets_are_independent_per_key(make_bucket):
    bucket = make_bucket(capacity=1)
    assert bucket.check("user:1").allowed
    assert not bucket.check("user:1").allowed
    assert bucket.check("user:2").allowed
    assert bucket.check("ip:192.0.2.1").allowed


def test_bucket_refills_over_time(make_bucket):
    bucket = make_bucket(capacity=1, refill_rate=50)  # a token every 20 ms

    assert bucket.check("k").allowed
    rejected = bucket.check("k")
    assert not rejected.allowed
    assert 0 < rejected.retry_after <= 0.02

    wait_for(lambda: bucket.check("k").allowed, what="the bucket to refill")


def test_cost_takes_several_tokens_and_must_fit_the_bucket(make_bucket):
    bucket = make_bucket(capacity=5)
    assert bucket.check("k", cost=3).remaining == pytest.approx(2, abs=0.01)
    assert not bucket.check("k", cost=3).allowed
    assert bucket.check("k", cost=2).allowed
    with pytest.raises(ValueError, match="cost"):
        bucket.check("k", cost=6)
    with pytest.raises(ValueError, match="cost"):
        bucket.check("k", cost=0)


def test_rejected_request_does_not_advance_the_refill_timestamp(make_bucket, raw, prefix):
    bucket = make_bucket(capacity=1, refill_rate=0.01)
    assert bucket.check("k").allowed
    state = raw.hgetall(prefix + "k")
    ttl = raw.pttl(prefix + "k")

    for _ in range(5):
        assert not bucket.check("k").allowed

    assert raw.hgetall(prefix + "k") == state  # neither ts nor tokens written
    assert 0 < raw.pttl(prefix + "k") <= ttl  # expiry not pushed back either


def test_timestamp_never_moves_backwards(make_bucket, raw, prefix):
    """A stamp ahead of Redis' clock (a failover to a server whose clock is behind)."""
    bucket = make_bucket(capacity=2, refill_rate=0.5)
    seconds, micros = raw.time()
    future = seconds + micros / 1e6 + 100

    raw.hset(prefix + "full", mapping={"tokens": "2", "ts": repr(future)})
    assert bucket.check("full").allowed
    assert float(raw.hget(prefix + "full", "ts")) == pytest.approx(future)
    assert float(raw.hget(prefix + "full", "tokens")) == pytest.approx(1)

    raw.hset(prefix + "empty", mapping={"tokens": "0", "ts": repr(future)})
    rejected = bucket.check("empty")
    assert not rejected.allowed
    # Accrual starts at the stamp: about 100 s to reach it, then 2 s for one token.
    assert 101 < rejected.retry_after <= 102
    assert float(raw.hget(prefix + "empty", "ts")) == pytest.approx(future)


def test_key_expires_when_the_bucket_would_be_full(make_bucket, raw, prefix):
    bucket = make_bucket(capacity=4, refill_rate=2)  # 0.5 s per token

    bucket.check("k")
    assert 0 < raw.pttl(prefix + "k") <= 500
    for _ in range(3):
        bucket.check("k")
    assert 1500 < raw.pttl(prefix + "k") <= 2000  # 4 tokens missing: 2 s


def test_threads_never_get_more_than_capacity(make_bucket):
    """DRF #5181: read-compute-write throttles let extra requests through."""
    capacity, threads, attempts = 25, 16, 20
    bucket = make_bucket(capacity=capacity)
    barrier = threading.Barrier(threads)
    results: list[Decision] = []
    lock = threading.Lock()

    def hammer() -> None:
        barrier.wait()
        mine = [bucket.check("shared") for _ in range(attempts)]
        with lock:
            results.extend(mine)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert len(results) == threads * attempts
    assert not any(d.fail_open for d in results)
    assert sum(d.allowed for d in results) == capacity


CHILD = """
import sys, threading
from mpai.chat.ratelimit import RedisTokenBucket

url, prefix, key, capacity, rate, threads, attempts = sys.argv[1:]
bucket = RedisTokenBucket.from_url(
    url, capacity=int(capacity), refill_rate=float(rate), key_prefix=prefix
)
bucket.client.ping()
print("ready", flush=True)
sys.stdin.readline()
counts = []
lock = threading.Lock()

def hammer():
    decisions = [bucket.check(key) for _ in range(int(attempts))]
    with lock:
        counts.append((sum(d.allowed for d in decisions), sum(d.fail_open for d in decisions)))

workers = [threading.Thread(target=hammer) for _ in range(int(threads))]
for w in workers:
    w.start()
for w in workers:
    w.join()
print(sum(c[0] for c in counts), sum(c[1] for c in counts), flush=True)
"""


def test_processes_and_threads_never_get_more_than_capacity(make_bucket, redis_url, prefix):
    capacity, threads, attempts = 30, 4, 25
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    args = [redis_url, prefix, "shared", str(capacity), str(SLOW), str(threads), str(attempts)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        bucket = make_bucket(capacity=capacity)
        local: list[Decision] = []
        lock = threading.Lock()

        def hammer() -> None:
            mine = [bucket.check("shared") for _ in range(attempts)]
            with lock:
                local.extend(mine)

        workers = [threading.Thread(target=hammer) for _ in range(threads)]
        for child in children:  # go: both processes and the local threads at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        outputs = [child.communicate(timeout=60)[0].split() for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    assert [child.returncode for child in children] == [0, 0]
    allowed = sum(d.allowed for d in local) + sum(int(out[0]) for out in outputs)
    fail_open = sum(d.fail_open for d in local) + sum(int(out[1]) for out in outputs)
    assert fail_open == 0
    assert allowed == capacity  # 3 x 100 attempts on 30 tokens


class CountingConnection(redis.Connection):
    """Counts the requests sent on the socket (round trips) by every instance."""

    sent: list[bytes] = []

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        packed = command if isinstance(command, bytes | str) else b"".join(command)
        CountingConnection.sent.append(packed if isinstance(packed, bytes) else packed.encode())
        super().send_packed_command(command, check_health)


def _cmdstats(client: redis.Redis) -> dict[str, int]:
    info = client.info("all")
    stats = {k.removeprefix("cmdstat_"): v["calls"] for k, v in info.items() if "cmdstat_" in k}
    stats["total"] = info["total_commands_processed"]
    return stats


def test_one_round_trip_one_evalsha_per_check(redis_url, raw, prefix):
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    bucket = RedisTokenBucket(client, capacity=20, refill_rate=SLOW, key_prefix=prefix)
    bucket.check("warm")  # connect (handshake commands) and load the script
    checks = 40  # 20 allowed, 20 rejected
    CountingConnection.sent.clear()
    before = _cmdstats(raw)

    decisions = [bucket.check("k") for _ in range(checks)]

    after = _cmdstats(raw)
    client.close()
    assert sum(d.allowed for d in decisions) == 20
    assert len(CountingConnection.sent) == checks  # client side: one request each
    assert all(b"EVALSHA" in request for request in CountingConnection.sent)
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert delta["evalsha"] == checks
    assert delta["time"] == checks  # the clock is read inside Redis
    assert delta.get("eval", 0) == 0
    # Every other top-level command: only our first INFO. Commands run inside the
    # script (time, hmget, hset, pexpire) are counted by Redis too.
    in_script = {"time", "hmget", "hset", "pexpire"}
    ours = in_script | {"evalsha", "total"}
    outside = {k: v for k, v in delta.items() if v and k not in ours}
    assert outside == {"info": 1}
    assert delta["total"] == 1 + checks + sum(delta[name] for name in in_script)


def test_unknown_script_falls_back_to_eval_once(make_bucket, raw):
    bucket = make_bucket(capacity=5)
    bucket.check("k")
    raw.script_flush()  # the private server only; scripts are reloaded on demand
    assert raw.script_exists(LUA_TOKEN_BUCKET_SHA) == [False]
    before = _cmdstats(raw)

    assert bucket.check("k").allowed
    assert bucket.check("k").allowed

    after = _cmdstats(raw)
    assert after.get("eval", 0) - before.get("eval", 0) == 1
    assert after["evalsha"] - before["evalsha"] == 2  # the NOSCRIPT one, then the 2nd check
    assert raw.script_exists(LUA_TOKEN_BUCKET_SHA) == [True]


@pytest.mark.parametrize("connection", ["url", "cache"])
def test_redis_outage_fails_open_logs_once_and_recovers(
    connection, redis_server, redis_url, prefix, caplog
):
    caplog.set_level(logging.INFO, logger="mpai.chat.ratelimit")
    options = {"capacity": 1, "refill_rate": SLOW, "key_prefix": prefix, "outage_backoff": 0}
    if connection == "url":
        bucket = RedisTokenBucket.from_url(redis_url, **options)
    else:
        bucket = RedisTokenBucket.from_cache("default", **options)  # django-redis
    assert bucket.check("k").allowed
    assert not bucket.check("k").allowed

    redis_server.stop()
    try:
        during = [bucket.check("k") for _ in range(5)]
        assert all(d.allowed and d.fail_open for d in during)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "fail open" in warnings[0].getMessage()
    finally:
        redis_server.start()

    # The restarted server is empty: the first answer from Redis allows, the next rejects.
    wait_for(lambda: not bucket.check("k").fail_open, what="Redis to answer again")
    assert not bucket.check("k").allowed
    assert any("back" in r.getMessage() for r in caplog.records)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_outage_backoff_skips_redis_until_it_expires(redis_server, redis_url, prefix):
    bucket = RedisTokenBucket.from_url(
        redis_url, capacity=1, refill_rate=SLOW, key_prefix=prefix, outage_backoff=3600
    )
    redis_server.stop()
    try:
        assert bucket.check("k").fail_open
    finally:
        redis_server.start()
    # Redis is back, but the limiter does not try it again within the back-off.
    assert all(bucket.check("k").fail_open for _ in range(3))


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to hang (SIGSTOP) and resume (SIGCONT)."""
    server = RedisServer()
    server.start()
    yield server
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGCONT)  # in case the test stopped half-way
    server.stop()


def _scripts_run(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.parametrize("connection", ["url", "cache"])
def test_a_check_given_up_on_charges_nothing_when_a_hung_redis_resumes(
    connection, own_redis, settings, prefix
):
    url = f"{own_redis.url}/0"
    options = {"capacity": 2, "refill_rate": SLOW, "key_prefix": prefix, "outage_backoff": 0}
    if connection == "url":
        bucket = RedisTokenBucket.from_url(url, **options)  # 0.5 s read timeout
    else:
        settings.CACHES = {
            **settings.CACHES,
            "rl": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": url,
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
            },
        }
        bucket = RedisTokenBucket.from_cache("rl", **options)
    raw = redis.Redis.from_url(url)
    assert bucket.check("k").allowed  # one token left
    scripts = _scripts_run(raw)
    assert own_redis.process is not None
    os.kill(own_redis.process.pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        during = bucket.check("k")  # sent, then given up on after the read timeout
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    assert during.allowed
    assert during.fail_open
    # Redis resumes and runs the script the client gave up on: it must charge nothing.
    wait_for(lambda: _scripts_run(raw) > scripts, what="Redis to run the late script")
    assert float(raw.hget(prefix + "k", "tokens")) == pytest.approx(1, abs=0.01)
    after = [bucket.check("k") for _ in range(2)]
    raw.close()
    assert [d.allowed for d in after] == [True, False]  # the token left, then empty
    assert not any(d.fail_open for d in after)


def test_a_script_run_after_its_deadline_charges_nothing(make_bucket, raw, prefix):
    seconds, micros = raw.time()
    now = seconds + micros / 1e6
    stale = raw.eval(LUA_TOKEN_BUCKET, 1, prefix + "k", 2, SLOW, 1, repr(now - 1))
    assert int(stale[0]) == -1
    assert raw.exists(prefix + "k") == 0  # nothing written
    fresh = raw.eval(LUA_TOKEN_BUCKET, 1, prefix + "k", 2, SLOW, 1, repr(now + 60))
    assert int(fresh[0]) == 1
    assert float(fresh[1]) == pytest.approx(1, abs=0.01)
    assert float(fresh[3]) >= now  # Redis' clock, for the client's offset
    unbounded = raw.eval(LUA_TOKEN_BUCKET, 1, prefix + "k", 2, SLOW, 1, 0)
    assert int(unbounded[0]) == 1


@pytest.mark.parametrize(
    ("tokens", "age", "cost"),
    [
        (3.0, 0.0, 1),  # full: allowed
        (0.0, 0.5, 1),  # empty, half a token refilled: rejected
        (0.2, 2.0, 1),  # refilled past the cost: allowed
        (1.0, 1000.0, 2),  # long idle: capped at capacity, then charged
        (0.0, -100.0, 1),  # stamp ahead of the clock: rejected, waits for the stamp too
        (3.0, -100.0, 1),  # stamp ahead, tokens enough: allowed, the stamp kept
    ],
)
def test_lua_script_and_python_take_agree(raw, prefix, tokens, age, cost):
    """The script and :func:`take` are one algorithm; the script returns its ``now``."""
    capacity, rate = 3.0, 0.5
    seconds, micros = raw.time()
    stamp = seconds + micros / 1e6 - age
    raw.hset(prefix + "k", mapping={"tokens": repr(tokens), "ts": repr(stamp)})

    allowed, remaining, retry_after, now = raw.eval(
        LUA_TOKEN_BUCKET, 1, prefix + "k", capacity, rate, cost, 0
    )

    step = take(tokens, stamp, now=float(now), capacity=capacity, refill_rate=rate, cost=cost)
    assert bool(int(allowed)) is step.allowed
    assert float(remaining) == pytest.approx(step.remaining, abs=1e-6)
    assert float(retry_after) == pytest.approx(step.retry_after, abs=1e-6)
    stored = raw.hgetall(prefix + "k")
    assert float(stored[b"tokens"]) == pytest.approx(step.tokens, abs=1e-6)
    assert float(stored[b"ts"]) == pytest.approx(step.stamp, abs=1e-6)
    if step.allowed:
        assert 0 < raw.pttl(prefix + "k") <= math.ceil(step.ttl * 1000)


def test_token_bucket_reads_its_injected_clock():
    clock = FakeClock()
    bucket = TokenBucket(capacity=2, refill_rate=1.0, clock=clock)
    first = bucket.take(None)
    assert (first.allowed, first.remaining, first.stamp) == (True, 1.0, clock.now)
    clock.now += 0.25
    assert bucket.take((0.0, first.stamp)).retry_after == pytest.approx(0.75)
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(capacity=0, refill_rate=1.0)


class FailingClient:
    """Stands in for a redis-py client: each EVALSHA runs the next behaviour given."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.behaviours: list[Callable[[], None]] = []
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def evalsha(self, *args: Any) -> Any:
        self.calls += 1
        if self.behaviours:
            self.behaviours.pop(0)()
        return self.client.evalsha(*args)


def _raise(exc: BaseException) -> Callable[[], None]:
    def behaviour() -> None:
        raise exc

    return behaviour


@pytest.fixture
def breaker_bucket(
    redis_url, prefix
) -> Iterator[tuple[RedisTokenBucket, FailingClient, FakeClock]]:
    """A Redis bucket whose breaker reads a fake clock (backoff 10 s), on a stub client."""
    client = redis.Redis.from_url(redis_url)
    stub = FailingClient(client)
    clock = FakeClock()
    bucket = RedisTokenBucket(
        lambda: cast(redis.Redis, stub),
        capacity=5,
        refill_rate=SLOW,
        key_prefix=prefix,
        outage_backoff=10,
        breaker_clock=clock,
    )
    yield bucket, stub, clock
    client.close()


def test_an_outage_opens_the_circuit_breaker_and_checks_skip_redis(breaker_bucket, caplog):
    caplog.set_level(logging.INFO, logger="mpai.chat.ratelimit")
    bucket, stub, clock = breaker_bucket
    assert bucket.outage.snapshot()["state"] == "closed"
    stub.behaviours = [_raise(redis.ConnectionError("refused"))]

    assert bucket.check("k").fail_open  # the failure opens the breaker
    skipped = [bucket.check("k") for _ in range(3)]

    assert all(d.allowed and d.fail_open for d in skipped)
    assert stub.calls == 1  # no I/O while open
    state = bucket.outage.snapshot()
    assert state["dependency"] == "Redis"
    assert (state["state"], state["outages"], state["skipped"], state["errors"]) == (
        "open",
        1,
        3,
        1,
    )
    assert state["since"] == pytest.approx(time.time(), abs=60)

    clock.now += 10  # the back-off has passed: one check probes Redis and closes it
    assert not bucket.check("k").fail_open
    state = bucket.outage.snapshot()
    assert (state["state"], state["outages"]) == ("closed", 1)
    back = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(back) == 1
    assert "3 checks allowed unchecked" in back[0]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_only_one_check_probes_a_half_open_breaker(breaker_bucket):
    """A hung Redis costs one caller a timeout per back-off period, not every caller."""
    bucket, stub, clock = breaker_bucket
    stub.behaviours = [_raise(redis.TimeoutError("timed out"))]
    assert bucket.check("k").fail_open
    probing, release = threading.Event(), threading.Event()

    def hang() -> None:
        probing.set()
        release.wait(30)

    stub.behaviours = [hang]
    clock.now += 10
    results: list[Decision] = []
    prober = threading.Thread(target=lambda: results.append(bucket.check("k")))
    prober.start()
    try:
        assert probing.wait(10)
        assert bucket.outage.snapshot()["state"] == "half_open"
        others = [bucket.check("k") for _ in range(3)]
    finally:
        release.set()
        prober.join()
    assert all(d.fail_open for d in others)
    assert stub.calls == 2  # the first failure and the one probe
    assert results[0].allowed
    assert not results[0].fail_open
    assert bucket.outage.snapshot()["state"] == "closed"


def test_a_probe_that_raises_a_bug_leaves_the_breaker_open_not_half_open(breaker_bucket):
    bucket, stub, clock = breaker_bucket
    stub.behaviours = [_raise(redis.ConnectionError("refused")), _raise(RuntimeError("bug"))]
    assert bucket.check("k").fail_open
    clock.now += 10

    with pytest.raises(RuntimeError, match="bug"):
        bucket.check("k")

    assert bucket.outage.snapshot()["state"] == "open"
    assert bucket.check("k").fail_open  # skipped within the new period
    clock.now += 10
    assert not bucket.check("k").fail_open  # probed again, and closed


# --- choosing the backend, enforce() ---------------------------------------------------


def test_django_redis_default_cache_gives_the_redis_bucket(rate_limit, raw, prefix):
    rate_limit(CAPACITY=2, REFILL_RATE=SLOW)
    limiter = get_rate_limiter()
    assert isinstance(limiter, RedisTokenBucket)
    assert get_rate_limiter() is limiter  # built once per configuration
    assert [limiter.check("user:1").allowed for _ in range(3)] == [True, True, False]
    assert raw.exists(prefix + "user:1")  # on the cache's Redis server


def test_redis_url_setting_gives_the_redis_bucket(rate_limit, locmem, redis_url, raw, prefix):
    rate_limit(CACHE=locmem, REDIS_URL=redis_url)
    limiter = get_rate_limiter()
    assert isinstance(limiter, RedisTokenBucket)
    assert limiter.check("user:1").allowed
    assert raw.exists(prefix + "user:1")


def test_djangos_own_redis_cache_gives_the_redis_bucket(
    settings, rate_limit, redis_url, raw, prefix
):
    settings.CACHES = {
        **settings.CACHES,
        "builtin": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
        },
    }
    rate_limit(CACHE="builtin")
    limiter = get_rate_limiter()
    assert isinstance(limiter, RedisTokenBucket)
    assert limiter.check("user:1").allowed
    assert raw.exists(prefix + "user:1")


def test_local_memory_cache_gives_the_cache_bucket(rate_limit, locmem):
    rate_limit(CACHE=locmem, CAPACITY=2, REFILL_RATE=SLOW)
    limiter = get_rate_limiter()
    assert isinstance(limiter, CacheTokenBucket)
    assert [limiter.check("user:1").allowed for _ in range(3)] == [True, True, False]


def test_partial_settings_keep_the_defaults_and_bad_figures_are_refused(rate_limit):
    rate_limit(CAPACITY=3)
    config = rate_limit_settings()
    assert (config["CAPACITY"], config["REFILL_RATE"], config["ENABLED"]) == (3, 0.5, True)
    rate_limit(REFILL_RATE=0)
    with pytest.raises(ImproperlyConfigured, match="REFILL_RATE"):
        rate_limit_settings()


def test_bucket_key_per_user_else_per_address():
    class User:
        pk = 42
        is_authenticated = True

    class Anonymous:
        pk = None
        is_authenticated = False

    assert bucket_key(user=User(), address="192.0.2.1") == "user:42"
    assert bucket_key(user=Anonymous(), address="192.0.2.1") == "ip:192.0.2.1"
    assert bucket_key(address="2001:db8::1") == "ip:2001:db8::1"
    assert bucket_key() == "ip:unknown"


@pytest.mark.django_db
def test_enforce_raises_rate_limited_per_user(rate_limit, make_user):
    rate_limit(CAPACITY=2, REFILL_RATE=0.01)
    alice, bob = make_user(), make_user()

    assert enforce(user=alice).remaining == pytest.approx(1, abs=0.01)
    enforce(user=alice)
    with pytest.raises(RateLimited) as caught:
        enforce(user=alice)

    error = caught.value
    assert error.code == "rate_limited"
    assert error.retry_after is not None
    assert 99 < error.retry_after <= 100
    assert error.retry_after == math.ceil(error.retry_after * 1000) / 1000  # whole ms
    assert enforce(user=bob).allowed  # a bucket per user
    assert enforce(address="192.0.2.1").allowed  # and per address for anonymous use


def test_enforce_does_nothing_when_disabled(rate_limit):
    rate_limit(ENABLED=False, CAPACITY=1)
    assert all(enforce(address="192.0.2.1").allowed for _ in range(5))


def test_enforce_fails_open_when_redis_is_down(rate_limit, redis_server):
    rate_limit(CAPACITY=1, REFILL_RATE=SLOW, OUTAGE_BACKOFF=0)
    enforce(address="192.0.2.1")
    redis_server.stop()
    try:
        decision = enforce(address="192.0.2.1")  # no RateLimited, no ConnectionError
    finally:
        redis_server.start()
    assert decision.allowed
    assert decision.fail_open


def test_breaker_state_reports_the_limiters_breaker(rate_limit, redis_server):
    rate_limit(CAPACITY=1, REFILL_RATE=SLOW, OUTAGE_BACKOFF=3600)
    enforce(address="192.0.2.1")
    assert breaker_state() == {
        "dependency": "Redis",
        "state": "closed",
        "since": None,
        "outages": 0,
        "skipped": 0,
        "errors": 0,
    }
    redis_server.stop()
    try:
        decisions = [enforce(address="192.0.2.1") for _ in range(3)]
    finally:
        redis_server.start()
    assert all(d.fail_open for d in decisions)
    state = breaker_state()
    assert state is not None
    assert (state["state"], state["outages"], state["skipped"], state["errors"]) == (
        "open",
        1,
        2,
        1,
    )
    assert state["since"] == pytest.approx(time.time(), abs=60)


def test_breaker_state_is_none_when_rate_limiting_is_off(rate_limit):
    rate_limit(ENABLED=False)
    assert breaker_state() is None


def test_settings_arrive_merged_from_conf(rate_limit, settings):
    """mpai.conf merges RATE_LIMIT over its defaults; the service reads it as it is."""
    rate_limit(CAPACITY=3)
    from mpai.conf import mpai_settings

    assert rate_limit_settings() is mpai_settings.RATE_LIMIT
    assert mpai_settings.RATE_LIMIT["OUTAGE_BACKOFF"] == 1.0


# --- the cache bucket (embedded default) -----------------------------------------------


def test_cache_bucket_arithmetic(locmem, prefix):
    clock = FakeClock()
    start = clock.now
    bucket = CacheTokenBucket(locmem, capacity=2, refill_rate=1.0, key_prefix=prefix, clock=clock)
    cache = caches[locmem]

    assert bucket.check("k") == Decision(allowed=True, remaining=1.0, retry_after=0.0)
    assert bucket.check("k") == Decision(allowed=True, remaining=0.0, retry_after=0.0)
    assert bucket.check("k") == Decision(allowed=False, remaining=0.0, retry_after=1.0)
    assert cache.get(prefix + "k") == (0.0, start)

    clock.now = start + 0.5
    assert bucket.check("k") == Decision(allowed=False, remaining=0.5, retry_after=0.5)
    assert cache.get(prefix + "k") == (0.0, start)  # the rejection wrote nothing

    clock.now = start + 1.0
    assert bucket.check("k").allowed
    assert cache.get(prefix + "k") == (0.0, start + 1.0)

    clock.now = start + 100  # refill caps at capacity
    assert bucket.check("k").remaining == 1.0


def test_cache_bucket_clock_going_backwards(locmem, prefix):
    clock = FakeClock()
    start = clock.now
    bucket = CacheTokenBucket(locmem, capacity=1, refill_rate=1.0, key_prefix=prefix, clock=clock)
    assert bucket.check("k").allowed

    clock.now = start - 10
    rejected = bucket.check("k")
    assert not rejected.allowed
    assert rejected.retry_after == pytest.approx(11)  # 10 s back to the stamp, 1 s a token
    assert caches[locmem].get(prefix + "k") == (0.0, start)

    clock.now = start + 1
    assert bucket.check("k").allowed
    clock.now = start - 5  # an allowed request keeps the later stamp too
    cache = caches[locmem]
    cache.set(prefix + "j", (1.0, start + 1))
    assert bucket.check("j").allowed
    assert cache.get(prefix + "j") == (0.0, start + 1)


def test_cache_bucket_threads_never_get_more_than_capacity(locmem, prefix):
    capacity, threads, attempts = 25, 16, 20
    bucket = CacheTokenBucket(locmem, capacity=capacity, refill_rate=SLOW, key_prefix=prefix)
    barrier = threading.Barrier(threads)
    allowed: list[int] = []

    def hammer() -> None:
        barrier.wait()
        count = sum(bucket.check("shared").allowed for _ in range(attempts))
        allowed.append(count)

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sum(allowed) == capacity


def test_cache_bucket_fails_open_when_the_cache_fails(locmem, prefix, monkeypatch, caplog):
    bucket = CacheTokenBucket(locmem, capacity=1, refill_rate=SLOW, key_prefix=prefix)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("cache down")

    monkeypatch.setattr(caches[locmem], "get", broken)
    decisions = [bucket.check("k") for _ in range(3)]
    assert all(d.allowed and d.fail_open for d in decisions)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


# --- DRF throttle ------------------------------------------------------------------------


class LimitedView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [TokenBucketThrottle]

    def get(self, request: Any) -> Response:
        return Response({"ok": True})


def test_throttle_answers_429_with_retry_after(rate_limit):
    rate_limit(CAPACITY=2, REFILL_RATE=0.01)
    factory = APIRequestFactory()
    view = LimitedView.as_view()

    responses = [view(factory.get("/limited/", REMOTE_ADDR="198.51.100.7")) for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 429]
    # DRF rounds wait() up to whole seconds: 100 s for a token at 0.01 tokens/s.
    assert int(responses[2]["Retry-After"]) == 100
    assert view(factory.get("/limited/", REMOTE_ADDR="198.51.100.8")).status_code == 200


@pytest.mark.django_db
def test_throttle_limits_per_user(rate_limit, make_user):
    rate_limit(CAPACITY=1, REFILL_RATE=0.01)
    factory = APIRequestFactory()
    view = LimitedView.as_view()
    alice, bob = make_user(), make_user()

    def get(user: Any) -> int:
        request = factory.get("/limited/", REMOTE_ADDR="198.51.100.9")
        force_authenticate(request, user=user)
        return view(request).status_code

    assert [get(alice), get(alice), get(bob)] == [200, 429, 200]
    # The chat shares the bucket: alice's websocket message is limited too.
    with pytest.raises(RateLimited):
        enforce(user=alice)


def test_throttle_is_off_when_rate_limiting_is_disabled(rate_limit):
    rate_limit(ENABLED=False, CAPACITY=1)
    view = LimitedView.as_view()
    factory = APIRequestFactory()
    assert {view(factory.get("/limited/")).status_code for _ in range(3)} == {200}


class ScopedThrottle(TokenBucketThrottle):
    scope = "uploads"


class ScopedView(LimitedView):
    throttle_classes = [ScopedThrottle]


def test_throttle_scope_gives_a_bucket_of_its_own(rate_limit, raw, prefix):
    rate_limit(CAPACITY=1, REFILL_RATE=0.01)
    factory = APIRequestFactory()
    scoped, chat = ScopedView.as_view(), LimitedView.as_view()

    def get(view: Any) -> int:
        return view(factory.get("/limited/", REMOTE_ADDR="198.51.100.10")).status_code

    assert [get(scoped), get(scoped), get(chat), get(chat)] == [200, 429, 200, 429]
    assert raw.exists(prefix + "uploads:ip:198.51.100.10")
    assert bucket_key(address="198.51.100.10", scope="uploads") == "uploads:ip:198.51.100.10"


def test_throttle_and_enforce_call_the_one_service_function(rate_limit, monkeypatch):
    rate_limit(CAPACITY=5)
    calls: list[dict[str, Any]] = []
    real = ratelimit.service.check

    def spy(**kwargs: Any) -> Decision:
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(ratelimit, "check", spy)
    monkeypatch.setattr(ratelimit.service, "check", spy)
    LimitedView.as_view()(APIRequestFactory().get("/limited/", REMOTE_ADDR="198.51.100.11"))
    enforce(address="198.51.100.11")

    assert [call["address"] for call in calls] == ["198.51.100.11", "198.51.100.11"]
    assert calls[0]["scope"] is None


# --- benchmark suite ---------------------------------------------------------------------


def test_benchmark_prints_check_and_ping_figures(redis_url, raw):
    out = io.StringIO()

    ratelimit_benchmark.run(out, {"redis_url": redis_url, "iterations": 50})

    text = out.getvalue()
    assert "50 iterations" in text
    rows = {line.split("  ")[0].strip(): line.split() for line in text.splitlines()}
    for name in ("PING", "check (allowed)", "check (rejected)"):
        median, p99, ratio = (float(value) for value in rows[name][-3:])
        assert 0 < median <= p99
        assert ratio > 0
    assert "warning" not in text
    assert raw.keys("mpai:rl:bench:*") == []  # its buckets are deleted, nothing flushed


def test_benchmark_reads_the_redis_url_setting_when_no_option_names_one(redis_url, settings):
    # README: the suites default to settings.REDIS_URL (then $REDIS_URL); the ratelimit
    # suite used to ignore both and measure the shared local server instead.
    settings.REDIS_URL = redis_url
    out = io.StringIO()

    ratelimit_benchmark.run(out, {"redis_url": None, "iterations": 5})

    assert f"5 iterations on {redis_url}" in out.getvalue()
