"""The usage rows' atomic upserts and sums.

Every change is one statement, ``INSERT … ON CONFLICT (…) DO UPDATE SET x = x +
EXCLUDED.x`` (PostgreSQL, SQLite), so concurrent turns in any number of processes add
up exactly and never lose an update nor fail on the unique constraint. Other databases
use an ``F()`` update, then an insert when no row matched, retried once on
``IntegrityError`` (two first turns of a day raced).

Inside a caller's transaction each upsert runs in its own savepoint, so a failure never
breaks that transaction; in autocommit mode (a chat turn's thread) it is one statement,
one round trip.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, Sum

from mpai.usage.models import QuotaRejection, UsageDay

#: Counters of :class:`UsageDay` an upsert adds to.
USAGE_COUNTERS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "estimated_requests",
    "cached_requests",
)


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over usage rows: ``requests``, tokens (int) and ``cost`` (Decimal)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        """``{"requests", "prompt_tokens", "completion_tokens", "cost"}``; cost a decimal
        string (e.g. ``"0.0125000000"``)."""
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": str(self.cost),
        }


def _on_conflict_vendor() -> bool:
    return connection.vendor in ("postgresql", "sqlite")


def _upsert(model: Any, keys: dict[str, Any], adds: dict[str, Any], sets: dict[str, Any]) -> None:
    """Insert ``keys | adds | sets``, or add ``adds`` to the row of ``keys`` and set ``sets``."""
    if _on_conflict_vendor():
        meta = model._meta
        quote = connection.ops.quote_name
        columns = {meta.get_field(name).column: value for name, value in keys.items()}
        columns.update({meta.get_field(name).column: value for name, value in adds.items()})
        columns.update({meta.get_field(name).column: value for name, value in sets.items()})
        key_columns = [quote(meta.get_field(name).column) for name in keys]
        updates = [
            f"{quote(meta.get_field(n).column)} = {quote(meta.db_table)}."
            f"{quote(meta.get_field(n).column)} + EXCLUDED.{quote(meta.get_field(n).column)}"
            for n in adds
        ] + [
            f"{quote(meta.get_field(n).column)} = EXCLUDED.{quote(meta.get_field(n).column)}"
            for n in sets
        ]
        sql = (
            f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(c) for c in columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT ({', '.join(key_columns)}) DO UPDATE SET {', '.join(updates)}"
        )
        if connection.in_atomic_block:  # a savepoint keeps the caller's transaction usable
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(sql, list(columns.values()))
        else:  # autocommit: the one statement is its own transaction, one round trip
            with connection.cursor() as cursor:
                cursor.execute(sql, list(columns.values()))
        return
    changes = {name: F(name) + value for name, value in adds.items()} | sets
    for attempt in range(2):
        try:
            with transaction.atomic():
                if model.objects.filter(**keys).update(**changes):
                    return
                model.objects.create(**keys, **adds, **sets)
                return
        except IntegrityError:
            if attempt:
                raise


def add_usage(
    *,
    user_id: int,
    day: datetime.date,
    model: str,
    plan: str = "",
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    cost: Decimal = Decimal(0),
    estimated: bool = False,
    cached: bool = False,
) -> None:
    """Add one turn to the (user, day, model) row: ``requests`` + 1, the tokens, the
    ``cost`` (Decimal, currency), ``estimated_requests``/``cached_requests`` + 1 when
    so; ``plan`` becomes the given one. Atomic across processes (module docs).

    Raises:
        django.db.DatabaseError: the database failed (the caller's transaction is intact).
    """
    _upsert(
        UsageDay,
        {"user_id": user_id, "day": day, "model": model[:100]},
        {
            "requests": 1,
            "prompt_tokens": max(0, int(prompt_tokens)),
            "completion_tokens": max(0, int(completion_tokens)),
            "cost": cost,
            "estimated_requests": int(estimated),
            "cached_requests": int(cached),
        },
        {"plan": plan[:100]},
    )


def add_rejection(*, day: datetime.date, plan: str, limit: str) -> None:
    """Count one refused quota check on ``day`` (UTC) for ``plan`` and ``limit``.

    Raises:
        django.db.DatabaseError: the database failed.
    """
    _upsert(QuotaRejection, {"day": day, "plan": plan[:100], "limit": limit[:40]}, {"count": 1}, {})


def totals(user_id: int, first: datetime.date, last: datetime.date) -> Totals:
    """Sums of the user's rows with ``first <= day <= last`` (one indexed query)."""
    sums = UsageDay.objects.filter(user_id=user_id, day__gte=first, day__lte=last).aggregate(
        requests=Sum("requests"),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
        cost=Sum("cost"),
    )
    return Totals(
        requests=int(sums["requests"] or 0),
        prompt_tokens=int(sums["prompt_tokens"] or 0),
        completion_tokens=int(sums["completion_tokens"] or 0),
        cost=sums["cost"] if sums["cost"] is not None else Decimal(0),
    )


def window_counts(
    user_id: int, day: datetime.date, month_start: datetime.date
) -> tuple[int, int, int]:
    """(requests on ``day``, tokens on ``day``, tokens from ``month_start`` to ``day``)
    of the user's rows, tokens in + out; one indexed query."""
    tokens = F("prompt_tokens") + F("completion_tokens")
    sums = UsageDay.objects.filter(user_id=user_id, day__gte=month_start, day__lte=day).aggregate(
        messages=Sum("requests", filter=Q(day=day)),
        day_tokens=Sum(tokens, filter=Q(day=day)),
        month_tokens=Sum(tokens),
    )
    return (
        int(sums["messages"] or 0),
        int(sums["day_tokens"] or 0),
        int(sums["month_tokens"] or 0),
    )
