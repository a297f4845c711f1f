"""Alert rules (mpai.health.alerts): pending → firing → resolved, against real PostgreSQL.

Snapshots are built here from CheckResult dicts (the runner is not involved).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, connections, transaction
from django.test.utils import override_settings
from django.utils import timezone

from mpai.health import alerts
from mpai.health.alerts import AlertChange, process_snapshot
from mpai.health.models import HealthAlert, HealthSnapshot
from mpai.health.results import CheckResult, Status
from mpai.health.signals import alert_state_changed
from tests.waiting import wait_until

RECIPIENTS = ["ops@example.com", "oncall@example.com"]


def mpai_overrides(
    *, alerts: dict[str, Any] | None = None, health: dict[str, Any] | None = None, **extra: Any
) -> override_settings:
    """override_settings(MPAI=...) keeping the suite's MPAI, with recipients set."""
    value = {**settings.MPAI, "ALERT_RECIPIENTS": RECIPIENTS, **extra}
    if alerts is not None:
        value["ALERTS"] = alerts
    if health is not None:
        value["HEALTH"] = health
    return override_settings(MPAI=value)


def snapshot(**statuses: str) -> HealthSnapshot:
    """A stored snapshot: ``snapshot(database="error", cache="ok")``; the message of a
    result is ``"<name> is <status>"``."""
    results = [
        CheckResult(
            name=name, status=Status(status), message=f"{name} is {status}", duration_ms=1.5
        )
        for name, status in statuses.items()
    ]
    return HealthSnapshot.objects.create(
        status=str(Status.worst(r.status for r in results)),
        duration_ms=2.0,
        results=[r.as_dict() for r in results],
    )


def run(**statuses: str) -> list[AlertChange]:
    """Store a snapshot of ``statuses`` and process it."""
    return process_snapshot(snapshot(**statuses))


def states(changes: list[AlertChange]) -> list[tuple[str, str, str | None, str]]:
    return [(c.alert.check_name, c.alert.severity, c.old_state, c.new_state) for c in changes]


@pytest.fixture(autouse=True)
def _recipients():
    with mpai_overrides():
        yield


@pytest.mark.django_db
def test_first_failure_is_pending_second_fires(mailoutbox):
    changes = run(database="error", cache="ok")
    assert states(changes) == [("database", "error", None, "pending")]
    alert = HealthAlert.objects.get()
    assert (alert.state, alert.count, alert.consecutive_failures) == ("pending", 1, 1)
    assert alert.fired_at is None
    assert alert.message == "database is error"
    assert mailoutbox == []

    changes = run(database="error", cache="ok")
    assert states(changes) == [("database", "error", "pending", "firing")]
    assert changes[0].fired
    assert not changes[0].resolved
    alert.refresh_from_db()
    assert (alert.state, alert.count, alert.consecutive_failures) == ("firing", 2, 2)
    assert alert.fired_at is not None
    assert alert.last_notified_at is not None
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_one_alert_per_episode_counts_runs():
    for _ in range(4):
        run(database="error")
    alert = HealthAlert.objects.get()
    assert (alert.state, alert.count, alert.consecutive_failures) == ("firing", 4, 4)
    assert alert.last_seen > alert.first_seen
    # Failing again while firing is not a state change.
    assert run(database="error") == []
    assert HealthAlert.objects.count() == 1


@pytest.mark.django_db
def test_pending_alert_cleared_when_check_passes_before_firing(mailoutbox):
    run(database="error")
    changes = run(database="ok")
    assert states(changes) == [("database", "error", "pending", alerts.CLEARED)]
    assert changes[0].alert.pk is None
    assert not HealthAlert.objects.exists()
    assert mailoutbox == []


@pytest.mark.django_db
def test_recovery_resolves_and_next_failure_is_a_new_alert():
    run(database="error")
    run(database="error")
    changes = run(database="ok")
    assert states(changes) == [("database", "error", "firing", "resolved")]
    assert changes[0].resolved
    old = HealthAlert.objects.get()
    assert old.state == "resolved"
    assert old.resolved_at is not None
    assert old.consecutive_passes == 1

    assert states(run(database="error")) == [("database", "error", None, "pending")]
    assert HealthAlert.objects.count() == 2
    assert HealthAlert.objects.get(state="pending").pk != old.pk


