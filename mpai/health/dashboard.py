"""The admin's system-health dashboard (``/admin/mpai/health/``): what it shows and the
buttons it has.

:class:`mpai.admin.HealthAdmin` renders :func:`dashboard_view` as its change list, so
the admin's machinery applies: the admin site's login for anonymous users and non-staff,
``mpai.view_health`` to see the page (else 403), and :data:`RUN_PERMISSION` for every
POST (run the checks now, silence or unsilence an alert; else 403). Each POST redirects
back to the page (post/redirect/get) with a message.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.utils import timezone

from mpai.health import charts
from mpai.health.models import HealthAlert, HealthSnapshot

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

logger = logging.getLogger("mpai.health")

#: Permission of every POST of the page (``Health``'s custom permission).
RUN_PERMISSION = "mpai.run_health_checks"
#: ``?window=`` values → label; the first is the default.
WINDOWS = {"24h": "Last 24 hours", "7d": "Last 7 days"}
#: Silence durations offered → (label, length).
SILENCE_DURATIONS = {
    "1h": ("1 hour", timedelta(hours=1)),
    "4h": ("4 hours", timedelta(hours=4)),
    "24h": ("24 hours", timedelta(hours=24)),
    "7d": ("7 days", timedelta(days=7)),
}
#: Snapshots listed; recent alerts listed.
SNAPSHOTS_SHOWN = 10
RECENT_ALERTS_SHOWN = 20
#: The check whose details carry the process's resident memory (bytes), under the
#: first of :data:`MEMORY_KEYS` present.
MEMORY_CHECK = "memory"
MEMORY_KEYS = ("resident_bytes", "rss_bytes")
#: Status → (symbol, text): the badge says it in words, not by colour alone.
BADGES = {"ok": ("✓", "OK"), "warning": ("!", "Warning"), "error": ("✗", "Error")}

TEMPLATE = "admin/mpai/health/dashboard.html"


class SilenceForm(forms.Form):
    """Silence one alert: ``alert`` (its id), ``duration`` (a key of
    :data:`SILENCE_DURATIONS`) and ``reason`` (up to 500 characters)."""

    alert = forms.IntegerField(widget=forms.HiddenInput)
    duration = forms.ChoiceField(
        choices=[(key, label) for key, (label, _) in SILENCE_DURATIONS.items()], initial="4h"
    )
    reason = forms.CharField(max_length=500, widget=forms.TextInput(attrs={"size": 24}))


def badge(status: str) -> dict[str, str]:
    """``{"status", "symbol", "text"}`` of a status badge (``ok``/``warning``/``error``)."""
    symbol, text = BADGES.get(status, ("?", status.capitalize() or "Unknown"))
    return {"status": status if status in BADGES else "unknown", "symbol": symbol, "text": text}


def window_of(request: HttpRequest) -> str:
    """The ``?window=`` of the request (``24h`` or ``7d``; anything else: ``24h``)."""
    window = request.GET.get("window", "")
    return window if window in WINDOWS else next(iter(WINDOWS))


def check_rows(snapshot: HealthSnapshot | None) -> list[dict[str, Any]]:
    """One row per check of ``snapshot``: ``name``, ``badge``, ``duration_ms`` (float),
    ``message``."""
    if snapshot is None:
        return []
    return [
        {
            "name": result.get("name", "?"),
            "badge": badge(str(result.get("status", ""))),
            "duration_ms": float(result.get("duration_ms") or 0.0),
            "message": result.get("message", ""),
        }
        for result in snapshot.results or []
        if isinstance(result, dict)
    ]


def memory_samples(since: datetime) -> list[tuple[float, float]]:
    """(Unix s, resident bytes) of the snapshots since ``since`` whose ``memory`` check
    reported its resident memory (:data:`MEMORY_KEYS` of its details), oldest first."""
    samples: list[tuple[float, float]] = []
    snapshots = HealthSnapshot.objects.filter(created_at__gte=since).order_by("created_at")
    for created_at, results in snapshots.values_list("created_at", "results"):
        for result in results or []:
            if not isinstance(result, dict) or result.get("name") != MEMORY_CHECK:
                continue
            details = result.get("details") or {}
            value = next((details[key] for key in MEMORY_KEYS if key in details), None)
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                samples.append((created_at.timestamp(), float(value)))
    return samples


def chart_list(window: str, *, now: float | None = None) -> list[dict[str, Any]]:
    """The page's charts over ``window``: ``{"title", "svg"}`` dicts (``svg`` is safe
    markup), from :func:`mpai.metrics.series.series` and the snapshots' memory figures."""
    from mpai.metrics import series

    now = timezone.now().timestamp() if now is None else now
    points: list[dict[str, Any]] = [dict(point) for point in series.series(window, now=now)]
    first = float(points[0]["start"])
    last = float(points[-1]["start"] + 3600)
    since = datetime.fromtimestamp(first, tz=timezone.get_current_timezone())
    svgs = [
        charts.response_time_chart(points),
        charts.total_percentiles_chart(points),
        charts.turns_chart(points),
        charts.rate_chart(points, "error_rate", "Error rate", "errors / turns"),
        charts.rate_chart(points, "cache_hit_rate", "Cache hit rate", "cached / turns"),
        charts.memory_chart(memory_samples(since), (first, last), days=len(points) > 48),
    ]
    titles = [
        "Response time per stage",
        "Turn time percentiles",
        "Turns per hour",
        "Error rate",
        "Cache hit rate",
        "Process memory",
    ]
    return [{"title": title, "svg": svg} for title, svg in zip(titles, svgs, strict=True)]


