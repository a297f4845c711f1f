"""Liveness and readiness endpoints for load balancers and orchestrators.

- ``GET /api/mpai/v1/health/live/`` (:class:`LivenessView`): the process answers. It
  touches no database, cache or network and always answers 200 ``{"status": "ok"}``.
- ``GET /api/mpai/v1/health/ready/`` (:class:`ReadinessView`): the database and the
  default cache answer, each within ``MPAI["HEALTH"]["READY_TIMEOUT"]`` s (run at
  once). 200 ``{"status": "ok"}`` or 503 ``{"status": "error"}``; a staff user also
  gets ``"checks"``, the list of :meth:`CheckResult.as_dict` results. Checks with a
  warning do not make the process unready.

Both allow anonymous requests (probes carry no credentials) and are never cached
(``Cache-Control: no-store``).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import never_cache

from mpai.conf import mpai_settings
from mpai.health.results import HealthCheck, Status

__all__ = ["LivenessView", "ReadinessView", "readiness_checks"]


def readiness_checks() -> list[HealthCheck]:
    """The readiness probe's checks: a database round trip (no statistics) and a
    round trip on the default cache (through the cache itself)."""
    from mpai.health.checks import CacheCheck, DatabaseCheck

    return [DatabaseCheck(stats=False), CacheCheck(alias="default")]


def _is_staff(request: HttpRequest) -> bool:
    """Whether the request's user is active staff (False when the session or user cannot
    be read, e.g. the database is down)."""
    try:
        user = getattr(request, "user", None)
        return bool(user is not None and user.is_active and user.is_staff)
    except Exception:
        return False


@method_decorator(never_cache, name="dispatch")
class LivenessView(View):
    """``GET``: 200 ``{"status": "ok"}``, no dependency touched."""

    http_method_names = ["get", "head", "options"]

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        return JsonResponse({"status": "ok"})


@method_decorator(never_cache, name="dispatch")
class ReadinessView(View):
    """``GET``: 200 ``{"status": "ok"}`` when the database and the default cache answer,
    else 503 ``{"status": "error"}``; staff users also get ``"checks"``."""

    http_method_names = ["get", "head", "options"]

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        from mpai.health.runner import run_concurrently

        results = run_concurrently(
            readiness_checks(), timeout=float(mpai_settings.HEALTH["READY_TIMEOUT"])
        )
        ready = all(result.status is not Status.ERROR for result in results)
        body: dict[str, Any] = {"status": "ok" if ready else "error"}
        if _is_staff(request):
            body["checks"] = [result.as_dict() for result in results]
        return JsonResponse(body, status=200 if ready else 503)
