"""``mpai.cache.database.DatabaseLayer``: Django's ``DatabaseCache``, one statement per set.

Django's database cache (``django.core.cache.backends.db.DatabaseCache``) runs, for
every ``set``: ``SELECT COUNT(*)`` of the whole table (to decide whether to cull),
then, in a transaction, a ``SELECT`` of the key and an ``INSERT`` or ``UPDATE``. With
its default ``MAX_ENTRIES`` of 300 the table also culls a third of itself whenever it
passes 300 rows, far fewer than a Redis layer in front of it holds.

:class:`DatabaseLayer` keeps the table, its schema (``manage.py createcachetable``
makes it, as for Django's class) and its row format (the value pickled with
``pickle_protocol`` and base64-encoded; ``expires`` computed as Django does, to the
second, ``datetime.max`` for no expiry), so a plain ``DatabaseCache`` reads its rows
and the other way round. It changes two things:

- ``set`` is one statement on PostgreSQL and SQLite (>= 3.24), an upsert::

      INSERT INTO t (cache_key, value, expires) VALUES (%s, %s, %s)
      ON CONFLICT (cache_key) DO UPDATE SET value = EXCLUDED.value, expires = EXCLUDED.expires

  (PostgreSQL: https://www.postgresql.org/docs/current/sql-insert.html#SQL-ON-CONFLICT;
  SQLite: https://sqlite.org/lang_upsert.html). ``set_many`` sends one multi-row
  upsert per call (per ``ROWS_PER_STATEMENT`` rows); ``add`` is the same upsert that
  only replaces an expired row (``... DO UPDATE ... WHERE expires < now``), ``touch``
  one ``UPDATE``, with Django's results. On other vendors all of them run Django's
  code unchanged.
- the table is not counted on every write: at most once every ``CULL_INTERVAL``
  seconds per process and table, before a write (as Django culls, so a write never
  culls its own rows), the layer deletes the expired rows and, if more than
  ``MAX_ENTRIES`` remain, culls as Django does (the first ``1/CULL_FREQUENCY`` of
  the rows in key order, all of them for ``CULL_FREQUENCY`` 0), deleting more if
  that is needed to come back to ``MAX_ENTRIES``. Between two culls the table may
  grow past ``MAX_ENTRIES`` by what one interval writes. A failed cull is logged
  and never fails the write.

OPTIONS (besides Django's ``CULL_FREQUENCY``, default 3):

- ``MAX_ENTRIES`` (rows, default :data:`DEFAULT_MAX_ENTRIES` = 100,000, Django's is
  300): as a layer behind Redis the table should keep what Redis keeps, so a value
  survives a Redis restart or eviction. 100,000 rows is ten times the memory layer's
  default of 10,000 entries; at a few KB a row that is a few hundred MB at most, and
  counting it once a minute costs a few ms (Django's class counts on every write,
  which is why it needs a small limit).
- ``CULL_INTERVAL`` (seconds, default :data:`DEFAULT_CULL_INTERVAL` = 60; 0 = check
  after every set): how often one process may cull one table.

Errors: a ``set``, ``set_many``, ``add`` or ``touch`` that cannot write raises the
database's error (``django.db.DatabaseError`` and subclasses). Django's class ignores
errors of its ``INSERT``/``UPDATE`` ("to be threadsafe": a concurrent write of the same
key may insert between its ``SELECT`` and its ``INSERT``); the upsert has no such race,
and an outage (its ``SELECT COUNT(*)`` raises in Django's class too) must reach the
layered cache, which counts it and forgets the key in this layer.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.db import DatabaseCache
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.utils.timezone import now as tz_now

logger = logging.getLogger("mpai.cache")

#: Rows a database layer keeps after a cull unless ``OPTIONS["MAX_ENTRIES"]`` says otherwise.
DEFAULT_MAX_ENTRIES = 100_000
#: Seconds between two culls of one table by one process (``OPTIONS["CULL_INTERVAL"]``).
DEFAULT_CULL_INTERVAL = 60.0
#: Most rows in one multi-row upsert of ``set_many`` (3 parameters a row; SQLite's
#: limit of bound parameters was 999 before 3.32).
ROWS_PER_STATEMENT = 300
#: Oldest SQLite with ``INSERT ... ON CONFLICT DO UPDATE``.
SQLITE_UPSERT = (3, 24, 0)

# When each (database alias, table, clock) may be culled next, by this process's clock.
_next_cull: dict[tuple[str, str, Hashable], float] = {}
_schedule_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _schedule_lock
    _schedule_lock = threading.Lock()  # another thread may have held it at fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _interval(options: dict[str, Any]) -> float:
    value = options.get("CULL_INTERVAL", DEFAULT_CULL_INTERVAL)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ImproperlyConfigured(
            f"DatabaseLayer OPTIONS['CULL_INTERVAL'] must be a number of seconds >= 0, "
            f"not {value!r}."
        )
    return float(value)


class DatabaseLayer(DatabaseCache):
    """Django's ``DatabaseCache`` with a one-statement ``set`` and a periodic cull.

    Args:
        table: the cache table (``LOCATION``), made by ``createcachetable``.
        params: the CACHES entry; ``OPTIONS`` may hold ``MAX_ENTRIES`` (rows, default
            :data:`DEFAULT_MAX_ENTRIES`), ``CULL_FREQUENCY`` (Django's, default 3) and
            ``CULL_INTERVAL`` (seconds, default :data:`DEFAULT_CULL_INTERVAL`).

    Raises:
        ImproperlyConfigured: for a ``CULL_INTERVAL`` that is not a number >= 0.

    ``clock`` (monotonic seconds, default ``time.monotonic``) times the culls; tests
    may replace it on an instance.
    """

    _table: str  # set by Django's BaseDatabaseCache

    def __init__(self, table: str, params: dict[str, Any]) -> None:
        super().__init__(table, params)
        options = params.get("OPTIONS") or {}
        if "max_entries" not in params and "MAX_ENTRIES" not in options:
            self._max_entries = DEFAULT_MAX_ENTRIES
        self.cull_interval = _interval(options)
        self.clock: Callable[[], float] = time.monotonic

    # -- writes --------------------------------------------------------------------

    def set(
        self,
        key: Any,
        value: Any,
        timeout: float | None = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> None:
        """Store ``value`` for ``timeout`` seconds (None = forever) in one statement.

        Raises:
            django.db.DatabaseError: when the row cannot be written.
            pickle.PicklingError: (and what ``pickle.dumps`` raises) for a value that
                cannot be pickled; nothing is written then.
        """
        key = self.make_and_validate_key(key, version=version)
        db = router.db_for_write(self.cache_model_class)
        if not self._upserts(db):
            self._base_set("set", key, value, timeout)  # type: ignore[attr-defined]
            return
        self._upsert(db, {key: self._encode(value)}, timeout)

    def add(
        self,
        key: Any,
        value: Any,
        timeout: float | None = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> bool:
        """Store ``value`` unless a live row holds ``key``, in one statement; return
        whether it was stored (an expired row is replaced, as in Django's class).

        Raises:
            django.db.DatabaseError: when the row cannot be written.
            pickle.PicklingError: for a value that cannot be pickled (nothing written).
        """
        key = self.make_and_validate_key(key, version=version)
        db = router.db_for_write(self.cache_model_class)
        if not self._upserts(db):
            return bool(self._base_set("add", key, value, timeout))  # type: ignore[attr-defined]
        connection = connections[db]
        ops = connection.ops
        table, key_col, value_col, exp_col = self._columns(db)
        encoded = self._encode(value)
        self._cull_if_due(db)
        now = tz_now().replace(microsecond=0)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} ({key_col}, {value_col}, {exp_col}) VALUES (%s, %s, %s) "
                f"ON CONFLICT ({key_col}) DO UPDATE SET {value_col} = EXCLUDED.{value_col}, "
                f"{exp_col} = EXCLUDED.{exp_col} WHERE {table}.{exp_col} < %s",
                [
                    key,
                    encoded,
                    ops.adapt_datetimefield_value(self._expires(timeout)),
                    ops.adapt_datetimefield_value(now),
                ],
            )
            return cursor.rowcount > 0

    def touch(
        self, key: Any, timeout: float | None = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """Give the row of ``key`` a new lifetime of ``timeout`` seconds in one
        statement; return whether a row was there (expired or not, as in Django's class).

        Raises:
            django.db.DatabaseError: when the row cannot be written.
        """
        key = self.make_and_validate_key(key, version=version)
        db = router.db_for_write(self.cache_model_class)
        if not self._upserts(db):
            return bool(self._base_set("touch", key, None, timeout))  # type: ignore[attr-defined]
        connection = connections[db]
        table, key_col, _, exp_col = self._columns(db)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET {exp_col} = %s WHERE {key_col} = %s",
                [connection.ops.adapt_datetimefield_value(self._expires(timeout)), key],
            )
            return cursor.rowcount > 0

    def set_many(
        self,
        data: dict[Any, Any],
        timeout: float | None = DEFAULT_TIMEOUT,
        version: int | None = None,
    ) -> list[Any]:
        """Store every item of ``data`` for ``timeout`` seconds in one statement (one
        per :data:`ROWS_PER_STATEMENT` rows). Returns ``[]`` (no key failed).

        Raises:
            django.db.DatabaseError: when the rows cannot be written.
            pickle.PicklingError: for a value that cannot be pickled (nothing written).
        """
        db = router.db_for_write(self.cache_model_class)
        if not self._upserts(db):
            return super().set_many(data, timeout, version)
        rows = {
            self.make_and_validate_key(key, version=version): value for key, value in data.items()
        }
        if rows:
            self._upsert(db, {key: self._encode(value) for key, value in rows.items()}, timeout)
        return []

    def _upserts(self, db: str) -> bool:
        connection = connections[db]
        if connection.vendor == "postgresql":
            return True
        if connection.vendor == "sqlite":
            return sqlite3.sqlite_version_info >= SQLITE_UPSERT
        return False

    def _columns(self, db: str) -> tuple[str, str, str, str]:
        """The quoted names of the table and of its key, value and expires columns."""
        quote = connections[db].ops.quote_name
        return quote(self._table), quote("cache_key"), quote("value"), quote("expires")

    def _encode(self, value: Any) -> str:
        # As Django's _base_set: the column holds a str, not bytes (Django ticket #19274).
        return base64.b64encode(pickle.dumps(value, self.pickle_protocol)).decode("latin1")

    def _expires(self, timeout: float | None) -> datetime:
        """The ``expires`` of a row stored now for ``timeout``, as Django computes it."""
        backend_timeout = self.get_backend_timeout(timeout)
        if backend_timeout is None:
            expires = datetime.max
        else:
            tz = UTC if settings.USE_TZ else None
            expires = datetime.fromtimestamp(backend_timeout, tz=tz)
        return expires.replace(microsecond=0)

    def _upsert(self, db: str, rows: dict[str, str], timeout: float | None) -> None:
        connection = connections[db]
        table, key_col, value_col, exp_col = self._columns(db)
        expires = connection.ops.adapt_datetimefield_value(self._expires(timeout))
        # Sorted, so two concurrent set_many lock their common rows in the same order.
        items = sorted(rows.items())
        self._cull_if_due(db)  # before writing, as Django: a set never culls its own rows
        with connection.cursor() as cursor:
            for start in range(0, len(items), ROWS_PER_STATEMENT):
                chunk = items[start : start + ROWS_PER_STATEMENT]
                cursor.execute(
                    f"INSERT INTO {table} ({key_col}, {value_col}, {exp_col}) VALUES "
                    + ", ".join(["(%s, %s, %s)"] * len(chunk))
                    + f" ON CONFLICT ({key_col}) DO UPDATE SET {value_col} = EXCLUDED.{value_col}"
                    f", {exp_col} = EXCLUDED.{exp_col}",
                    _flatten((key, value, expires) for key, value in chunk),
                )

    # -- culling -------------------------------------------------------------------

    def _cull(self, db: str, cursor: Any, now: datetime, num: int) -> None:
        """Called by Django's ``_base_set`` (other vendors) when the table holds more
        than ``MAX_ENTRIES`` rows: cull if due (never raises)."""
        self._cull_if_due(db)

    def _cull_if_due(self, db: str) -> None:
        """Cull the table if this process has not in the last ``CULL_INTERVAL`` s.

        Never raises: a failure is logged and the next try is an interval later.
        """
        try:
            if self._claim_cull(db):
                self._cull_table(db)
        except Exception:
            logger.warning(
                "mpai cache: culling the cache table %r failed (next try in %.0f s)",
                self._table,
                self.cull_interval,
                exc_info=True,
            )

    def _claim_cull(self, db: str) -> bool:
        slot = (db, self._table, self.clock)
        now = self.clock()
        with _schedule_lock:
            due = _next_cull.get(slot)
            if due is not None and now < due:
                return False
            _next_cull[slot] = now + self.cull_interval
            return True

    def _cull_table(self, db: str) -> tuple[int, int]:
        """Delete the expired rows, then cull past ``MAX_ENTRIES``.

        Returns:
            ``(expired rows deleted, other rows deleted)``.
        """
        connection = connections[db]
        ops = connection.ops
        table, key_col, _, exp_col = self._columns(db)
        now = tz_now().replace(microsecond=0)
        # In the caller's transaction this is a savepoint: a failed cull leaves it usable.
        with transaction.atomic(using=db), connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {table} WHERE {exp_col} < %s", [ops.adapt_datetimefield_value(now)]
            )
            expired = max(cursor.rowcount, 0)
            cursor.execute(f"SELECT COUNT(*) FROM {table}")
            num = cursor.fetchone()[0]
            if num <= self._max_entries:
                return expired, 0
            if self._cull_frequency > 0:
                cull = max(num // self._cull_frequency, num - self._max_entries)
            else:
                cull = num  # Django: CULL_FREQUENCY 0 clears the table.
            if cull >= num:
                cursor.execute(f"DELETE FROM {table}")
            else:
                cursor.execute(ops.cache_key_culling_sql() % table, [cull])
                first_kept = cursor.fetchone()
                if first_kept is None:  # the table shrank meanwhile
                    return expired, 0
                cursor.execute(f"DELETE FROM {table} WHERE {key_col} < %s", [first_kept[0]])
            culled = max(cursor.rowcount, 0)
        logger.debug(
            "mpai cache: culled %d rows (and %d expired) of the cache table %r (%d rows, "
            "MAX_ENTRIES %d)",
            culled,
            expired,
            self._table,
            num,
            self._max_entries,
        )
        return expired, culled


def _flatten(rows: Iterable[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]