@pytest.mark.django_db
def test_passes_to_resolve_and_a_failure_in_between():
    with mpai_overrides(health={"PASSES_TO_RESOLVE": 2}):
        run(database="error")
        run(database="error")
        assert run(database="ok") == []
        alert = HealthAlert.objects.get()
        assert (alert.state, alert.consecutive_passes, alert.consecutive_failures) == (
            "firing",
            1,
            0,
        )
        assert run(database="error") == []  # a failure restarts the count of passes
        alert.refresh_from_db()
        assert (alert.consecutive_passes, alert.consecutive_failures, alert.count) == (0, 1, 3)
        assert run(database="ok") == []
        assert states(run(database="ok")) == [("database", "error", "firing", "resolved")]


@pytest.mark.django_db
def test_failures_to_fire_one_fires_at_once():
    with mpai_overrides(health={"FAILURES_TO_FIRE": 1}):
        assert states(run(database="error")) == [("database", "error", None, "firing")]
        assert HealthAlert.objects.get().fired_at is not None


@pytest.mark.django_db
def test_severity_change_passes_the_old_key_and_starts_the_new_one():
    run(disk="warning")
    run(disk="warning")
    assert HealthAlert.objects.get().state == "firing"
    changes = run(disk="error")
    assert states(changes) == [
        ("disk", "error", None, "pending"),
        ("disk", "warning", "firing", "resolved"),
    ]
    # And a pending warning is cleared when the check turns error.
    run(memory="warning")
    assert ("memory", "warning", "pending", "cleared") in states(run(memory="error"))


@pytest.mark.django_db
def test_absent_check_counts_as_passing():
    run(database="error", cache="error")
    run(database="error", cache="error")
    changes = run(database="error")
    assert states(changes) == [("cache", "error", "firing", "resolved")]


@pytest.mark.django_db
def test_alert_state_changed_signal():
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append({"sender": sender, **kwargs})

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("slack is down")

    alert_state_changed.connect(receiver)
    alert_state_changed.connect(broken)
    try:
        first = snapshot(provider="error")
        process_snapshot(first)
        run(provider="error")
        run(provider="ok")
    finally:
        alert_state_changed.disconnect(receiver)
        alert_state_changed.disconnect(broken)
    assert [(r["old_state"], r["new_state"]) for r in received] == [
        (None, "pending"),
        ("pending", "firing"),
        ("firing", "resolved"),
    ]
    assert all(r["sender"] is HealthAlert for r in received)
    assert received[0]["snapshot"] == first
    assert isinstance(received[2]["alert"], HealthAlert)
    assert received[2]["alert"].state == "resolved"


@pytest.mark.django_db
def test_state_changes_are_logged(caplog):
    caplog.set_level(logging.INFO, logger="mpai.health")
    run(database="error")
    run(database="error")
    run(database="ok")
    records = [r for r in caplog.records if r.name == "mpai.health" and "Health alert " in r.msg]
    levels = [(r.levelno, r.new_state) for r in records if hasattr(r, "new_state")]
    assert levels == [
        (logging.INFO, "pending"),
        (logging.WARNING, "firing"),
        (logging.INFO, "resolved"),
    ]
    fired = next(r for r in records if getattr(r, "new_state", None) == "firing")
    assert "database" in fired.getMessage()
    assert "database is error" in fired.getMessage()


