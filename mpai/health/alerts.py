"""Alert rules: from check runs (snapshots) to alerts that fire, repeat and resolve.

Modelled on Prometheus alerting rules and Alertmanager (prometheus.io/docs/alerting:
an alert is *pending* until its condition has held long enough — ``for:`` — then
*firing*; a firing alert is re-notified every ``repeat_interval`` and a notice is
sent when it resolves, ``send_resolved``). Here "long enough" is counted in check
runs, not seconds:

- each failing result (``warning`` or ``error``) of a run is an alert keyed by
  (check name, severity); a key failing in this run creates a ``pending`` alert or
  updates the open one (``last_seen``, ``count`` + 1, ``consecutive_failures`` + 1,
  ``consecutive_passes`` = 0, ``message``); it becomes ``firing`` when
  ``consecutive_failures`` ≥ ``MPAI["HEALTH"]["FAILURES_TO_FIRE"]``;
- a key not failing in this run (its check is ``ok``, failed at the other severity, or
  was not run) counts as passing: a ``pending`` alert is deleted (it never fired), a
  ``firing`` one resolves after ``MPAI["HEALTH"]["PASSES_TO_RESOLVE"]`` passing runs;
- so a check whose severity changes is two alerts: going from ``warning`` to ``error``,
  the warning alert passes (and resolves, or is cleared when still pending) and the
  error alert starts ``pending``; going back, the other way round;
- a resolved alert is history: the key's next failure opens a new alert (episode).

At most one unresolved alert exists per key (the ``mpai_alert_one_open_per_key``
partial unique constraint). :func:`process_snapshot` runs in one transaction that locks
the open alerts (``SELECT … FOR UPDATE``), so two processes running the checks at once
take turns; one that loses the race to create a key's alert gets the constraint's
``IntegrityError`` and updates the winner's row instead.

Silences (:func:`silence`) mute an alert's email while ``silenced_until`` is in the
future; the alert still changes state, is listed, logged and signalled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Case, IntegerField, Q, QuerySet, Value, When
from django.utils import timezone

from mpai.conf import mpai_settings
from mpai.health.models import HealthAlert, HealthSnapshot
from mpai.health.results import CheckResult, Status
from mpai.health.signals import alert_state_changed

logger = logging.getLogger("mpai.health")

#: ``new_state`` of a pending alert deleted because its check passed before it fired.
CLEARED = "cleared"

Key = tuple[str, str]


@dataclass(frozen=True)
class AlertChange:
    """One state change of an alert in a check run.

    Attributes:
        alert: the alert after the change (for ``"cleared"``, the deleted row, whose
            ``pk`` is ``None``).
        old_state: ``None`` for a new alert, else ``"pending"`` or ``"firing"``.
        new_state: ``"pending"``, ``"firing"``, ``"resolved"`` or ``"cleared"``.

    Repeats of a still-firing alert are not state changes: the email's repeats are
    worked out by :func:`mpai.health.notifications.notify` from ``last_notified_at``.
    """

    alert: HealthAlert
    old_state: str | None
    new_state: str

    @property
    def fired(self) -> bool:
        """The alert started firing in this run."""
        return self.new_state == HealthAlert.State.FIRING and self.old_state != self.new_state

    @property
    def resolved(self) -> bool:
        """The alert resolved in this run."""
        return self.new_state == HealthAlert.State.RESOLVED


def _failing_keys(snapshot: HealthSnapshot) -> dict[Key, CheckResult]:
    """(check name, severity) -> result, for the snapshot's warning and error results."""
    failing: dict[Key, CheckResult] = {}
    for data in snapshot.results or []:
        try:
            result = CheckResult.from_dict(data)
        except (KeyError, TypeError, ValueError):
            logger.warning("Health snapshot %s holds an unreadable result: %r", snapshot.pk, data)
            continue
        if result.status in (Status.WARNING, Status.ERROR):
            failing[(result.name, str(result.status))] = result
    return failing


