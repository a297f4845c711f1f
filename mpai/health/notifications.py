"""Alert email: one grouped message per check run, through Django's email framework.

Modelled on Prometheus Alertmanager's notification pipeline (prometheus.io/docs/
alerting/latest/configuration: ``group_by``, ``repeat_interval``, ``send_resolved``):
everything due in a run goes into ONE email with a "Firing" and a "Resolved" section.

What is due (read from the database, so a notice that failed to send is retried on the
next run):

- a firing alert never notified (``last_notified_at`` is ``None``), or notified more
  than ``MPAI["ALERTS"]["REPEAT_INTERVAL"]`` seconds ago (a repeat);
- with ``SEND_RESOLVED``, a resolved alert whose firing was notified
  (``last_notified_at`` set) and whose resolution was not (``resolved_notified``);

of severity ``MIN_SEVERITY`` or worse (``"error"``: errors only; ``"warning"``: both),
and not silenced (``silenced_until`` in the future). ``last_notified_at`` and
``resolved_notified`` are written only after the email was sent (or vetoed by a
``sending_alert_email`` receiver, :mod:`mpai.health.signals`).

The email goes to ``MPAI["ALERT_RECIPIENTS"]`` or, when that is ``None``, the
addresses in ``settings.ADMINS``, from ``ALERTS["FROM_EMAIL"]`` or
``settings.SERVER_EMAIL``, over ``settings.EMAIL_BACKEND`` (Django docs, "Sending
email"). ``ALERTS["EMAIL_ENABLED"] = False`` sends none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import transaction
from django.db.models import Q, QuerySet
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from mpai.conf import mpai_settings
from mpai.health.models import HealthAlert, HealthSnapshot
from mpai.health.results import Status
from mpai.health.signals import sending_alert_email

if TYPE_CHECKING:
    from mpai.health.alerts import AlertChange

logger = logging.getLogger("mpai.health")

#: Used when the admin's dashboard URL cannot be reversed (the admin not mounted yet).
DEFAULT_DASHBOARD_PATH = "/admin/mpai/health/"
#: Check names listed in the subject before "+N more".
SUBJECT_NAMES = 4


@dataclass
class DueNotices:
    """What one email would say.

    Attributes:
        firing: firing alerts never notified, oldest first.
        repeats: firing alerts notified more than ``REPEAT_INTERVAL`` s ago.
        resolved: resolved alerts whose resolution is not notified yet.
    """

    firing: list[HealthAlert] = field(default_factory=list)
    repeats: list[HealthAlert] = field(default_factory=list)
    resolved: list[HealthAlert] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.firing or self.repeats or self.resolved)

    @property
    def all_firing(self) -> list[HealthAlert]:
        return self.firing + self.repeats


def recipients() -> list[str]:
    """``MPAI["ALERT_RECIPIENTS"]`` (a list of addresses, or one address), else the
    addresses of ``settings.ADMINS`` (``(name, address)`` pairs or addresses)."""
    configured = mpai_settings.ALERT_RECIPIENTS
    if configured is None:
        configured = [
            entry[1] if isinstance(entry, list | tuple) else entry
            for entry in getattr(settings, "ADMINS", [])
        ]
    elif isinstance(configured, str):
        configured = [configured]
    return [str(address) for address in configured if address]


def site_name() -> str:
    """``ALERTS["SITE_NAME"]``, else the Sites framework's current site name when
    ``django.contrib.sites`` is installed, else ``"mpai"``."""
    name = mpai_settings.ALERTS["SITE_NAME"]
    if name:
        return str(name)
    if apps.is_installed("django.contrib.sites"):
        try:
            from django.contrib.sites.models import Site

            return Site.objects.get_current().name or "mpai"
        except Exception:  # no SITE_ID, no row, no table yet
            logger.debug("No current site for the alert email's subject", exc_info=True)
    return "mpai"


def dashboard_url() -> str:
    """``ALERTS["DASHBOARD_URL"]``, else the admin dashboard's path
    (``admin:mpai_health_changelist``, or ``/admin/mpai/health/`` when it cannot be
    reversed) prefixed with ``settings.MPAI_SITE_URL`` when that is set."""
    configured = mpai_settings.ALERTS["DASHBOARD_URL"]
    if configured:
        return str(configured)
    try:
        path = reverse("admin:mpai_health_changelist")
    except NoReverseMatch:
        path = DEFAULT_DASHBOARD_PATH
    base = getattr(settings, "MPAI_SITE_URL", None)
    return f"{str(base).rstrip('/')}{path}" if base else path


def _severities() -> list[str]:
    value = mpai_settings.ALERTS["MIN_SEVERITY"]
    if str(value).lower() not in (Status.WARNING, Status.ERROR):
        raise ImproperlyConfigured(
            f'MPAI["ALERTS"]["MIN_SEVERITY"] must be "error" or "warning", not {value!r}.'
        )
    least = Status(str(value).lower())
    return [str(s) for s in (Status.WARNING, Status.ERROR) if s.rank >= max(least.rank, 1)]


def due_alerts(now: datetime | None = None) -> QuerySet[HealthAlert]:
    """The alerts whose firing or resolved notice is due at ``now`` (see the module
    docstring), unlocked and in no order.

    Raises:
        django.core.exceptions.ImproperlyConfigured: an invalid ``MIN_SEVERITY``.
    """
    now = now or timezone.now()
    alerts_settings = mpai_settings.ALERTS
    repeat_before = now - timedelta(seconds=float(alerts_settings["REPEAT_INTERVAL"]))
    due = Q(state=HealthAlert.State.FIRING) & (
        Q(last_notified_at__isnull=True) | Q(last_notified_at__lte=repeat_before)
    )
    if alerts_settings["SEND_RESOLVED"]:
        due |= Q(
            state=HealthAlert.State.RESOLVED,
            resolved_notified=False,
            last_notified_at__isnull=False,
        )
    not_silenced = Q(silenced_until__isnull=True) | Q(silenced_until__lte=now)
    return HealthAlert.objects.filter(due, not_silenced, severity__in=_severities())


def _sorted(alerts: list[HealthAlert]) -> list[HealthAlert]:
    # Errors first, then by check name.
    return sorted(alerts, key=lambda a: (a.severity != HealthAlert.Severity.ERROR, a.check_name))


def _names(alerts: list[HealthAlert]) -> str:
    names = list(dict.fromkeys(alert.check_name for alert in alerts))
    shown = ", ".join(names[:SUBJECT_NAMES])
    if len(names) > SUBJECT_NAMES:
        shown += f", +{len(names) - SUBJECT_NAMES} more"
    return shown


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def build_subject(due: DueNotices, site: str) -> str:
    """``[site] mpai health: 2 alerts firing (database, provider), 1 resolved (cache)``
    (either part alone when the other is empty; one line)."""
    parts = []
    firing = due.all_firing
    if firing:
        parts.append(f"{_plural(len(firing), 'alert')} firing ({_names(firing)})")
    if due.resolved:
        noun = "" if firing else (" alert" if len(due.resolved) == 1 else " alerts")
        count = len(due.resolved)
        parts.append(f"{count}{noun} resolved ({_names(due.resolved)})")
    subject = f"[{site}] mpai health: {', '.join(parts)}"
    return " ".join(subject.split())  # no newlines in a header


def build_body(due: DueNotices, *, site: str, snapshot: HealthSnapshot | None) -> str:
    """The plain-text body (``mpai/health/alert_email.txt``)."""
    return render_to_string(
        "mpai/health/alert_email.txt",
        {
            "site_name": site,
            "snapshot": snapshot,
            "firing": due.firing,
            "repeats": due.repeats,
            "resolved": due.resolved,
            "firing_count": len(due.all_firing),
            "dashboard_url": dashboard_url(),
            "repeat_hours": float(mpai_settings.ALERTS["REPEAT_INTERVAL"]) / 3600,
        },
    )


def build_message(
    due: DueNotices, *, snapshot: HealthSnapshot | None, to: list[str]
) -> EmailMultiAlternatives:
    """The email for ``due`` (not sent)."""
    site = site_name()
    from_email = mpai_settings.ALERTS.get("FROM_EMAIL") or settings.SERVER_EMAIL
    return EmailMultiAlternatives(
        subject=build_subject(due, site),
        body=build_body(due, site=site, snapshot=snapshot),
        from_email=from_email,
        to=to,
    )


def _connection() -> Any:
    if getattr(settings, "EMAIL_TIMEOUT", None) is None:
        return get_connection(timeout=float(mpai_settings.ALERTS["EMAIL_TIMEOUT"]))
    return get_connection()


def _vetoed(message: EmailMultiAlternatives, due: DueNotices, snapshot: Any) -> bool:
    responses = sending_alert_email.send_robust(
        sender=HealthAlert,
        message=message,
        firing=due.all_firing,
        resolved=due.resolved,
        snapshot=snapshot,
    )
    vetoed = False
    for receiver, response in responses:
        if isinstance(response, Exception):
            logger.error(
                "sending_alert_email receiver %r raised",
                receiver,
                exc_info=(type(response), response, response.__traceback__),
            )
        elif response is False:
            logger.info("Health alert email vetoed by %r", receiver)
            vetoed = True
    return vetoed


def notify(
    changes: Sequence[AlertChange] = (), snapshot: HealthSnapshot | None = None
) -> EmailMultiAlternatives | None:
    """Email every due notice in one message (see the module docstring).

    Args:
        changes: this run's state changes (:func:`mpai.health.alerts.process_snapshot`);
            logged only: what is due is read from the database, so earlier runs'
            unsent notices go out too.
        snapshot: the run, named in the body; ``None`` leaves it out.

    Returns:
        The message sent, or ``None``: email switched off, nothing due, no recipients,
        vetoed by a ``sending_alert_email`` receiver, or the send failed (logged at
        ERROR on ``mpai.health``; the notices stay due and are retried on the next run).

    Never raises for a failed send. The due alerts stay locked (``FOR UPDATE SKIP
    LOCKED``) while the email is sent, so two processes never send the same notice;
    the connection's timeout is ``settings.EMAIL_TIMEOUT`` or, when that is ``None``,
    ``ALERTS["EMAIL_TIMEOUT"]`` s.

    Raises:
        django.db.DatabaseError: the alerts could not be read or updated.
        django.core.exceptions.ImproperlyConfigured: ``MIN_SEVERITY`` is neither
            ``"error"`` nor ``"warning"``.
    """
    alerts_settings = mpai_settings.ALERTS
    if not alerts_settings["EMAIL_ENABLED"]:
        return None
    now = timezone.now()
    with transaction.atomic():
        rows = list(due_alerts(now).select_for_update(skip_locked=True).order_by("id"))
        if not rows:
            return None
        due = DueNotices(
            firing=_sorted([a for a in rows if a.state == "firing" and not a.last_notified_at]),
            repeats=_sorted([a for a in rows if a.state == "firing" and a.last_notified_at]),
            resolved=_sorted([a for a in rows if a.state == HealthAlert.State.RESOLVED]),
        )
        to = recipients()
        if not to:
            logger.warning(
                "Health alerts are due but no one to email: set MPAI['ALERT_RECIPIENTS'] "
                "or ADMINS (%d alerts)",
                len(rows),
            )
            return None
        message = build_message(due, snapshot=snapshot, to=to)
        if _vetoed(message, due, snapshot):
            _mark_notified(due, now)
            return None
        try:
            message.connection = _connection()
            message.send(fail_silently=False)
        except Exception as exc:
            logger.error(
                "Health alert email to %s failed (%s: %s); retried on the next run",
                ", ".join(message.to),
                type(exc).__name__,
                exc,
                exc_info=True,
            )
            return None
        _mark_notified(due, now)
    logger.info(
        "Health alert email sent to %s: %s (%d changes this run)",
        ", ".join(message.to),
        message.subject,
        len(changes),
    )
    return message


def _mark_notified(due: DueNotices, now: datetime) -> None:
    firing_ids = [alert.pk for alert in due.all_firing]
    resolved_ids = [alert.pk for alert in due.resolved]
    if firing_ids:
        HealthAlert.objects.filter(pk__in=firing_ids).update(last_notified_at=now)
    if resolved_ids:
        HealthAlert.objects.filter(pk__in=resolved_ids).update(resolved_notified=True)
    for alert in due.all_firing:
        alert.last_notified_at = now
    for alert in due.resolved:
        alert.resolved_notified = True
