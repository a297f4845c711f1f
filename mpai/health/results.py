"""The shape of a health check and of its result.

Modelled on django-health-check (``health_check/backends.py``, v4): one small class per
check, a method that raises a typed error when the dependency is unwell, and a
``run()`` that times it and turns the outcome into a :class:`CheckResult`. Messages are
for the dashboard: they never carry a secret (URLs are shown without credentials, see
:func:`redact_url`) nor a traceback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit


class Status(StrEnum):
    """A check's (and a run's) status, from best to worst."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def worst(cls, statuses: Any) -> Status:
        """The worst of ``statuses`` (``OK`` for none)."""
        return max(statuses, key=lambda status: _RANK[status], default=cls.OK)


_RANK = {Status.OK: 0, Status.WARNING: 1, Status.ERROR: 2}


class HealthCheckError(Exception):
    """Raised by :meth:`HealthCheck.check`: the dependency is unwell (an error)."""

    status = Status.ERROR

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ServiceWarning(HealthCheckError):
    """The dependency answers but a figure is past its warning threshold."""

    status = Status.WARNING


class ServiceUnavailable(HealthCheckError):
    """The dependency does not answer, or a figure is past its error threshold."""

    status = Status.ERROR


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome.

    Attributes:
        name: the check's name (``HealthCheck.name``), the key of its alerts.
        status: ``ok``, ``warning`` or ``error``.
        message: one line for people (no secrets, no traceback).
        duration_ms: how long the check ran (ms), timeout included.
        details: figures safe to show to staff (JSON-serialisable: numbers, strings).
    """

    name: str
    status: Status
    message: str
    duration_ms: float
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """``{"name", "status", "message", "duration_ms", "details"}`` (JSON-ready)."""
        return {
            "name": self.name,
            "status": str(self.status),
            "message": self.message,
            "duration_ms": round(self.duration_ms, 3),
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        return cls(
            name=data["name"],
            status=Status(data["status"]),
            message=data.get("message", ""),
            duration_ms=float(data.get("duration_ms", 0.0)),
            details=dict(data.get("details") or {}),
        )


class HealthCheck:
    """Base class of a check: subclasses set ``name`` and implement :meth:`check`.

    Options come from ``MPAI["HEALTH"]["CHECKS"]`` as keyword arguments of the
    constructor; keep credentials out of ``__repr__`` (the default repr shows the class
    and ``name`` only).
    """

    #: Stable identifier (alerts are keyed by it), e.g. ``"database"``, ``"cache:redis"``.
    name: ClassVar[str] = "check"
    #: Shown on the dashboard.
    label: ClassVar[str] = "Check"

    def check(self) -> tuple[str, dict[str, Any]]:
        """Probe the dependency; return (message, details) when healthy.

        Raises:
            ServiceWarning: a figure past its warning threshold.
            ServiceUnavailable: the dependency is down or past its error threshold.
        """
        raise NotImplementedError

    def run(self) -> CheckResult:
        """Run :meth:`check`, timed; never raises (an unexpected error is ``error``)."""
        started = time.perf_counter()
        try:
            message, details = self.check()
            status = Status.OK
        except HealthCheckError as exc:
            status, message, details = exc.status, exc.message, exc.details
        except Exception as exc:  # a bug or an unexpected failure of the dependency
            status, message, details = Status.ERROR, f"{type(exc).__name__}", {}
        return CheckResult(
            name=self.name,
            status=status,
            message=message,
            duration_ms=(time.perf_counter() - started) * 1000,
            details=details,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def redact_url(url: str) -> str:
    """``url`` without user and password (``redis://:secret@host:6379/0`` →
    ``redis://host:6379/0``), for messages and details."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
