"""Redis Sentinel: the demo's settings switched by REDIS_SENTINELS, against a real
redis-server and a real ``redis-server --sentinel`` on free ports.

The demo runs in a subprocess (``manage.py shell -c``) whose environment names only the
Sentinel (no REDIS_URL): whatever reaches the Redis server went through Sentinel. What
the subprocess wrote is then read on the server directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection

from tests.redis_server import RedisServer, free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
MASTER = "mpai-test-master"


@dataclass
class Sentinel:
    port: int
    process: subprocess.Popen[bytes]

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)

    def master_port(self) -> int | None:
        try:
            address = self.client().execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
        except redis.ConnectionError:
            return None
        return int(address[1]) if address else None


def start_sentinel(master: RedisServer) -> Sentinel:
    port = free_port()
    folder = tempfile.mkdtemp(prefix="mpai-sentinel-")
    conf = Path(folder) / "sentinel.conf"  # Sentinel rewrites its file: a private one
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 2000\n"
        f"sentinel failover-timeout {MASTER} 10000\n"
    )
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    process = subprocess.Popen(
        [exe, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    sentinel = Sentinel(port, process)
    wait_until(lambda: sentinel.master_port() == master.port, what="Sentinel answers")
    return sentinel


@pytest.fixture
def master() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sentinel(master: RedisServer) -> Iterator[Sentinel]:
    sentinel = start_sentinel(master)
    yield sentinel
    sentinel.process.terminate()
    sentinel.process.wait(timeout=10)


def demo_env(sentinel: Sentinel) -> dict[str, str]:
    db = connection.settings_dict
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("REDIS_", "DATABASE_", "MPAI_PROVIDER"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_SECRET_KEY="tests-only-not-secret",
        DATABASE_URL=(
            f"postgres://{db['USER']}:{db['PASSWORD'] or 'postgres'}@"
            f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        ),
        REDIS_SENTINELS=f"127.0.0.1:{sentinel.port}",
        REDIS_SENTINEL_MASTER=MASTER,
    )
    return env


def run_demo(sentinel: Sentinel, script: str, **popen: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", script],
        cwd=ROOT,
        env=demo_env(sentinel),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        **popen,
    )


THROUGH_SENTINEL = """
import asyncio, json
from django.conf import settings
from django.core.cache import caches
from channels.layers import get_channel_layer
from mpai.chat.ratelimit.service import get_rate_limiter
from config.celery import app

caches["default"].set("sentinel-probe", "through sentinel", 60)
limiter = get_rate_limiter()
decision = limiter.check("user:sentinel-test")

async def roundtrip():
    layer = get_channel_layer()
    name = await layer.new_channel()
    await layer.send(name, {"type": "probe", "text": "hi"})
    return await layer.receive(name)

message = asyncio.run(roundtrip())
app.send_task("mpai.run_health_checks")
app.backend.store_result("sentinel-task-id", {"ok": 1}, "SUCCESS")
print(json.dumps({
    "limiter": type(limiter).__name__, "allowed": decision.allowed,
    "remaining": decision.remaining, "message": message,
    "redis_url": settings.REDIS_URL, "broker": app.conf.broker_url,
}))
"""


def test_cache_rate_limit_channel_layer_and_celery_go_through_sentinel(
    master: RedisServer, sentinel: Sentinel
) -> None:
    done = run_demo(sentinel, THROUGH_SENTINEL)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["redis_url"] == ""  # only the Sentinel's address was given
    assert out["broker"].startswith(f"sentinel://127.0.0.1:{sentinel.port}/2")
    assert out["message"] == {"type": "probe", "text": "hi"}
    assert out["limiter"] == "RedisTokenBucket"
    assert out["allowed"] is True
    # What the demo wrote is on the master Sentinel named: cache and buckets on /0,
    # broker queue on /2, results on /3.
    db0 = redis.Redis(port=master.port, db=0)
    assert [key for key in db0.scan_iter("*sentinel-probe*")]
    bucket = db0.hgetall("mpai:rl:user:sentinel-test")
    assert float(bucket[b"tokens"]) == out["remaining"]
    assert redis.Redis(port=master.port, db=2).llen("celery") == 1
    assert redis.Redis(port=master.port, db=3).exists("celery-task-meta-sentinel-task-id")


AFTER_FAILOVER = """
import sys, time
from django.core.cache import caches
from mpai.chat.ratelimit.service import get_rate_limiter

raw = caches["redis"]
raw.set("before-failover", 1, 60)
print("ready", flush=True)
sys.stdin.readline()  # the test has failed the master over
deadline = time.monotonic() + 30
while True:  # the first command on the old master's connection fails, then it reconnects
    try:
        raw.set("after-failover", 1, 60)
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
while not get_rate_limiter().check("user:after-failover").allowed or not raw.get("after-failover"):
    if time.monotonic() > deadline:
        raise SystemExit("the rate limiter never reached the new master")
    time.sleep(0.05)
print("done", flush=True)
"""


def test_the_demo_follows_a_sentinel_failover(master: RedisServer) -> None:
    replica = RedisServer()
    replica.start()
    redis.Redis(port=replica.port).execute_command("REPLICAOF", "127.0.0.1", str(master.port))
    wait_until(
        lambda: redis.Redis(port=replica.port).info("replication")["master_link_status"] == "up",
        what="replica in sync",
    )
    sentinel = start_sentinel(master)  # finds the replica in the master's INFO at once
    demo = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", AFTER_FAILOVER],
        cwd=ROOT,
        env=demo_env(sentinel),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        assert demo.stdin is not None
        assert demo.stdout.readline().strip() == "ready", demo.stderr
        wait_until(
            lambda: sentinel.client().execute_command("SENTINEL", "replicas", MASTER),
            timeout=30,
            what="Sentinel knows the replica",
        )
        sentinel.client().execute_command("SENTINEL", "FAILOVER", MASTER)
        wait_until(lambda: sentinel.master_port() == replica.port, timeout=30, what="failover")
        wait_until(
            lambda: redis.Redis(port=replica.port).info("replication")["role"] == "master",
            timeout=30,
            what="replica promoted",
        )
        # And the old master demoted (until then a write may still land on it, and be
        # lost in its resync: Redis' asynchronous replication).
        wait_until(
            lambda: redis.Redis(port=master.port).info("replication")["role"] == "slave",
            timeout=30,
            what="old master demoted",
        )
        demo.stdin.write("go\n")
        demo.stdin.flush()
        assert demo.stdout.readline().strip() == "done", demo.stderr
        assert demo.wait(timeout=30) == 0
        # Written after the failover: on the promoted server, through the same pools.
        promoted = redis.Redis(port=replica.port)
        assert list(promoted.scan_iter("*after-failover*"))
        assert promoted.exists("mpai:rl:user:after-failover")
    finally:
        if demo.poll() is None:
            demo.kill()
        demo.wait(timeout=10)
        sentinel.process.terminate()
        sentinel.process.wait(timeout=10)
        replica.stop()
