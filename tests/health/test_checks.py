"""The health checks (mpai.health.checks) against real services: each healthy, and each
failing for real (a Redis stopped or frozen with SIGSTOP, a provider on a closed port or
one that never answers, a memory limit below the process, a beat task gone quiet)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from mpai.health import checks
from mpai.health.models import HealthSnapshot, TaskHeartbeat
from mpai.health.results import Status
from mpai.health.runner import build_check
from tests.asgi_server import ROOT, server_env
from tests.redis_server import RedisServer, free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db

OPENAI = "mpai.providers.openai.OpenAIProvider"


def mpai_with(**options: Any) -> override_settings:
    return override_settings(MPAI={**settings.MPAI, **options})


def health_with(**options: Any) -> override_settings:
    return mpai_with(HEALTH={**settings.MPAI.get("HEALTH", {}), **options})


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone (stopped, frozen or killed at will)."""
    server = RedisServer()
    server.start()
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
def frozen_redis(private_redis: RedisServer) -> Iterator[RedisServer]:
    """The private Redis stopped with SIGSTOP: it accepts connections, never answers."""
    assert private_redis.process is not None
    os.kill(private_redis.process.pid, signal.SIGSTOP)
    yield private_redis
    os.kill(private_redis.process.pid, signal.SIGCONT)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener completes TCP handshakes (the backlog) and never replies."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield int(sock.getsockname()[1])
    sock.close()


def bounded(seconds: float) -> float:
    """A generous bound (s) for something that must end "within ``seconds``"."""
    return seconds + 3.0


# -- database --------------------------------------------------------------------------


def test_database_round_trip_and_postgresql_figures():
    result = checks.DatabaseCheck().run()
    assert result.status is Status.OK, result
    details = result.details
    assert details["vendor"] == "postgresql"
    assert details["round_trip_ms"] >= 0
    assert 1 <= details["connections"] <= details["max_connections"]
    assert "mpai_healthsnapshot" in details["tables_bytes"]
    assert all(name.startswith("mpai_") for name in details["tables_bytes"])
    assert details["total_bytes"] == sum(details["tables_bytes"].values()) > 0
    assert "connections in use" in result.message


def test_database_connection_thresholds():
    result = checks.DatabaseCheck(connections_warning=0.0, connections_error=1.1).run()
    assert result.status is Status.WARNING
    result = checks.DatabaseCheck(connections_error=0.0).run()
    assert result.status is Status.ERROR
    assert "connections in use" in result.message


def test_database_without_statistics_is_one_round_trip():
    result = checks.DatabaseCheck(stats=False).run()
    assert result.status is Status.OK
    assert set(result.details) == {"vendor", "round_trip_ms"}


# -- cache -----------------------------------------------------------------------------


def layered_caches(redis_url: str) -> dict[str, Any]:
    caches = {alias: dict(conf) for alias, conf in settings.CACHES.items()}
    caches["layered"] = {
        "BACKEND": "mpai.cache.LayeredCache",
        "LOCATION": f"{redis_url}/4",
        "KEY_PREFIX": f"health-{free_port()}",
    }
    return caches


def test_plain_default_cache_round_trip():
    [check] = build_check("mpai.health.checks.CacheCheck")
    result = check.run()
    assert result.name == "cache"
    assert result.status is Status.OK, result
    assert result.details["backend"] == "RedisCache"


def test_layered_cache_gives_one_check_per_layer(private_redis):
    with override_settings(CACHES=layered_caches(private_redis.url)):
        expanded = checks.CacheCheck(alias="layered").expand()
        assert [check.name for check in expanded] == [
            "cache:memory",
            "cache:redis",
            "cache:database",
        ]
        results = {check.name: check.run() for check in expanded}
    assert all(result.status is Status.OK for result in results.values()), results
    assert results["cache:redis"].details["state"] == "closed"
    assert results["cache:database"].details["backend"] == "mpai.cache.database.DatabaseLayer"
    assert "entries" in results["cache:memory"].details


