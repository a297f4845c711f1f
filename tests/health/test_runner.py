"""The runner (mpai.health.runner): configured checks, concurrency, the per-check timeout
(a hung check does not hold up the run), snapshots and their pruning, the alerts hook."""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from mpai.health import runner
from mpai.health.checks import DatabaseCheck
from mpai.health.models import HealthSnapshot
from mpai.health.results import HealthCheck, ServiceUnavailable, ServiceWarning, Status
from tests.health.test_checks import frozen_redis, private_redis
from tests.waiting import wait_until

__all__ = ["frozen_redis", "private_redis"]  # fixtures used below

pytestmark = pytest.mark.django_db


def health_with(**options: Any) -> override_settings:
    health = {**settings.MPAI.get("HEALTH", {}), **options}
    return override_settings(MPAI={**settings.MPAI, "HEALTH": health})


class OkCheck(HealthCheck):
    name = "ok_check"

    def __init__(self, *, note: str = "fine") -> None:
        self.note = note

    def check(self) -> tuple[str, dict[str, Any]]:
        return self.note, {"n": 1}


class WarnCheck(HealthCheck):
    name = "warn_check"

    def check(self) -> tuple[str, dict[str, Any]]:
        raise ServiceWarning("a bit high", value=0.9)


class FailCheck(HealthCheck):
    name = "fail_check"

    def check(self) -> tuple[str, dict[str, Any]]:
        raise ServiceUnavailable("down")


class BlockingCheck(HealthCheck):
    """Blocks until ``release`` is set (a hung dependency)."""

    name = "blocking"

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.finished = threading.Event()

    def check(self) -> tuple[str, dict[str, Any]]:
        self.release.wait(60)
        self.finished.set()
        return "released", {}


class BarrierCheck(HealthCheck):
    """Passes only when ``parties`` checks run at the same time."""

    def __init__(self, barrier: threading.Barrier, name: str) -> None:
        self.barrier = barrier
        self.name = name  # type: ignore[misc]

    def check(self) -> tuple[str, dict[str, Any]]:
        self.barrier.wait()
        return "met", {}


@pytest.fixture
def alerts_calls(monkeypatch) -> list[Any]:
    """``mpai.health.alerts.process_snapshot`` replaced by a recorder."""
    calls: list[Any] = []
    module = types.ModuleType("mpai.health.alerts")
    module.process_snapshot = calls.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mpai.health.alerts", module)
    return calls


# -- configuration ---------------------------------------------------------------------


def test_default_checks_cover_every_configured_check():
    names = [check.name for check in runner.configured_checks()]
    assert names == [
        "database",
        "cache",  # tests' default cache is django-redis, not layered
        "redis",
        "channel_layer",
        "celery",
        "scheduled_tasks",
        "provider",
        "memory",
        "cpu",
        "disk",
        "response_times",
    ]


def test_checks_setting_takes_import_strings_and_backend_options():
    entries = [
        "tests.health.test_runner.WarnCheck",
        {"BACKEND": "tests.health.test_runner.OkCheck", "OPTIONS": {"note": "custom"}},
        {"BACKEND": "mpai.health.checks.MemoryCheck", "OPTIONS": {"limit_bytes": 10}},
    ]
    with health_with(CHECKS=entries):
        built = runner.configured_checks()
    assert [check.name for check in built] == ["warn_check", "ok_check", "memory"]
    assert built[1].note == "custom"  # type: ignore[attr-defined]
    assert built[2].limit_bytes == 10  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "entry",
    [
        42,
        {"OPTIONS": {}},
        "tests.health.test_runner.Missing",
        "tests.health.test_runner.health_with",
        {"BACKEND": "tests.health.test_runner.OkCheck", "OPTIONS": {"nope": 1}},
        {"BACKEND": "tests.health.test_runner.OkCheck", "OPTIONS": ["x"]},
    ],
)
def test_bad_entries_are_improperly_configured(entry):
    with health_with(CHECKS=[entry]), pytest.raises(ImproperlyConfigured):
        runner.configured_checks()


def test_checks_setting_must_be_a_list():
    with (
        health_with(CHECKS="tests.health.test_runner.OkCheck"),
        pytest.raises(ImproperlyConfigured),
    ):
        runner.configured_checks()


# -- running ---------------------------------------------------------------------------


def test_run_stores_a_snapshot_with_the_worst_status(alerts_calls):
    snapshot = runner.run_checks(trigger="manual", checks=[OkCheck(), WarnCheck()])
    snapshot.refresh_from_db()
    assert snapshot.status == "warning"
    assert snapshot.trigger == "manual"
    assert [r["name"] for r in snapshot.results] == ["ok_check", "warn_check"]
    assert snapshot.results[1]["details"] == {"value": 0.9}
    assert snapshot.duration_ms >= 0
    assert runner.latest_snapshot() == snapshot
    assert alerts_calls == [snapshot]
    error = runner.run_checks(checks=[OkCheck(), FailCheck(), WarnCheck()])
    assert error.status == "error"
    assert runner.latest_snapshot() == error
    assert [r.status for r in runner.results_of(error)] == [Status.OK, Status.ERROR, Status.WARNING]


