"""Stored health state: every check run, the alerts it raised, and the beat tasks'
heartbeats. Every process and the dashboard read the same rows (README, "System health").

Imported by :mod:`mpai.models` (app label ``mpai``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class HealthSnapshot(models.Model):
    """One run of the health checks.

    ``results`` is a list of :meth:`mpai.health.results.CheckResult.as_dict` dicts;
    ``status`` the worst of them. The runner keeps ``MPAI["HEALTH"]["SNAPSHOTS_KEEP"]``
    runs and none older than ``SNAPSHOTS_MAX_AGE`` seconds.
    """

    class Status(models.TextChoices):
        OK = "ok", "OK"
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    duration_ms = models.FloatField()
    results = models.JSONField(default=list)
    #: "schedule" (the beat task), "manual" (the dashboard's button), "command".
    trigger = models.CharField(max_length=16, default="schedule")

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "health snapshot"
        verbose_name_plural = "health snapshots"

    def __str__(self) -> str:
        return f"health {self.status} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class Health(HealthSnapshot):
    """The system-health dashboard's entry in the admin (``/admin/mpai/health/``).

    A proxy, so the page sits in the admin index under mpai and its permissions are
    Django's own: ``mpai.view_health`` (open the dashboard) and
    ``mpai.run_health_checks`` (its "Run checks now" button, silences).
    """

    class Meta:
        proxy = True
        verbose_name = "system health"
        verbose_name_plural = "system health"
        default_permissions = ("view",)
        permissions = [("run_health_checks", "Can run the health checks now and silence alerts")]


class HealthAlert(models.Model):
    """A problem seen by consecutive check runs: one row per episode, keyed by
    (check, severity).

    ``state`` moves ``pending`` (failing, fewer than ``FAILURES_TO_FIRE`` runs) →
    ``firing`` → ``resolved`` (passing ``PASSES_TO_RESOLVE`` runs); a pending alert
    whose check passes again is deleted, it never fired. At most one unresolved alert
    per key.
    """

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        FIRING = "firing", "Firing"
        RESOLVED = "resolved", "Resolved"

    class Severity(models.TextChoices):
        WARNING = "warning", "Warning"
        ERROR = "error", "Error"

    check_name = models.CharField(max_length=100)
    severity = models.CharField(max_length=16, choices=Severity.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    message = models.TextField(blank=True)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    fired_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    #: Failing runs in this episode.
    count = models.PositiveIntegerField(default=1)
    consecutive_failures = models.PositiveIntegerField(default=1)
    consecutive_passes = models.PositiveIntegerField(default=0)
    #: Last firing notice sent (None: due); resolved notice sent.
    last_notified_at = models.DateTimeField(null=True, blank=True)
    resolved_notified = models.BooleanField(default=False)
    silenced_until = models.DateTimeField(null=True, blank=True)
    silence_reason = models.CharField(max_length=500, blank=True)
    silenced_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-last_seen", "-id"]
        verbose_name = "health alert"
        verbose_name_plural = "health alerts"
        indexes = [models.Index(fields=["state", "-last_seen"], name="mpai_alert_state_seen_idx")]
        constraints = [
            models.UniqueConstraint(
                fields=["check_name", "severity"],
                condition=~Q(state="resolved"),
                name="mpai_alert_one_open_per_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.check_name} {self.severity} ({self.state})"


class TaskHeartbeat(models.Model):
    """What an mpai beat task last did: started, succeeded, failed, how long it took.

    Written by :func:`mpai.health.heartbeats.heartbeat` around each task; the
    ``scheduled_tasks`` check alerts on a task that has not succeeded within its schedule
    plus a margin (the way cron monitors catch a job that silently stopped).
    """

    task = models.CharField(max_length=200, unique=True)
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_succeeded_at = models.DateTimeField(null=True, blank=True)
    last_failed_at = models.DateTimeField(null=True, blank=True)
    last_duration_ms = models.FloatField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        verbose_name = "task heartbeat"
        verbose_name_plural = "task heartbeats"

    def __str__(self) -> str:
        return self.task