def process_snapshot(snapshot: HealthSnapshot) -> list[AlertChange]:
    """Apply one check run to the alerts, then signal, log and email the changes.

    Args:
        snapshot: a saved :class:`~mpai.health.models.HealthSnapshot`; its ``results``
            are :meth:`CheckResult.as_dict` dicts (``created_at`` is the run's time).

    Returns:
        The state changes, in key order (check name, severity). An alert that only
        failed again (still pending or still firing) is not a change.

    Raises:
        django.db.DatabaseError: the alerts could not be read or written (the
            transaction is rolled back: nothing changed, nothing was sent). Signal
            receivers' and the email's errors are logged, never raised.
    """
    from mpai.health import notifications

    changes = _apply(snapshot)
    for change in changes:
        _log_change(change)
        for receiver, response in alert_state_changed.send_robust(
            sender=HealthAlert,
            alert=change.alert,
            old_state=change.old_state,
            new_state=change.new_state,
            snapshot=snapshot,
        ):
            if isinstance(response, Exception):
                logger.error(
                    "alert_state_changed receiver %r raised",
                    receiver,
                    exc_info=(type(response), response, response.__traceback__),
                )
    try:
        notifications.notify(changes, snapshot)
    except Exception:  # notify() logs its own errors; this is a bug guard
        logger.exception("Health alert notification failed; retried on the next run")
    return changes


def _apply(snapshot: HealthSnapshot) -> list[AlertChange]:
    health = mpai_settings.HEALTH
    to_fire = max(1, int(health["FAILURES_TO_FIRE"]))
    to_resolve = max(1, int(health["PASSES_TO_RESOLVE"]))
    now = snapshot.created_at or timezone.now()
    failing = _failing_keys(snapshot)
    changes: list[AlertChange] = []
    with transaction.atomic():
        open_alerts: dict[Key, HealthAlert] = {
            (alert.check_name, alert.severity): alert
            for alert in HealthAlert.objects.select_for_update()
            .exclude(state=HealthAlert.State.RESOLVED)
            .order_by("id")
        }
        for key in sorted(set(failing) | set(open_alerts)):
            alert = open_alerts.get(key)
            result = failing.get(key)
            if result is not None:
                if alert is None:
                    created, alert = _create(key, result, now, to_fire)
                    if created:
                        changes.append(AlertChange(alert, None, alert.state))
                        continue
                old_state = alert.state
                _fail(alert, result, now, to_fire)
                if alert.state != old_state:
                    changes.append(AlertChange(alert, old_state, alert.state))
            elif alert is not None:
                change = _pass(alert, now, to_resolve)
                if change is not None:
                    changes.append(change)
    return changes


def _create(key: Key, result: CheckResult, now: datetime, to_fire: int) -> tuple[bool, HealthAlert]:
    """Create the key's alert; (False, the other process's row) when one beat us to it."""
    firing = to_fire <= 1
    alert = HealthAlert(
        check_name=key[0],
        severity=key[1],
        state=HealthAlert.State.FIRING if firing else HealthAlert.State.PENDING,
        message=result.message,
        first_seen=now,
        last_seen=now,
        fired_at=now if firing else None,
        count=1,
        consecutive_failures=1,
        consecutive_passes=0,
    )
    try:
        with transaction.atomic():  # a savepoint: the constraint's error must not abort us
            alert.save(force_insert=True)
    except IntegrityError:
        # Another process's run created it (and committed) while we waited on the index.
        winner = (
            HealthAlert.objects.select_for_update()
            .exclude(state=HealthAlert.State.RESOLVED)
            .get(check_name=key[0], severity=key[1])
        )
        return False, winner
    return True, alert


def _fail(alert: HealthAlert, result: CheckResult, now: datetime, to_fire: int) -> None:
    alert.last_seen = max(alert.last_seen, now)
    alert.message = result.message
    alert.count += 1
    alert.consecutive_failures += 1
    alert.consecutive_passes = 0
    if alert.state == HealthAlert.State.PENDING and alert.consecutive_failures >= to_fire:
        alert.state = HealthAlert.State.FIRING
        alert.fired_at = now
    alert.save(
        update_fields=[
            "last_seen",
            "message",
            "count",
            "consecutive_failures",
            "consecutive_passes",
            "state",
            "fired_at",
        ]
    )


def _pass(alert: HealthAlert, now: datetime, to_resolve: int) -> AlertChange | None:
    if alert.state == HealthAlert.State.PENDING:
        alert.delete()  # it never fired: no history to keep
        return AlertChange(alert, HealthAlert.State.PENDING, CLEARED)
    alert.consecutive_passes += 1
    alert.consecutive_failures = 0
    fields = ["consecutive_passes", "consecutive_failures"]
    change = None
    if alert.consecutive_passes >= to_resolve:
        alert.state = HealthAlert.State.RESOLVED
        alert.resolved_at = now
        fields += ["state", "resolved_at"]
        change = AlertChange(alert, HealthAlert.State.FIRING, HealthAlert.State.RESOLVED)
    alert.save(update_fields=fields)
    return change