def tool_section(*, now: float | None = None) -> dict[str, Any] | None:
    """The tools section: :func:`mpai.tools.metrics.tool_activity` of the last hour up
    to ``now`` (Unix s), or None when mpai's cache cannot be read (logged)."""
    from mpai.tools.metrics import tool_activity

    try:
        return dict(tool_activity(now=now))
    except Exception:
        logger.exception("mpai health: the tool metrics could not be read")
        return None


def alert_rows(rows: Any, now: datetime) -> list[dict[str, Any]]:
    """``{"alert", "badge", "silenced"}`` per alert; ``silenced`` is whether a silence
    is in force at ``now``."""
    from mpai.health import alerts

    return [
        {"alert": alert, "badge": badge(alert.severity), "silenced": alerts.is_silenced(alert, now)}
        for alert in rows
    ]


def context(request: HttpRequest, window: str) -> dict[str, Any]:
    """What the template shows (besides the admin's own context)."""
    from mpai.health import alerts

    now = timezone.now()
    from mpai.health import runner

    snapshot = runner.latest_snapshot()
    can_run = request.user.has_perm(RUN_PERMISSION)
    open_alerts = list(alerts.open_alerts())
    recent = list(alerts.recent_alerts(RECENT_ALERTS_SHOWN))
    return {
        "window": window,
        "time_zone": timezone.get_current_timezone_name(),
        "windows": [
            {"key": key, "label": label, "current": key == window} for key, label in WINDOWS.items()
        ],
        "snapshot": snapshot,
        "snapshot_badge": badge(snapshot.status) if snapshot else None,
        "checks": check_rows(snapshot),
        "charts": chart_list(window, now=now.timestamp()),
        "tools": tool_section(now=now.timestamp()),
        "open_alerts": alert_rows(open_alerts, now),
        "recent_alerts": alert_rows(recent, now),
        "snapshots": [
            {"snapshot": s, "badge": badge(s.status)}
            for s in HealthSnapshot.objects.all()[:SNAPSHOTS_SHOWN]
        ],
        "can_run": can_run,
        "silence_form": SilenceForm() if can_run else None,
    }


def dashboard_view(model_admin: ModelAdmin[Any], request: HttpRequest) -> HttpResponse:
    """The page: GET renders it; POST (``action`` = ``run``, ``silence`` or
    ``unsilence``) needs :data:`RUN_PERMISSION` and redirects back.

    Raises:
        PermissionDenied: no view permission, or a POST without the run permission.
    """
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    window = window_of(request)
    if request.method == "POST":
        if not request.user.has_perm(RUN_PERMISSION):
            raise PermissionDenied
        return handle_post(request, window)
    opts = model_admin.model._meta
    page = {
        **model_admin.admin_site.each_context(request),
        "opts": opts,
        "app_label": opts.app_label,
        "title": "System health",
        "subtitle": None,
        **context(request, window),
    }
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(request, TEMPLATE, page)


def handle_post(request: HttpRequest, window: str) -> HttpResponse:
    """Run the checks, or silence / unsilence an alert; redirect to the page."""
    action = request.POST.get("action")
    back = HttpResponseRedirect(f"{request.path}?window={window}")
    if action == "run":
        from mpai.health import runner

        snapshot = runner.run_checks(trigger="manual")
        messages.success(
            request,
            f"Checks run: {badge(snapshot.status)['text']} in {snapshot.duration_ms:.0f} ms.",
        )
        return back
    if action == "silence":
        from mpai.health import alerts

        form = SilenceForm(request.POST)
        if not form.is_valid():
            errors = "; ".join(
                f"{field}: {' '.join(str(problem) for problem in problems)}"
                for field, problems in form.errors.items()
            )
            messages.error(request, f"The alert was not silenced ({errors}).")
            return back
        alert = get_object_or_404(HealthAlert, pk=form.cleaned_data["alert"])
        label, length = SILENCE_DURATIONS[form.cleaned_data["duration"]]
        alerts.silence(
            alert,
            until=timezone.now() + length,
            reason=form.cleaned_data["reason"],
            user=request.user,
        )
        messages.success(
            request, f"Alert {alert.check_name} ({alert.severity}) silenced for {label}."
        )
        return back
    if action == "unsilence":
        from mpai.health import alerts

        try:
            alert_id = int(request.POST.get("alert", ""))
        except ValueError:
            return HttpResponseBadRequest("no alert")
        alert = get_object_or_404(HealthAlert, pk=alert_id)
        alerts.unsilence(alert, user=request.user)
        messages.success(request, f"Alert {alert.check_name} ({alert.severity}) unsilenced.")
        return back
    return HttpResponseBadRequest("unknown action")
