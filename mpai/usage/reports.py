"""The admin's usage report: figures by day, plan, model and user over a period, its
charts and its CSV export.

The period is ``?start=YYYY-MM-DD&end=YYYY-MM-DD`` (both included; the usage rows'
days, UTC unless ``MPAI["QUOTA_TIMEZONE"]``); default the last 30 days to today (UTC),
at most :data:`MAX_DAYS` days. Each table is one aggregate query over the rows.
"""

from __future__ import annotations

import csv
import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone
from django.utils.safestring import SafeString

from mpai.health import charts
from mpai.usage.models import QuotaRejection, UsageDay
from mpai.usage.pricing import currency

#: Days shown by default, and the longest period.
DEFAULT_DAYS = 30
MAX_DAYS = 400
#: Users in the top-users table.
TOP_USERS = 20
CSV_COLUMNS = (
    "day",
    "plan",
    "model",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "currency",
    "estimated_requests",
    "cached_requests",
)
_SUMS = {
    "requests": Sum("requests"),
    "prompt_tokens": Sum("prompt_tokens"),
    "completion_tokens": Sum("completion_tokens"),
    "cost": Sum("cost"),
    "estimated_requests": Sum("estimated_requests"),
    "cached_requests": Sum("cached_requests"),
}


@dataclass(frozen=True, slots=True)
class Period:
    """Days ``start`` to ``end``, both included; ``errors`` lists rejected parameters."""

    start: datetime.date
    end: datetime.date
    errors: tuple[str, ...] = ()

    @property
    def days(self) -> list[datetime.date]:
        count = (self.end - self.start).days + 1
        return [self.start + datetime.timedelta(days=n) for n in range(count)]


def _date(value: str | None) -> datetime.date | None:
    try:
        return datetime.date.fromisoformat(value) if value else None
    except ValueError:
        return None


def period_of(params: Any, *, today: datetime.date | None = None) -> Period:
    """The :class:`Period` of GET ``params`` (``start``, ``end``); a bad date falls back
    to the default and is named in ``errors``."""
    today = today or timezone.now().astimezone(datetime.UTC).date()
    errors = [n for n in ("start", "end") if params.get(n) and _date(params.get(n)) is None]
    end = _date(params.get("end")) or today
    start = _date(params.get("start")) or end - datetime.timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        start, end = end, start
    if (end - start).days + 1 > MAX_DAYS:
        start = end - datetime.timedelta(days=MAX_DAYS - 1)
        errors.append(f"the period is limited to {MAX_DAYS} days")
    return Period(start, end, tuple(errors))


def _rows(period: Period) -> QuerySet[UsageDay]:
    return UsageDay.objects.filter(day__gte=period.start, day__lte=period.end)


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    for key in _SUMS:
        if row.get(key) is None:
            row[key] = Decimal(0) if key == "cost" else 0
    row["tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    return row


def grouped_usage(
    period: Period, *fields: str, order: tuple[str, ...] = (), limit: int | None = None
) -> list[dict[str, Any]]:
    """Sums of the period's rows grouped by ``fields`` (each row: the fields, the
    counters of :data:`_SUMS`, ``tokens``), ordered by ``order`` (default the fields),
    the first ``limit`` groups (default all)."""
    query = _rows(period).values(*fields).annotate(**_SUMS).order_by(*(order or fields))
    if limit is not None:
        query = query[:limit]
    return [_clean(dict(row)) for row in query]


def totals_of(period: Period) -> dict[str, Any]:
    """The period's sums, and ``users`` (distinct users with a turn)."""
    sums = _rows(period).aggregate(**_SUMS, users=Count("user", distinct=True))
    return _clean(dict(sums))


def daily(period: Period) -> list[dict[str, Any]]:
    """One row per day of the period (days without turns as zeros), oldest first."""
    found = {row["day"]: row for row in grouped_usage(period, "day")}
    return [found.get(day) or _clean({"day": day}) for day in period.days]


def top_users(period: Period, limit: int = TOP_USERS) -> list[dict[str, Any]]:
    """The ``limit`` users with the highest cost, then tokens: the sums plus
    ``user_id`` and ``username``."""
    rows = grouped_usage(
        period, "user_id", order=("-cost", "-prompt_tokens", "user_id"), limit=limit
    )
    user_model = get_user_model()
    names = dict(
        user_model._default_manager.filter(pk__in=[r["user_id"] for r in rows]).values_list(
            "pk", user_model.USERNAME_FIELD
        )
    )
    for row in rows:
        row["username"] = names.get(row["user_id"], f"#{row['user_id']}")
    return rows


def rejections(period: Period) -> list[dict[str, Any]]:
    """Quota rejections in the period: ``{"plan", "limit", "count"}``, most first."""
    query = (
        QuotaRejection.objects.filter(day__gte=period.start, day__lte=period.end)
        .values("plan", "limit")
        .annotate(total=Sum("count"))
        .order_by("-total", "plan", "limit")
    )
    return [{"plan": r["plan"], "limit": r["limit"], "count": r["total"]} for r in query]


def _midnight(day: datetime.date) -> float:
    return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC).timestamp()


