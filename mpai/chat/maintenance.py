"""Weekly table maintenance: ``VACUUM (ANALYZE)`` of mpai's tables on PostgreSQL.

Run by the Celery task ``mpai.maintain_chat_tables`` (weekly in the project's beat
schedule). The history cleanup deletes many rows a day; autovacuum normally reclaims
them, and this run makes sure the space is reusable and the planner's statistics fresh
(the cleanup and the history API rely on index scans) even where autovacuum lags.

``VACUUM`` cannot run inside a transaction, so it runs on a connection of its own in
autocommit (a copy of the alias's connection, closed afterwards), whatever the caller's
transaction state. Each table gets ``lock_timeout`` (``LOCK_TIMEOUT_MS``): a table
whose lock cannot be had in time is skipped, never waited on for long. On any other
database it does nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from django.apps import apps
from django.db import DatabaseError, connections

logger = logging.getLogger(__name__)

#: Most milliseconds one table's VACUUM waits for its lock before it is skipped.
LOCK_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class MaintenanceResult:
    """What :func:`maintain_chat_tables` did.

    Attributes:
        vendor: the database's vendor (``"postgresql"``, ``"sqlite"``, ...).
        vacuumed: the tables vacuumed and analyzed (none off PostgreSQL).
        skipped: tables that could not be vacuumed (lock timeout or error; logged).
        duration_ms: wall time, milliseconds.
    """

    vendor: str
    vacuumed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    duration_ms: float = 0.0


def mpai_tables(using: str = "default") -> list[str]:
    """Return the existing tables of mpai's models whose ``db_table`` starts with
    ``mpai_`` (managed, concrete models and their many-to-many tables), sorted."""
    names = {
        model._meta.db_table
        for model in apps.get_app_config("mpai").get_models(include_auto_created=True)
        if model._meta.managed
        and not model._meta.proxy
        and model._meta.db_table.startswith("mpai_")
    }
    existing = set(connections[using].introspection.table_names())
    return sorted(names & existing)


def maintain_chat_tables(*, using: str = "default") -> MaintenanceResult:
    """``VACUUM (ANALYZE)`` each of :func:`mpai_tables` on PostgreSQL; elsewhere a no-op.

    Args:
        using: the database alias.

    Raises:
        django.db.DatabaseError: no connection could be opened (a failing table is
            logged and listed in ``skipped`` instead).
    """
    started = time.perf_counter()
    base = connections[using]
    if base.vendor != "postgresql":
        return MaintenanceResult(vendor=base.vendor, duration_ms=_ms(started))
    vacuumed: list[str] = []
    skipped: list[str] = []
    own = base.copy()  # a connection of its own, in autocommit: VACUUM needs no transaction
    try:
        own.ensure_connection()
        own.set_autocommit(True)
        quote = own.ops.quote_name
        for table in mpai_tables(using):
            try:
                with own.cursor() as cursor:
                    cursor.execute(f"SET lock_timeout = {int(LOCK_TIMEOUT_MS)}")
                    cursor.execute(f"VACUUM (ANALYZE) {quote(table)}")
                vacuumed.append(table)
            except DatabaseError:
                logger.warning("mpai maintenance: could not vacuum %s", table, exc_info=True)
                skipped.append(table)
    finally:
        own.close()
    result = MaintenanceResult(
        vendor=base.vendor, vacuumed=vacuumed, skipped=skipped, duration_ms=_ms(started)
    )
    logger.info("mpai maintenance: %s", result)
    return result


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
