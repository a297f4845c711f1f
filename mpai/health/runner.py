"""Run the configured health checks concurrently and store the outcome.

- :func:`configured_checks`: the checks of ``MPAI["HEALTH"]["CHECKS"]`` (else
  :data:`mpai.health.checks.DEFAULT_CHECKS`), built.
- :func:`run_concurrently`: run checks at once, each bounded by a timeout; a check that
  hangs becomes an error result and its thread is left behind (a daemon thread: it
  never holds up the run nor the process's exit).
- :func:`run_checks`: the above, stored as a :class:`~mpai.health.models.HealthSnapshot`,
  old snapshots pruned, then handed to :func:`mpai.health.alerts.process_snapshot`.
- :func:`latest_snapshot`: the newest snapshot.

This module imports no Django model at import time.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from mpai.conf import mpai_settings
from mpai.health.results import CheckResult, HealthCheck, Status

if TYPE_CHECKING:
    from mpai.health.models import HealthSnapshot

logger = logging.getLogger("mpai.health")

__all__ = ["build_check", "configured_checks", "latest_snapshot", "run_checks", "run_concurrently"]


def build_check(entry: Any) -> list[HealthCheck]:
    """Build the check(s) of one ``CHECKS`` entry: an import string of a
    :class:`HealthCheck` subclass, or ``{"BACKEND": "<import string>", "OPTIONS": {...}}``.

    A check with an ``expand()`` method (:class:`mpai.health.checks.CacheCheck` without
    ``layer``) stands for the checks it returns.

    Raises:
        ImproperlyConfigured: the entry has another shape, cannot be imported, is not a
            HealthCheck subclass, or its options are refused by the class.
    """
    options: dict[str, Any] = {}
    if isinstance(entry, str):
        backend = entry
    elif isinstance(entry, dict) and isinstance(entry.get("BACKEND"), str):
        backend, options = entry["BACKEND"], entry.get("OPTIONS") or {}
        if not isinstance(options, dict):
            raise ImproperlyConfigured(
                f'MPAI["HEALTH"]["CHECKS"]: OPTIONS of {backend!r} must be a dict.'
            )
    else:
        raise ImproperlyConfigured(
            'MPAI["HEALTH"]["CHECKS"] entries are import strings or '
            f'{{"BACKEND": str, "OPTIONS": dict}}, not {entry!r}.'
        )
    try:
        cls = import_string(backend)
    except ImportError as exc:
        raise ImproperlyConfigured(f"Could not import health check {backend!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, HealthCheck)):
        raise ImproperlyConfigured(f"Health check {backend!r} is not a HealthCheck subclass.")
    try:
        check = cls(**options)
    except TypeError as exc:
        raise ImproperlyConfigured(f"Health check {backend!r}: bad OPTIONS ({exc}).") from exc
    expand = getattr(check, "expand", None)
    return list(expand()) if callable(expand) else [check]


def configured_checks() -> list[HealthCheck]:
    """The checks of ``MPAI["HEALTH"]["CHECKS"]`` (None: ``DEFAULT_CHECKS``), in order.

    Raises:
        ImproperlyConfigured: ``CHECKS`` is not a list, or an entry is bad (see
            :func:`build_check`).
    """
    from mpai.health.checks import DEFAULT_CHECKS

    entries = mpai_settings.HEALTH["CHECKS"]
    if entries is None:
        entries = DEFAULT_CHECKS
    if not isinstance(entries, list | tuple):
        raise ImproperlyConfigured('MPAI["HEALTH"]["CHECKS"] must be a list (or None).')
    checks: list[HealthCheck] = []
    for entry in entries:
        checks.extend(build_check(entry))
    return checks


def _run_in_thread(check: HealthCheck, future: Future[CheckResult]) -> None:
    from django.db import connections

    try:
        future.set_result(check.run())
    except BaseException as exc:  # run() never raises; this is the last resort
        future.set_exception(exc)
    finally:
        # The thread's own database connections (Django's are per thread).
        connections.close_all()


def _timed_out(check: HealthCheck, timeout: float) -> CheckResult:
    return CheckResult(
        name=check.name,
        status=Status.ERROR,
        message=f"timed out after {timeout:g} s",
        duration_ms=timeout * 1000,
        details={"timeout_s": timeout},
    )


def run_concurrently(
    checks: Sequence[HealthCheck], timeout: float | None = None
) -> list[CheckResult]:
    """Run ``checks`` at once, one daemon thread each; return their results in order.

    Args:
        checks: the checks.
        timeout: seconds each may take (default ``MPAI["HEALTH"]["TIMEOUT"]``); they all
            start together, so the call returns within about ``timeout`` s. A check
            still running then gets an error result ``"timed out after N s"``; its
            thread is not waited for.

    Never raises for a failing check.
    """
    if timeout is None:
        timeout = float(mpai_settings.HEALTH["TIMEOUT"])
    futures: list[Future[CheckResult]] = []
    for check in checks:
        future: Future[CheckResult] = Future()
        futures.append(future)
        try:
            threading.Thread(
                target=_run_in_thread,
                args=(check, future),
                name=f"mpai-health-{check.name}",
                daemon=True,
            ).start()
        except RuntimeError as exc:  # no thread to be had
            future.set_exception(exc)
    wait_futures(futures, timeout=timeout)
    results: list[CheckResult] = []
    for check, future in zip(checks, futures, strict=True):
        if not future.done():
            results.append(_timed_out(check, timeout))
            continue
        error = future.exception()
        if error is None:
            results.append(future.result())
        else:
            results.append(CheckResult(check.name, Status.ERROR, type(error).__name__, 0.0, {}))
    return results


def prune_snapshots() -> int:
    """Delete snapshots beyond the newest ``SNAPSHOTS_KEEP`` and those older than
    ``SNAPSHOTS_MAX_AGE`` s; return how many were deleted."""
    from django.utils import timezone

    from mpai.health.models import HealthSnapshot

    health = mpai_settings.HEALTH
    keep = max(1, int(health["SNAPSHOTS_KEEP"]))
    deleted, _ = HealthSnapshot.objects.filter(
        created_at__lt=timezone.now() - timedelta(seconds=float(health["SNAPSHOTS_MAX_AGE"]))
    ).delete()
    while True:
        surplus = list(
            HealthSnapshot.objects.order_by("-created_at", "-id").values_list("id", flat=True)[
                keep : keep + 1000
            ]
        )
        if not surplus:
            return deleted
        count, _ = HealthSnapshot.objects.filter(id__in=surplus).delete()
        deleted += count


def _process_alerts(snapshot: HealthSnapshot) -> None:
    try:
        alerts = importlib.import_module("mpai.health.alerts")
        alerts.process_snapshot(snapshot)
    except Exception:
        logger.exception("mpai health: processing the alerts of snapshot %s failed", snapshot.pk)


def run_checks(
    *, trigger: str = "schedule", checks: Sequence[HealthCheck] | None = None
) -> HealthSnapshot:
    """Run ``checks`` (default :func:`configured_checks`) concurrently, each bounded by
    ``MPAI["HEALTH"]["TIMEOUT"]`` s, and store the outcome.

    Args:
        trigger: ``"schedule"`` (the beat task), ``"manual"`` (the dashboard),
            ``"command"`` (``manage.py mpai_health``).
        checks: the checks to run instead of the configured ones.

    Returns:
        The saved :class:`~mpai.health.models.HealthSnapshot`: ``status`` the worst
        result, ``duration_ms`` the whole run (ms), ``results`` the
        :meth:`CheckResult.as_dict` of each check in order. Older snapshots are pruned
        (:func:`prune_snapshots`), then :func:`mpai.health.alerts.process_snapshot`
        runs; its failures are logged on ``mpai.health``, never raised.

    Raises:
        ImproperlyConfigured: ``MPAI["HEALTH"]["CHECKS"]`` is bad (only when ``checks``
            is None).
        django.db.DatabaseError: the snapshot could not be saved.
    """
    from mpai.health.models import HealthSnapshot

    if checks is None:
        checks = configured_checks()
    started = time.perf_counter()
    results = run_concurrently(checks)
    duration_ms = (time.perf_counter() - started) * 1000
    snapshot = HealthSnapshot.objects.create(
        status=str(Status.worst(result.status for result in results)),
        duration_ms=round(duration_ms, 3),
        results=[result.as_dict() for result in results],
        trigger=trigger,
    )
    try:
        prune_snapshots()
    except Exception:
        logger.exception("mpai health: pruning old snapshots failed")
    _process_alerts(snapshot)
    return snapshot


def latest_snapshot() -> HealthSnapshot | None:
    """The newest stored snapshot, or None."""
    from mpai.health.models import HealthSnapshot

    return HealthSnapshot.objects.order_by("-created_at", "-id").first()


def results_of(snapshot: HealthSnapshot) -> list[CheckResult]:
    """The :class:`CheckResult` objects of a stored snapshot."""
    return [CheckResult.from_dict(data) for data in snapshot.results or []]