def test_checks_run_concurrently(alerts_calls):
    barrier = threading.Barrier(3, timeout=10)
    checks = [BarrierCheck(barrier, f"party{i}") for i in range(3)]
    snapshot = runner.run_checks(checks=checks)
    assert snapshot.status == "ok", snapshot.results


def test_a_hung_check_times_out_and_the_run_does_not_wait_for_it(alerts_calls):
    release = threading.Event()
    hung = BlockingCheck(release)
    try:
        with health_with(TIMEOUT=0.5):
            started = time.monotonic()
            snapshot = runner.run_checks(checks=[hung, OkCheck()])
            elapsed = time.monotonic() - started
        assert not hung.finished.is_set()  # still blocked: the run returned without it
        by_name = {r["name"]: r for r in snapshot.results}
        assert by_name["blocking"]["status"] == "error"
        assert by_name["blocking"]["message"] == "timed out after 0.5 s"
        assert by_name["ok_check"]["status"] == "ok"
        assert snapshot.status == "error"
        assert elapsed < 0.5 + 3.0  # the timeout plus a generous margin
    finally:
        release.set()
    wait_until(hung.finished.is_set, timeout=10, what="the hung check's thread to end")


def test_a_check_that_raises_unexpectedly_is_an_error(alerts_calls):
    class Broken(HealthCheck):
        name = "broken"

        def check(self) -> tuple[str, dict[str, Any]]:
            raise RuntimeError("secret detail")

    [result] = runner.run_concurrently([Broken()], timeout=5)
    assert (result.status, result.message) == (Status.ERROR, "RuntimeError")


def test_alerts_failure_is_logged_and_never_raised(monkeypatch, caplog):
    module = types.ModuleType("mpai.health.alerts")

    def explode(snapshot: Any) -> list[Any]:
        raise RuntimeError("alerts broke")

    module.process_snapshot = explode  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mpai.health.alerts", module)
    with caplog.at_level(logging.ERROR, logger="mpai.health"):
        snapshot = runner.run_checks(checks=[OkCheck()])
    assert snapshot.pk is not None
    assert any("alerts" in record.getMessage() for record in caplog.records)


def backends_of_this_database() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def test_check_threads_close_their_database_connections(alerts_calls):
    before = backends_of_this_database()
    for _ in range(3):
        snapshot = runner.run_checks(checks=[DatabaseCheck(), DatabaseCheck(stats=False)])
        assert snapshot.status == "ok", snapshot.results
    wait_until(lambda: backends_of_this_database() <= before, timeout=10, what="connections closed")


# -- pruning ---------------------------------------------------------------------------


def test_snapshots_are_pruned_to_keep_and_max_age(alerts_calls):
    old = HealthSnapshot.objects.create(status="ok", duration_ms=1)
    HealthSnapshot.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))
    with health_with(SNAPSHOTS_KEEP=3, SNAPSHOTS_MAX_AGE=2 * 24 * 3600):
        snapshots = [runner.run_checks(checks=[OkCheck()]) for _ in range(5)]
    kept = list(HealthSnapshot.objects.order_by("-created_at", "-id").values_list("pk", flat=True))
    assert kept == [s.pk for s in reversed(snapshots[-3:])]
    assert not HealthSnapshot.objects.filter(pk=old.pk).exists()


def test_a_full_run_with_a_frozen_redis_is_bounded_by_the_timeout(frozen_redis, alerts_calls):
    rate_limit = {**settings.MPAI.get("RATE_LIMIT", {}), "REDIS_URL": f"{frozen_redis.url}/0"}
    health = {**settings.MPAI.get("HEALTH", {}), "TIMEOUT": 1.0, "CPU_INTERVAL": 0.1}
    with override_settings(MPAI={**settings.MPAI, "RATE_LIMIT": rate_limit, "HEALTH": health}):
        started = time.monotonic()
        snapshot = runner.run_checks()
        elapsed = time.monotonic() - started
    by_name = {r["name"]: r for r in snapshot.results}
    assert by_name["redis"]["status"] == "error"
    assert by_name["redis"]["message"] == (
        f"Redis at {frozen_redis.url}/0 did not answer within 0.5 s"
    )
    assert by_name["database"]["status"] == "ok"
    assert snapshot.status == "error"
    assert elapsed < 1.0 + 3.0