def test_layered_cache_without_redis_checks_memory_and_database():
    caches = {alias: dict(conf) for alias, conf in settings.CACHES.items()}
    caches["layered"] = {"BACKEND": "mpai.cache.LayeredCache", "LOCATION": ""}
    with override_settings(CACHES=caches):
        names = [check.name for check in checks.CacheCheck(alias="layered").expand()]
    assert names == ["cache:memory", "cache:database"]


def test_cache_layer_down_is_an_error_the_others_stay_ok(private_redis):
    with override_settings(CACHES=layered_caches(private_redis.url)):
        expanded = checks.CacheCheck(alias="layered").expand()
        private_redis.stop()
        results = {check.name: check.run() for check in expanded}
    assert results["cache:redis"].status is Status.ERROR
    assert "round trip failed" in results["cache:redis"].message
    assert results["cache:memory"].status is Status.OK
    assert results["cache:database"].status is Status.OK


def test_unknown_cache_layer_is_an_error(private_redis):
    with override_settings(CACHES=layered_caches(private_redis.url)):
        result = checks.CacheCheck(alias="layered", layer="disk").run()
    assert result.status is Status.ERROR
    assert result.name == "cache:disk"


# -- redis -----------------------------------------------------------------------------


def test_redis_ping_and_info(redis_server):
    result = checks.RedisCheck(url=f"{redis_server.url}/0").run()
    assert result.status is Status.OK, result
    assert result.details["used_memory"] > 0
    assert result.details["redis_version"]
    assert result.details["url"] == f"{redis_server.url}/0"


def test_redis_url_defaults_to_the_rate_limiter_s(redis_server):
    with mpai_with(RATE_LIMIT={"REDIS_URL": f"{redis_server.url}/0"}):
        assert checks.RedisCheck().url == f"{redis_server.url}/0"


def test_redis_not_configured_is_ok():
    result = checks.RedisCheck(url="").run()
    assert (result.status, result.message) == (Status.OK, "not configured")


def test_redis_stopped_is_an_error(private_redis):
    url = private_redis.url
    private_redis.stop()
    result = checks.RedisCheck(url=url, timeout=0.5).run()
    assert result.status is Status.ERROR
    assert "unavailable" in result.message


def test_redis_frozen_fails_within_its_timeout(frozen_redis):
    started = time.monotonic()
    result = checks.RedisCheck(url=frozen_redis.url, timeout=0.5).run()
    assert result.status is Status.ERROR
    assert "did not answer within 0.5 s" in result.message
    assert time.monotonic() - started < bounded(0.5)


def test_redis_password_never_shown(redis_server):
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    check = checks.RedisCheck(url=url, timeout=0.2)
    result = check.run()
    assert result.status is Status.ERROR
    shown = json.dumps(result.as_dict()) + repr(check)
    assert "s3cret-pw" not in shown


# -- channel layer ---------------------------------------------------------------------


def test_channel_layer_round_trip_on_redis():
    result = checks.ChannelLayerCheck().run()
    assert result.status is Status.OK, result
    assert result.details["backend"] == "RedisChannelLayer"


def test_channel_layer_in_memory_and_not_configured():
    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(CHANNEL_LAYERS=layers):
        assert checks.ChannelLayerCheck().run().status is Status.OK
    with override_settings(CHANNEL_LAYERS={}):
        result = checks.ChannelLayerCheck().run()
    assert (result.status, result.message) == (Status.OK, "not configured")


def test_channel_layer_on_a_frozen_redis_fails_within_its_timeout(frozen_redis):
    layers = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": f"{frozen_redis.url}/1", "socket_timeout": 30}]},
        }
    }
    started = time.monotonic()
    with override_settings(CHANNEL_LAYERS=layers):
        result = checks.ChannelLayerCheck(timeout=0.5).run()
    assert result.status is Status.ERROR
    assert time.monotonic() - started < bounded(0.5)