@pytest.mark.django_db
def test_silence_mutes_email_but_alert_is_listed_then_unsilence(mailoutbox, user):
    run(database="error")
    alert = HealthAlert.objects.get()
    until = timezone.now() + timedelta(hours=1)
    alerts.silence(alert, until=until, reason="maintenance", user=user)
    alert.refresh_from_db()
    assert (alert.silenced_until, alert.silence_reason, alert.silenced_by) == (
        until,
        "maintenance",
        user,
    )
    assert alerts.is_silenced(alert)

    assert states(run(database="error")) == [("database", "error", "pending", "firing")]
    assert mailoutbox == []
    assert list(alerts.open_alerts()) == [alert]
    alert.refresh_from_db()
    assert alert.state == "firing"
    assert alert.last_notified_at is None

    alerts.unsilence(alert, user=user)
    alert.refresh_from_db()
    assert (alert.silenced_until, alert.silence_reason, alert.silenced_by) == (None, "", None)
    assert not alerts.is_silenced(alert)
    run(database="error")
    assert len(mailoutbox) == 1
    assert "database" in mailoutbox[0].subject


@pytest.mark.django_db
def test_expired_silence_no_longer_mutes(mailoutbox):
    run(database="error")
    alert = HealthAlert.objects.get()
    alerts.silence(alert, until=timezone.now() + timedelta(hours=1), reason="", user=None)
    HealthAlert.objects.filter(pk=alert.pk).update(
        silenced_until=timezone.now() - timedelta(seconds=1)
    )
    run(database="error")
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_silence_rejects_past_or_naive_until():
    run(database="error")
    alert = HealthAlert.objects.get()
    with pytest.raises(ValueError, match="future"):
        alerts.silence(alert, until=timezone.now() - timedelta(seconds=1), reason="", user=None)
    with pytest.raises(ValueError, match="aware"):
        alerts.silence(alert, until=timezone.now().replace(tzinfo=None), reason="", user=None)


@pytest.mark.django_db
def test_open_and_recent_alerts():
    run(disk="warning", database="error", cache="error")
    run(disk="warning", database="error")  # cache pending → cleared; two fire
    run(disk="warning", database="error", provider="error")  # provider pending
    open_ = list(alerts.open_alerts())
    assert [(a.check_name, a.state) for a in open_] == [
        ("database", "firing"),
        ("disk", "firing"),
        ("provider", "pending"),
    ]
    run(provider="error")  # database and disk resolve
    assert [a.check_name for a in alerts.recent_alerts(10)] in (
        ["database", "disk"],
        ["disk", "database"],
    )
    assert len(alerts.recent_alerts(1)) == 1
    with pytest.raises(ValueError, match="limit"):
        alerts.recent_alerts(-1)


@pytest.mark.django_db
def test_unreadable_result_is_skipped(caplog):
    bad = HealthSnapshot.objects.create(
        status="error",
        duration_ms=1.0,
        results=[{"status": "error"}, CheckResult("db", Status.ERROR, "down", 1).as_dict()],
    )
    assert states(process_snapshot(bad)) == [("db", "error", None, "pending")]
    assert "unreadable result" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_share_one_open_alert():
    """A second process creating the same key waits on the partial unique index, gets
    its IntegrityError once the first commits, and updates the first's row."""
    first = snapshot(database="error")
    second = snapshot(database="error")
    holder_inserted = threading.Event()
    release_holder = threading.Event()
    errors: list[BaseException] = []
    outcome: dict[str, Any] = {}

    def holder() -> None:
        try:
            with transaction.atomic():
                process_snapshot(first)  # inserts the pending row; uncommitted
                holder_inserted.set()
                release_holder.wait(10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    def contender() -> None:
        try:
            outcome["changes"] = process_snapshot(second)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    t1 = threading.Thread(target=holder)
    t1.start()
    wait_until(holder_inserted.is_set, what="first run inserted its alert")
    t2 = threading.Thread(target=contender)
    t2.start()

    def contender_blocked() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return bool(cursor.fetchone()[0])

    wait_until(contender_blocked, what="second run waits on the unique index")
    release_holder.set()
    t1.join(10)
    t2.join(10)
    assert not errors
    alert = HealthAlert.objects.get()
    assert (alert.state, alert.count, alert.consecutive_failures) == ("firing", 2, 2)
    assert states(outcome["changes"]) == [("database", "error", "pending", "firing")]