def _log_change(change: AlertChange) -> None:
    alert = change.alert
    extra = {
        "check_name": alert.check_name,
        "severity": alert.severity,
        "old_state": change.old_state,
        "new_state": change.new_state,
    }
    if change.new_state == HealthAlert.State.FIRING:
        logger.warning(
            "Health alert firing: %s (%s) after %d failing runs: %s",
            alert.check_name,
            alert.severity,
            alert.consecutive_failures,
            alert.message,
            extra=extra,
        )
    elif change.new_state == HealthAlert.State.RESOLVED:
        logger.info(
            "Health alert resolved: %s (%s), failing %d runs since %s",
            alert.check_name,
            alert.severity,
            alert.count,
            alert.first_seen.isoformat(),
            extra=extra,
        )
    elif change.new_state == HealthAlert.State.PENDING:
        logger.info(
            "Health alert pending: %s (%s): %s",
            alert.check_name,
            alert.severity,
            alert.message,
            extra=extra,
        )
    else:
        logger.info(
            "Health alert cleared before firing: %s (%s)",
            alert.check_name,
            alert.severity,
            extra=extra,
        )


def is_silenced(alert: HealthAlert, now: datetime | None = None) -> bool:
    """Whether ``alert`` is muted at ``now`` (default: the current time)."""
    until = alert.silenced_until
    return until is not None and until > (now or timezone.now())


def silence(alert: HealthAlert, *, until: datetime, reason: str, user: Any) -> None:
    """Mute ``alert``'s email until ``until``; it is still listed, logged and signalled.

    A silence belongs to this alert (episode): once it resolves, the key's next alert
    is not muted.

    Args:
        alert: a saved alert (any state).
        until: an aware datetime in the future.
        reason: shown on the dashboard (at most 500 characters are kept).
        user: who silenced it (a user instance, or ``None``).

    Raises:
        ValueError: ``until`` is naive or not in the future.
    """
    if timezone.is_naive(until):
        raise ValueError("until must be an aware datetime")
    if until <= timezone.now():
        raise ValueError("until must be in the future")
    alert.silenced_until = until
    alert.silence_reason = (reason or "")[:500]
    alert.silenced_by = user if getattr(user, "pk", None) is not None else None
    alert.save(update_fields=["silenced_until", "silence_reason", "silenced_by"])
    logger.info(
        "Health alert silenced until %s by %s: %s (%s): %s",
        until.isoformat(),
        getattr(user, "pk", None),
        alert.check_name,
        alert.severity,
        alert.silence_reason,
    )


def unsilence(alert: HealthAlert, *, user: Any) -> None:
    """End ``alert``'s silence now (its next due notice is emailed on the next run).

    Args:
        alert: a saved alert.
        user: who ended the silence (logged only).
    """
    alert.silenced_until = None
    alert.silence_reason = ""
    alert.silenced_by = None
    alert.save(update_fields=["silenced_until", "silence_reason", "silenced_by"])
    logger.info(
        "Health alert silence ended by %s: %s (%s)",
        getattr(user, "pk", None),
        alert.check_name,
        alert.severity,
    )


def open_alerts() -> QuerySet[HealthAlert]:
    """The pending and firing alerts: firing first, errors before warnings, then the
    most recently seen first. Silenced ones included (see :func:`is_silenced`)."""
    return (
        HealthAlert.objects.exclude(state=HealthAlert.State.RESOLVED)
        .select_related("silenced_by")
        .annotate(
            _state_rank=Case(
                When(state=HealthAlert.State.FIRING, then=Value(0)),
                default=Value(1),
                output_field=IntegerField(),
            ),
            _severity_rank=Case(
                When(severity=HealthAlert.Severity.ERROR, then=Value(0)),
                default=Value(1),
                output_field=IntegerField(),
            ),
        )
        .order_by("_state_rank", "_severity_rank", "-last_seen", "-id")
    )


def recent_alerts(limit: int = 20) -> list[HealthAlert]:
    """The ``limit`` most recently resolved alerts, newest resolution first (history;
    the open ones are :func:`open_alerts`).

    Raises:
        ValueError: ``limit`` is negative.
    """
    if limit < 0:
        raise ValueError("limit must be >= 0")
    return list(
        HealthAlert.objects.filter(Q(state=HealthAlert.State.RESOLVED))
        .select_related("silenced_by")
        .order_by("-resolved_at", "-id")[:limit]
    )