# -- celery ----------------------------------------------------------------------------


def test_celery_eager_mode_is_ok():
    result = checks.CeleryCheck().run()
    assert (result.status, result.message) == (Status.OK, "eager mode (tasks run in the caller)")


def test_celery_without_workers_is_an_error(redis_server):
    app = Celery("health-probe", broker=f"{redis_server.url}/6")
    result = checks.CeleryCheck(app=app, timeout=0.3).run()
    assert result.status is Status.ERROR
    assert "no Celery worker answered" in result.message
    assert result.details["queue_length"] == 0
    assert result.details["workers"] == []


def test_celery_broker_down_is_an_error(private_redis):
    app = Celery("health-probe", broker=f"{private_redis.url}/6")
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    private_redis.stop()
    result = checks.CeleryCheck(app=app, timeout=0.3).run()
    assert result.status is Status.ERROR


@pytest.mark.django_db(transaction=True)
def test_celery_worker_answers(redis_server):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    env.update(server_env(redis_server.url, "http://127.0.0.1:9/v1"))
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo"),
            *("--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "warning"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        app = Celery("health-probe", broker=f"{redis_server.url}/2")
        check = checks.CeleryCheck(app=app, timeout=0.5)
        result = wait_until(
            lambda: (r := check.run()).status is Status.OK and r, timeout=60, what="a worker"
        )
        assert len(result.details["workers"]) == 1
        assert result.details["queue_length"] == 0
    finally:
        process.terminate()
        process.wait(timeout=20)


# -- scheduled tasks -------------------------------------------------------------------

SCHEDULE = {
    "hourly": {"task": "mpai.hourly", "schedule": 3600.0},
    "daily": {"task": "mpai.daily", "schedule": timedelta(days=1)},
    "other": {"task": "site.elsewhere", "schedule": 60.0},
}


def beat(task: str, **ago: float | None) -> TaskHeartbeat:
    """A heartbeat whose times are given as seconds ago (None: never)."""
    now = timezone.now()
    fields = {
        f"last_{name}_at": (None if seconds is None else now - timedelta(seconds=seconds))
        for name, seconds in ago.items()
    }
    return TaskHeartbeat.objects.create(task=task, **fields)


def run_scheduled() -> Any:
    with override_settings(CELERY_BEAT_SCHEDULE=SCHEDULE):
        return checks.ScheduledTasksCheck(margin=0.5, margin_min=300).run()


def test_tasks_on_schedule_are_ok():
    beat("mpai.hourly", started=60, succeeded=59)
    beat("mpai.daily", succeeded=20 * 3600)
    result = run_scheduled()
    assert result.status is Status.OK, result
    assert set(result.details["tasks"]) == {"mpai.hourly", "mpai.daily"}  # mpai.* only
    assert result.details["tasks"]["mpai.daily"]["allowed_s"] == 36 * 3600


def test_a_task_that_stopped_reporting_is_an_error_naming_it():
    beat("mpai.hourly", succeeded=3600 + 1800 + 60)  # past 1 h + 30 min margin
    beat("mpai.daily", succeeded=3600)
    result = run_scheduled()
    assert result.status is Status.ERROR
    assert "mpai.hourly" in result.message
    assert "mpai.daily" not in result.message
    assert result.details["tasks"]["mpai.hourly"]["state"] == "late"


def test_the_margin_is_at_least_margin_min():
    check = checks.ScheduledTasksCheck(margin=0.5, margin_min=300)
    assert check.allowed_seconds(60) == 360
    assert check.allowed_seconds(3600) == 5400


def test_a_failure_after_the_last_success_is_a_warning():
    beat("mpai.hourly", succeeded=1200, failed=60)
    TaskHeartbeat.objects.filter(task="mpai.hourly").update(last_error="ValueError: boom")
    beat("mpai.daily", succeeded=3600)
    result = run_scheduled()
    assert result.status is Status.WARNING
    assert "mpai.hourly" in result.message
    assert result.details["tasks"]["mpai.hourly"]["last_error"] == "ValueError: boom"


def test_a_task_never_run_is_pending_until_its_schedule_has_passed():
    beat("mpai.daily", succeeded=3600)
    result = run_scheduled()  # mpai.hourly: no row, never seen by a check before
    assert result.status is Status.OK, result
    assert result.details["tasks"]["mpai.hourly"]["state"] == "pending"
    # A snapshot listing it 2 h ago: its schedule started then; 2 h > 1.5 h allowed.
    snapshot = HealthSnapshot.objects.create(status="ok", duration_ms=1, results=[result.as_dict()])
    HealthSnapshot.objects.filter(pk=snapshot.pk).update(
        created_at=timezone.now() - timedelta(hours=2)
    )
    result = run_scheduled()
    assert result.status is Status.ERROR
    assert "mpai.hourly" in result.message


def test_no_mpai_task_scheduled_is_ok():
    with override_settings(CELERY_BEAT_SCHEDULE={"other": SCHEDULE["other"]}):
        result = checks.ScheduledTasksCheck().run()
    assert result.status is Status.OK


# -- provider --------------------------------------------------------------------------


def openai(base_url: str, api_key: str = "sk-test-secret") -> dict[str, Any]:
    return {"BACKEND": OPENAI, "OPTIONS": {"base_url": base_url, "api_key": api_key}}


def test_offline_provider_is_ok():
    result = checks.ProviderCheck().run()
    assert (result.status, result.message) == (Status.OK, "offline provider")


def test_provider_models_endpoint_answers(httpserver: HTTPServer):
    seen: list[str | None] = []

    def models(request: Request) -> Response:
        seen.append(request.headers.get("Authorization"))
        body = {"object": "list", "data": [{"id": "a"}, {"id": "b"}]}
        return Response(json.dumps(body), content_type="application/json")

    httpserver.expect_request("/v1/models", method="GET").respond_with_handler(models)
    check = checks.ProviderCheck(provider=openai(httpserver.url_for("/v1")))
    result = check.run()
    assert result.status is Status.OK, result
    assert result.details["models"] == 2
    assert seen == ["Bearer sk-test-secret"]
    shown = json.dumps(result.as_dict()) + repr(check)
    assert "sk-test-secret" not in shown


@pytest.mark.parametrize(
    ("code", "status"), [(500, Status.ERROR), (401, Status.ERROR), (404, Status.WARNING)]
)
def test_provider_http_errors(httpserver: HTTPServer, code: int, status: Status):
    httpserver.expect_request("/v1/models").respond_with_data("no", status=code)
    result = checks.ProviderCheck(provider=openai(httpserver.url_for("/v1"))).run()
    assert result.status is status
    assert f"HTTP {code}" in result.message


def test_provider_on_a_closed_port_is_an_error():
    result = checks.ProviderCheck(provider=openai(f"http://127.0.0.1:{free_port()}/v1")).run()
    assert result.status is Status.ERROR
    assert "unreachable" in result.message


def test_provider_that_never_answers_fails_within_its_timeout(silent_port: int):
    started = time.monotonic()
    check = checks.ProviderCheck(provider=openai(f"http://127.0.0.1:{silent_port}/v1"), timeout=0.5)
    result = check.run()
    assert result.status is Status.ERROR
    assert "did not answer within 0.5 s" in result.message
    assert time.monotonic() - started < bounded(0.5)


def summary_of(turns: int, errors: int, p95: float | None = 100.0) -> dict[str, Any]:
    return {
        "turns": turns,
        "outcomes": {"complete": turns - errors - 1, "cancelled": 1, "provider_timeout": errors},
        "stages": {"total": {"count": turns, "p50": 1.0, "p95": p95, "p99": p95}},
    }


@pytest.mark.parametrize(
    ("turns", "errors", "status"),
    [(100, 1, Status.OK), (100, 10, Status.WARNING), (100, 30, Status.ERROR), (5, 4, Status.OK)],
)
def test_provider_error_rate(httpserver, monkeypatch, turns, errors, status):
    from mpai import metrics

    monkeypatch.setattr(metrics, "summary", lambda window: summary_of(turns, errors))
    httpserver.expect_request("/v1/models").respond_with_json({"data": []})
    with mpai_with(METRICS_ENABLED=True):
        result = checks.ProviderCheck(provider=openai(httpserver.url_for("/v1"))).run()
    assert result.status is status, result
    assert (result.details["turns"], result.details["errors"]) == (turns, errors)


def test_error_rate_counts_outcomes_other_than_complete_and_cancelled():
    assert checks.error_rate(summary_of(20, 3)) == (3, 20)


# -- process resources -----------------------------------------------------------------


def test_memory_within_the_limit_is_ok():
    result = checks.MemoryCheck().run()
    assert result.status is Status.OK, result
    assert result.details["limit_source"] in ("cgroup", "total")
    assert 0 < result.details["rss_bytes"] < result.details["limit_bytes"]


def test_memory_limit_set_low_is_an_error():
    with health_with(MEMORY_LIMIT_BYTES=1024 * 1024):
        result = checks.MemoryCheck().run()
    assert result.status is Status.ERROR
    assert result.details["limit_source"] == "setting"
    assert result.details["fraction"] > 1


def test_memory_warning_level():
    rss = checks.MemoryCheck().run().details["rss_bytes"]
    result = checks.MemoryCheck(limit_bytes=int(rss / 0.85), warning=0.5, error=1.5).run()
    assert result.status is Status.WARNING


def test_cpu_sampled_and_thresholds():
    result = checks.CpuCheck(interval=0.05, warning=2.0, error=2.0).run()
    assert result.status is Status.OK
    assert 0 <= result.details["fraction"] <= 1
    assert checks.CpuCheck(interval=0.05, warning=0.0, error=2.0).run().status is Status.WARNING


def test_disk_usage_of_base_dir_and_thresholds():
    result = checks.DiskCheck(warning=1.01, error=1.01).run()
    assert result.status is Status.OK
    assert result.details["path"] == str(settings.BASE_DIR)
    assert result.details["total_bytes"] > result.details["free_bytes"] > 0
    assert checks.DiskCheck(path="/", error=0.0).run().status is Status.ERROR


# -- response times --------------------------------------------------------------------


@pytest.mark.parametrize(("p95", "status"), [(100.0, Status.OK), (9000.0, Status.WARNING)])
def test_response_times_p95(monkeypatch, p95, status):
    from mpai import metrics

    monkeypatch.setattr(metrics, "summary", lambda window: summary_of(50, 0, p95=p95))
    with mpai_with(METRICS_ENABLED=True):
        result = checks.ResponseTimesCheck().run()
    assert result.status is status
    assert result.details["p95_ms"] == {"total": p95}
    with mpai_with(METRICS_ENABLED=True):
        assert checks.ResponseTimesCheck(error_ms=50.0).run().status is Status.ERROR


def test_response_times_from_real_metrics_with_no_turn():
    with mpai_with(METRICS_ENABLED=True, METRICS_REDIS_URL=""):
        result = checks.ResponseTimesCheck().run()
    assert result.status is Status.OK


def test_default_checks_import():
    names = {check.name for entry in checks.DEFAULT_CHECKS for check in build_check(entry)}
    assert names >= {
        "database",
        "cache",
        "redis",
        "channel_layer",
        "celery",
        "scheduled_tasks",
        "provider",
        "memory",
        "cpu",
        "disk",
        "response_times",
    }


def test_response_times_with_the_metrics_store_frozen_is_a_warning(frozen_redis):
    with mpai_with(METRICS_ENABLED=True, METRICS_REDIS_URL=f"{frozen_redis.url}/9"):
        result = checks.ResponseTimesCheck().run()
    assert result.status is Status.WARNING
    assert result.message.startswith("metrics store unavailable")