def usage_charts(days: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"title", "svg"}`` charts of the daily rows: tokens, requests and cost per day
    (server-side SVG of :func:`mpai.health.charts.line_chart`; ``svg`` is safe markup)."""
    first = _midnight(days[0]["day"])
    last = _midnight(days[-1]["day"]) + 86400
    ticks = charts.time_ticks(first, last, days=True)
    step = max(1, len(ticks) // 8)
    ticks = ticks[::step]

    def line(label: str, key: str) -> charts.Line:
        return charts.Line(label, [(_midnight(d["day"]) + 43200, float(d[key])) for d in days])

    def chart(title: str, *lines: charts.Line) -> SafeString:
        return charts.line_chart(
            title=title, lines=lines, x_range=(first, last), x_ticks=ticks, unit="count"
        )

    unit = currency()
    return [
        {
            "title": "Tokens per day",
            "svg": chart(
                "Tokens per day",
                line("input", "prompt_tokens"),
                line("output", "completion_tokens"),
            ),
        },
        {
            "title": "Requests per day",
            "svg": chart(
                "Requests per day", line("requests", "requests"), line("cached", "cached_requests")
            ),
        },
        {
            "title": f"Cost per day ({unit})",
            "svg": chart(f"Cost per day ({unit})", line(unit, "cost")),
        },
    ]


def _named(rows: list[dict[str, Any]], key: str, blank: str = "") -> list[dict[str, Any]]:
    for row in rows:
        value = row[key]
        row["name"] = value.isoformat() if isinstance(value, datetime.date) else value or blank
    return rows


def usage_report(period: Period) -> dict[str, Any]:
    """Everything the report page shows: ``totals``, ``days``, ``plans``, ``models``,
    ``users`` (table rows with a ``name``), ``rejections``, ``rejected`` (their sum),
    ``charts``, ``currency``, ``estimated`` (whether any turn was estimated)."""
    days = daily(period)
    refused = rejections(period)
    return {
        "totals": totals_of(period),
        "days": _named([dict(d) for d in reversed(days)], "day"),
        "plans": _named(grouped_usage(period, "plan", order=("-cost", "plan")), "plan", "(none)"),
        "models": _named(grouped_usage(period, "model", order=("-cost", "model")), "model", "?"),
        "users": _named(top_users(period), "username"),
        "rejections": refused,
        "rejected": sum(r["count"] for r in refused),
        "charts": usage_charts(days),
        "currency": currency(),
        "estimated": _rows(period).filter(~Q(estimated_requests=0)).exists(),
    }


class _Echo:
    """A file-like object whose ``write`` returns what it is given (csv to a stream)."""

    def write(self, value: str) -> str:
        return value


def csv_lines(period: Period) -> Iterator[str]:
    """The CSV export, one line at a time: a header (:data:`CSV_COLUMNS`), then one line
    per (day, plan, model) of the period, oldest first; cost a decimal string."""
    writer = csv.writer(_Echo())
    unit = currency()
    yield writer.writerow(CSV_COLUMNS)
    query = (
        _rows(period)
        .values("day", "plan", "model")
        .annotate(**_SUMS)
        .order_by("day", "plan", "model")
    )
    for row in query.iterator(chunk_size=500):
        yield writer.writerow(
            [
                row["day"].isoformat(),
                row["plan"],
                row["model"],
                row["requests"],
                row["prompt_tokens"],
                row["completion_tokens"],
                row["cost"],
                unit,
                row["estimated_requests"],
                row["cached_requests"],
            ]
        )
