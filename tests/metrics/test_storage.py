"""Per-minute turn metrics (mpai.metrics.storage, receivers, summary) in Redis and the
database, across two processes, and through a Redis outage."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import override_settings

from mpai import metrics, signals
from mpai.chat.pipeline import ChatPipeline
from mpai.metrics import histogram, receivers, storage
from mpai.metrics.record import STAGES, TurnRecord
from mpai.models import Message, MetricBucket
from mpai.providers.offline import OfflineProvider
from tests.chat.turning import drive
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0  # a fixed wall-clock time (s) for the recorded turns
REPLY = "Your membership renews on the first of the month."


def turn(ms: float = 12.0, *, outcome: str = "complete", ended_at: float = NOW, **kw: Any):
    figures: dict[str, Any] = {
        "timings_ms": {stage: ms for stage in STAGES},
        "outcome": outcome,
        "model": "offline-1",
        "cached": False,
        "replayed": False,
        "input_tokens": 30,
        "output_tokens": 7,
        "ended_at": ended_at,
    }
    figures.update(kw)
    return TurnRecord(**figures)


def mpai_with(**options: Any) -> override_settings:
    return override_settings(MPAI={**settings.MPAI, **options})


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered) - 1e-9)) - 1]


@pytest.fixture
def metrics_redis(redis_server: RedisServer) -> Iterator[str]:
    """A database of the private redis-server, emptied, as METRICS_REDIS_URL."""
    receivers.flush(10)
    url = f"{redis_server.url}/9"
    client = redis.Redis.from_url(url)
    client.flushdb()
    with mpai_with(METRICS_REDIS_URL=url, METRICS_ENABLED=True):
        yield url
    receivers.flush(10)
    client.flushdb()


@pytest.fixture
def metrics_db(transactional_db: Any) -> Iterator[None]:
    """The database store (no Redis URL anywhere), emptied."""
    receivers.flush(10)
    with mpai_with(METRICS_REDIS_URL="", METRICS_ENABLED=True):
        MetricBucket.objects.all().delete()
        yield
        receivers.flush(10)


def test_redis_recording_is_one_round_trip_and_expires_in_seven_days(metrics_redis, monkeypatch):
    client = storage.redis_client(metrics_redis)
    client.ping()  # connected (and SELECTed) before counting
    sent: list[Any] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(command)
        original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    assert storage.record(turn(12.0)) is True
    monkeypatch.undo()
    assert len(sent) == 1  # the whole pipeline, one write on the socket, one reply read

    minute = storage.minute_of(NOW)
    hour = minute // 60
    keys = {key.decode() for key in client.keys("mpai:metrics:*")}
    hour_keys = {
        *(f"mpai:metrics:hh:{hour}:{stage}" for stage in STAGES),
        f"mpai:metrics:hc:{hour}",
    }
    assert keys == {
        *(f"mpai:metrics:h:{minute}:{stage}" for stage in STAGES),
        f"mpai:metrics:c:{minute}",
        "mpai:metrics:last",
        *hour_keys,
    }
    for key in keys:
        ttl = client.ttl(key)
        top = 7 * 24 * 3600 + (3600 if key in hour_keys else 0)
        assert top - 60 <= ttl <= top, (key, ttl)
    assert client.hgetall(f"mpai:metrics:hc:{hour}") == client.hgetall(f"mpai:metrics:c:{minute}")
    bucket = str(histogram.bucket_index(12.0)).encode()
    assert client.hgetall(f"mpai:metrics:h:{minute}:total") == {bucket: b"1"}
    assert client.hgetall(f"mpai:metrics:c:{minute}") == {
        b"turns": b"1",
        b"outcome:complete": b"1",
        b"input_tokens": b"30",
        b"output_tokens": b"7",
    }
    assert json.loads(client.get("mpai:metrics:last"))["timings_ms"]["total"] == 12.0


CHILD = textwrap.dedent(
    """
    import os, sys
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import django
    django.setup()
    from django.conf import settings
    from django.test.utils import override_settings
    url, start, count, now = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    override_settings(MPAI={**settings.MPAI, "METRICS_REDIS_URL": url}).enable()
    from mpai.metrics import storage
    from mpai.metrics.record import STAGES, TurnRecord
    stored = 0
    for i in range(count):
        ms = float(start + i)
        stored += storage.record(TurnRecord(
            timings_ms={stage: ms for stage in STAGES},
            outcome="provider_timeout" if i % 10 == 0 else "complete",
            model="offline-1", cached=i % 4 == 0, replayed=False,
            input_tokens=10, output_tokens=3,
            ended_at=now - (i % 100) * 30,  # spread over the last 50 minutes
        ))
    print(stored, os.getpid())
    """
)


def test_two_processes_record_into_one_redis_and_summary_merges_them(metrics_redis):
    count = 400
    starts = [1, 3000]  # 1..400 ms in one process, 3000..3399 ms in the other
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, metrics_redis, str(start), str(count), str(NOW)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for start in starts
    ]
    outputs = [child.communicate(timeout=60) for child in children]
    for child, (_out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    stored = [out.split() for out, _ in outputs]
    assert [int(s[0]) for s in stored] == [count, count]
    assert stored[0][1] != stored[1][1]  # two processes

    report = metrics.summary("1h", now=NOW)
    assert report["turns"] == 2 * count
    assert report["outcomes"] == {"complete": 2 * 360, "provider_timeout": 2 * 40}
    assert report["tokens"] == {"input": 2 * count * 10, "output": 2 * count * 3}
    assert report["cached"] == 2 * 100
    values = [float(start + i) for start in starts for i in range(count)]
    for stage in STAGES:
        figures = report["stages"][stage]
        assert figures["count"] == 2 * count
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            true = nearest_rank(values, q)
            assert abs(figures[name] - true) / true <= histogram.MAX_RELATIVE_ERROR, (name, true)
    # p50 sits in the slow process's half only when both halves are merged
    assert report["stages"]["total"]["p50"] < 500 < report["stages"]["total"]["p95"]
    # the window: turns of 2 hours ago are outside "1h", inside "24h"
    storage.record(turn(5.0, ended_at=NOW - 2 * 3600))
    assert metrics.summary("1h", now=NOW)["turns"] == 2 * count
    assert metrics.summary("24h", now=NOW)["turns"] == 2 * count + 1
    assert metrics.summary("7d", now=NOW)["turns"] == 2 * count + 1


def test_unknown_window_is_a_value_error():
    with pytest.raises(ValueError, match="unknown window"):
        metrics.summary("2h")


def test_database_fallback_records_and_summarises(metrics_db):
    assert storage.redis_url() is None
    for ms in (1.0, 2.0, 3.0, 400.0):
        assert storage.record(turn(ms)) is True
    storage.record(turn(9.0, outcome="cancelled", input_tokens=None, output_tokens=None))
    report = metrics.summary("1h", now=NOW)
    assert report["turns"] == 5
    assert report["outcomes"] == {"cancelled": 1, "complete": 4}
    assert report["tokens"] == {"input": 4 * 30, "output": 4 * 7}
    total = report["stages"]["total"]
    assert total["count"] == 5
    assert abs(total["p50"] - 3.0) / 3.0 <= histogram.MAX_RELATIVE_ERROR
    assert abs(total["p99"] - 400.0) / 400.0 <= histogram.MAX_RELATIVE_ERROR
    last = storage.last_turn()
    assert last is not None
    assert last["outcome"] == "cancelled"
    assert last["timings_ms"]["total"] == 9.0


def test_database_upserts_lose_no_count_under_concurrency(metrics_db):
    threads, per_thread = 4, 40
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work() -> None:
        try:
            start.wait()
            for _ in range(per_thread):
                assert storage.record(turn(50.0)) is True
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors
    report = metrics.summary("1h", now=NOW)
    assert report["turns"] == threads * per_thread
    assert report["stages"]["api_wait"]["count"] == threads * per_thread
    assert MetricBucket.objects.filter(stage="total").count() == 1  # one row, added to


def test_redis_outage_loses_figures_never_a_reply(user, caplog):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    receivers.flush(10)
    storage._last_error_log = -math.inf
    before = storage.failures
    with (
        mpai_with(METRICS_REDIS_URL=dead, METRICS_ENABLED=True),
        caplog.at_level(logging.WARNING, "mpai.metrics"),
    ):
        assert storage.record(turn()) is False  # does not raise
        assert storage.record(turn()) is False
        pipe = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply=REPLY))
        result = drive(pipe.stream(user=user, content="When do I renew?"))
        assert receivers.flush(10)
    assert result.status == "complete"
    saved = Message.objects.get(pk=result.message.pk)
    assert (saved.status, saved.content) == ("complete", REPLY)
    assert storage.failures == before + 3  # two direct recordings and the turn's
    logged = [r for r in caplog.records if "mpai metrics" in r.getMessage()]
    assert len(logged) == 1  # at most once a minute


def test_real_turns_are_recorded_with_consistent_stage_timings(user, metrics_redis):
    pipe = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply=REPLY))
    results = [drive(pipe.stream(user=user, content=f"question {i}")) for i in range(3)]
    assert receivers.flush(10)
    last = storage.last_turn()
    assert last is not None
    timings = last["timings_ms"]
    assert set(timings) == set(STAGES)
    for stage in STAGES:
        assert 0 <= timings[stage] <= timings["total"], (stage, timings)
    assert last["outcome"] == "complete"
    assert last["model"] == results[-1].message.model
    report = metrics.summary("1h")
    assert report["turns"] == 3
    assert report["outcomes"] == {"complete": 3}
    assert report["tokens"]["output"] == sum(r.message.completion_tokens for r in results)
    for stage in STAGES:
        figures = report["stages"][stage]
        assert figures["count"] == 3
        assert 0 <= figures["p50"] <= figures["p95"] <= figures["p99"]


def test_the_receiver_maps_the_signal_and_runs_off_the_sending_thread(metrics_redis, monkeypatch):
    seen: list[tuple[TurnRecord, str]] = []

    def fake_record(record: TurnRecord) -> bool:
        seen.append((record, threading.current_thread().name))
        return True

    monkeypatch.setattr(storage, "record", fake_record)

    class Trace:
        cached, replayed = True, False

    class Saved:
        model, prompt_tokens, completion_tokens = "m-1", 11, None

    signals.request_complete.send_robust(
        sender=ChatPipeline,
        trace=Trace(),
        user=None,
        conversation=None,
        message=Saved(),
        status="error",
        error_code="provider_timeout",
        timings_ms={"total": 5.5, "context": 1.0, "unknown": 3.0},
    )
    assert receivers.flush(10)
    [(record, thread)] = seen
    assert thread == "mpai-metrics-recorder" != threading.current_thread().name
    assert record.outcome == "provider_timeout"
    assert record.timings_ms == {"context": 1.0, "total": 5.5}
    assert (record.model, record.cached, record.input_tokens, record.output_tokens) == (
        "m-1",
        True,
        11,
        None,
    )
    with mpai_with(METRICS_ENABLED=False):
        signals.request_complete.send_robust(
            sender=ChatPipeline,
            trace=Trace(),
            user=None,
            conversation=None,
            message=Saved(),
            status="complete",
            error_code=None,
            timings_ms={"total": 1.0},
        )
        assert receivers.flush(10)
    assert len(seen) == 1


def test_a_full_queue_drops_and_counts(monkeypatch):
    import queue

    full: queue.Queue[TurnRecord] = queue.Queue(maxsize=1)
    full.put_nowait(turn())
    monkeypatch.setattr(receivers, "_queue", full)
    monkeypatch.setattr(receivers, "_pid", os.getpid())
    before = receivers.dropped
    assert receivers.submit(turn()) is False
    assert receivers.dropped == before + 1
    assert receivers.flush(0.01) is False  # never drained: the deadline ends the wait


def test_importing_mpai_metrics_imports_no_django_model():
    code = "import sys, mpai.metrics; print(sorted(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "mpai.models" not in out
    assert "django.db" not in out
