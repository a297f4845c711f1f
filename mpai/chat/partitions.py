"""The opt-in monthly layout of the message table on PostgreSQL: range partitions by month.

A site with a large history turns it on once, with ``python manage.py
mpai_partition_messages`` (README, "Chat history at scale"); nothing changes for one that
does not. Retention then drops whole months (``DROP TABLE`` of a partition: no dead rows,
no ``VACUUM``) instead of deleting row by row (PostgreSQL docs, "Table Partitioning",
section 5.11, and its "Partition Maintenance").

How the plain table becomes partitioned, in one transaction, without copying a row
--------------------------------------------------------------------------------------
The existing ``mpai_message`` becomes the first partition, ``mpai_message_archive``,
holding ``[MINVALUE, the start of next month)``; months after it get their own
partitions, ``mpai_message_pYYYYmMM``, created :data:`MONTHS_AHEAD` ahead by the daily
cleanup, and ``mpai_message_default`` catches anything outside them (it stays empty
while the cleanup runs). Steps, all in one transaction so a failure changes nothing:

1. a ``CHECK`` on the old table's ``created_at`` (then ``ATTACH`` need not scan it), its
   primary key on ``(id, created_at)`` (a partitioned table's key must hold the
   partition key), and the foreign key of feedback rows to messages dropped
   (PostgreSQL cannot reference a partitioned table by ``id`` alone; Django's
   ``on_delete=CASCADE`` still deletes feedback with its message, and a dropped month
   deletes its messages' feedback first);
2. the table, its indexes and constraints renamed (``…_archive``); a partitioned
   ``mpai_message`` created like it, with ids drawn from a sequence that starts past
   the largest id (a partitioned table cannot have an identity column before
   PostgreSQL 17), the same indexes under their own names and the same foreign keys;
3. the old table attached as the first partition (its equal indexes and foreign keys
   are matched, not rebuilt), and the per-user message counters' triggers moved to the
   parent;
4. uniqueness of ``(owner, client_id)`` (a resend's key): a unique index on a
   partitioned table must include the partition key, so a ``BEFORE INSERT`` trigger
   takes a transaction advisory lock on the pair and raises ``unique_violation``
   (SQLSTATE 23505, Django's ``IntegrityError``) when the pair exists, which is what
   the unique index did.

The whole switch holds an ``ACCESS EXCLUSIVE`` lock on the table: the ``CHECK``
validation and the unique index build read it once (about 2 s per million rows on
PostgreSQL 15 here, ``mpai_benchmark history``); run it in a quiet hour.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connection, transaction
from django.utils import timezone

from mpai.models import Feedback, HistoryCount, Message

logger = logging.getLogger(__name__)

#: Months of partitions kept ready after the current one.
MONTHS_AHEAD = 2

PARENT = Message._meta.db_table
ARCHIVE = f"{PARENT}_archive"
DEFAULT_PARTITION = f"{PARENT}_default"
SEQUENCE = f"{PARENT}_id_seq"
CLIENT_ID_TRIGGER = "mpai_message_client_id_unique"
_MONTHLY = re.compile(rf"^{PARENT}_p(\d{{4}})m(\d{{2}})$")
_BOUND = re.compile(r"FROM \((.+)\) TO \((.+)\)")


class NotPostgreSQL(RuntimeError):
    """The monthly layout needs PostgreSQL (the embedded default is SQLite)."""


@dataclass(frozen=True)
class Partition:
    """One partition of the message table.

    Attributes:
        name: its table name.
        lower: first ``created_at`` it holds (``None``: no lower bound, ``MINVALUE``).
        upper: first ``created_at`` past it (``None`` for the default partition).
    """

    name: str
    lower: datetime | None
    upper: datetime | None


def is_partitioned() -> bool:
    """Whether ``mpai_message`` is a partitioned table (always False off PostgreSQL)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(%s)", [PARENT])
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def month_start(moment: datetime, add: int = 0) -> datetime:
    """The first instant (UTC) of ``moment``'s month, ``add`` months later."""
    moment = moment.astimezone(UTC)
    index = moment.year * 12 + moment.month - 1 + add
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partitions() -> list[Partition]:
    """The partitions of ``mpai_message``, oldest first, the default one last.

    Raises:
        NotPostgreSQL: the database is not PostgreSQL.
    """
    _require_postgresql()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            [PARENT],
        )
        rows = cursor.fetchall()
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match is None:  # DEFAULT
            found.append(Partition(name, None, None))
            continue
        found.append(Partition(name, _bound_value(match[1]), _bound_value(match[2])))
    far_future = datetime.max.replace(tzinfo=UTC)
    far_past = datetime.min.replace(tzinfo=UTC)
    return sorted(
        found, key=lambda p: (p.upper is None, p.lower or far_past, p.upper or far_future)
    )


def _bound_value(text: str) -> datetime | None:
    if text.upper() == "MINVALUE":
        return None
    value = text.strip("'")
    value = re.sub(r"([+-]\d{2})$", r"\1:00", value)
    return datetime.fromisoformat(value)


def _require_postgresql() -> None:
    if connection.vendor != "postgresql":
        raise NotPostgreSQL(
            f"The monthly layout of {PARENT} needs PostgreSQL, not {connection.vendor}."
        )


def partition_table(*, now: datetime | None = None, months_ahead: int = MONTHS_AHEAD) -> list[str]:
    """Turn the plain ``mpai_message`` into the monthly layout (module docstring).

    Returns the partitions created (the archive first). Idempotent: on a table already
    partitioned it only creates missing months (:func:`ensure_partitions`).

    Raises:
        NotPostgreSQL: the database is not PostgreSQL.
    """
    _require_postgresql()
    now = now or timezone.now()
    if is_partitioned():
        return ensure_partitions(now=now, months_ahead=months_ahead)
    boundary = month_start(now, 1)
    q = connection.ops.quote_name
    with transaction.atomic(), connection.cursor() as cursor:
        # Deferred foreign-key checks of this transaction run now: ALTER TABLE refuses
        # a table with pending trigger events.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"LOCK TABLE {q(PARENT)} IN ACCESS EXCLUSIVE MODE")
        indexes = _plain_indexes(cursor)
        foreign_keys = _foreign_keys(cursor, PARENT)
        for name in _constraints_referencing(cursor, PARENT):
            table = Feedback._meta.db_table
            cursor.execute(f"ALTER TABLE {q(table)} DROP CONSTRAINT {q(name)}")
        cursor.execute(
            f"ALTER TABLE {q(PARENT)} ADD CONSTRAINT {q(ARCHIVE + '_bound')} "
            f"CHECK (created_at < %s)",
            [boundary],
        )
        pkey = _primary_key_name(cursor, PARENT)
        cursor.execute(f"ALTER TABLE {q(PARENT)} DROP CONSTRAINT {q(pkey)}")
        cursor.execute(
            f"ALTER TABLE {q(PARENT)} ADD CONSTRAINT {q(ARCHIVE + '_pkey')} "
            "PRIMARY KEY (id, created_at)"
        )
        cursor.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {q(PARENT)}")
        (next_id,) = cursor.fetchone()
        cursor.execute(f"ALTER TABLE {q(PARENT)} ALTER COLUMN id DROP IDENTITY IF EXISTS")
        for trigger in ("mpai_history_count_added", "mpai_history_count_removed"):
            cursor.execute(f"DROP TRIGGER IF EXISTS {q(trigger)} ON {q(PARENT)}")
        for name, _definition in indexes:
            if not name.endswith("_lookup"):
                cursor.execute(f"ALTER INDEX {q(name)} RENAME TO {q(_archive_name(name))}")
        for name, _definition in foreign_keys:
            cursor.execute(
                f"ALTER TABLE {q(PARENT)} RENAME CONSTRAINT {q(name)} TO {q(_archive_name(name))}"
            )
        cursor.execute(f"ALTER TABLE {q(PARENT)} RENAME TO {q(ARCHIVE)}")

        # The parent, complete (empty: each statement is instant), then the old table
        # attached: its equal indexes and foreign keys are matched, not rebuilt, and
        # its CHECK spares the scan of its rows.
        cursor.execute(f"CREATE SEQUENCE {q(SEQUENCE)} START WITH {int(next_id)}")
        cursor.execute(
            f"CREATE TABLE {q(PARENT)} (LIKE {q(ARCHIVE)} INCLUDING DEFAULTS) "
            "PARTITION BY RANGE (created_at)"
        )
        cursor.execute(f"ALTER TABLE {q(PARENT)} ALTER COLUMN id SET DEFAULT nextval('{SEQUENCE}')")
        cursor.execute(f"ALTER SEQUENCE {q(SEQUENCE)} OWNED BY {q(PARENT)}.id")
        cursor.execute(
            f"ALTER TABLE {q(ARCHIVE)} ALTER COLUMN id SET DEFAULT nextval('{SEQUENCE}')"
        )
        cursor.execute(
            f"ALTER TABLE {q(PARENT)} ADD CONSTRAINT {q(PARENT + '_pkey')} "
            "PRIMARY KEY (id, created_at)"
        )
        for _name, definition in indexes:
            cursor.execute(definition)
        for name, definition in foreign_keys:
            cursor.execute(f"ALTER TABLE {q(PARENT)} ADD CONSTRAINT {q(name)} {definition}")
        cursor.execute(
            f"ALTER TABLE {q(PARENT)} ATTACH PARTITION {q(ARCHIVE)} "
            "FOR VALUES FROM (MINVALUE) TO (%s)",
            [boundary],
        )
        cursor.execute(_COUNTER_TRIGGERS)
        cursor.execute(_CLIENT_ID_UNIQUENESS)
        cursor.execute(f"CREATE TABLE {q(DEFAULT_PARTITION)} PARTITION OF {q(PARENT)} DEFAULT")
        created = [ARCHIVE, DEFAULT_PARTITION]
        created[1:1] = ensure_partitions(now=now, months_ahead=months_ahead)
    logger.info("mpai: %s is partitioned by month: %s", PARENT, ", ".join(created))
    return created


def _archive_name(name: str) -> str:
    return f"{name[:55]}_archive"


def _plain_indexes(cursor: object) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of the table's indexes but its primary key and the
    ``(owner, client_id)`` unique index (the trigger of step 4 takes its job)."""
    cursor.execute(  # type: ignore[attr-defined]
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = to_regclass(%s) AND NOT i.indisprimary ORDER BY c.relname",
        [PARENT],
    )
    rows = cursor.fetchall()  # type: ignore[attr-defined]
    kept = []
    for name, definition in rows:
        if definition.startswith("CREATE UNIQUE INDEX"):
            # The (owner, client_id) key stays unique on the archive; the parent gets a
            # plain index for the trigger's lookup instead.
            definition = definition.replace("CREATE UNIQUE INDEX", "CREATE INDEX", 1)
            name_lookup = f"{name[:50]}_lookup"
            definition = definition.replace(f"INDEX {name} ", f"INDEX {name_lookup} ", 1)
            kept.append((name_lookup, definition))
            continue
        kept.append((name, definition))
    return kept


def _foreign_keys(cursor: object, table: str) -> list[tuple[str, str]]:
    cursor.execute(  # type: ignore[attr-defined]
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = to_regclass(%s) AND contype = 'f' ORDER BY conname",
        [table],
    )
    return list(cursor.fetchall())  # type: ignore[attr-defined]


def _constraints_referencing(cursor: object, table: str) -> list[str]:
    cursor.execute(  # type: ignore[attr-defined]
        "SELECT conname FROM pg_constraint WHERE confrelid = to_regclass(%s) "
        "AND contype = 'f' AND conrelid = to_regclass(%s)",
        [table, Feedback._meta.db_table],
    )
    return [row[0] for row in cursor.fetchall()]  # type: ignore[attr-defined]


def _primary_key_name(cursor: object, table: str) -> str:
    cursor.execute(  # type: ignore[attr-defined]
        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'p'",
        [table],
    )
    return str(cursor.fetchone()[0])  # type: ignore[attr-defined]


def ensure_partitions(
    *, now: datetime | None = None, months_ahead: int = MONTHS_AHEAD
) -> list[str]:
    """Create the monthly partitions missing from the latest one up to ``months_ahead``
    months after ``now``'s; return their names (``[]`` on a plain table).

    Raises:
        NotPostgreSQL: the database is not PostgreSQL.
    """
    _require_postgresql()
    if not is_partitioned():
        return []
    now = now or timezone.now()
    bounded = [p for p in partitions() if p.upper is not None]
    start = max(p.upper for p in bounded if p.upper is not None) if bounded else month_start(now)
    last = month_start(now, months_ahead + 1)
    created = []
    q = connection.ops.quote_name
    has_default = any(p.upper is None for p in partitions())
    while start < last:
        end = month_start(start, 1)
        name = f"{PARENT}_p{start.year:04d}m{start.month:02d}"
        with transaction.atomic(), connection.cursor() as cursor:
            if has_default:
                # Rows of the month already caught by the default partition move into
                # the new one first, or attaching it would fail. Statements on the
                # partitions themselves fire no trigger of the parent: the per-user
                # counters stay as they are, rightly.
                cursor.execute(f"CREATE TABLE {q(name)} (LIKE {q(PARENT)} INCLUDING DEFAULTS)")
                cursor.execute(
                    f"WITH moved AS (DELETE FROM {q(DEFAULT_PARTITION)} WHERE created_at >= %s "
                    f"AND created_at < %s RETURNING *) INSERT INTO {q(name)} SELECT * FROM moved",
                    [start, end],
                )
                cursor.execute(
                    f"ALTER TABLE {q(PARENT)} ATTACH PARTITION {q(name)} "
                    "FOR VALUES FROM (%s) TO (%s)",
                    [start, end],
                )
            else:
                cursor.execute(
                    f"CREATE TABLE {q(name)} PARTITION OF {q(PARENT)} FOR VALUES FROM (%s) TO (%s)",
                    [start, end],
                )
        created.append(name)
        start = end
    return created


def drop_partitions_before(cutoff: datetime, *, dry_run: bool = False) -> tuple[int, int]:
    """Drop every partition whose rows are all older than ``cutoff``.

    A partition goes only when its upper bound is at or before ``cutoff`` (the earliest
    cutoff of anyone's retention: nobody keeps a row of it). Before the drop, in the same
    transaction: the partition is locked against writes, the per-user counters lose its
    rows and its messages' feedback is deleted. Returns ``(partitions, messages)``
    dropped (counted, with ``dry_run``). ``(0, 0)`` on a plain table.
    """
    if not is_partitioned():
        return 0, 0
    dropped = rows = 0
    q = connection.ops.quote_name
    counts = q(HistoryCount._meta.db_table)
    feedback = q(Feedback._meta.db_table)
    for part in partitions():
        if part.upper is None or part.upper > cutoff:
            continue
        table = q(part.name)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
            cursor.execute(f"SELECT count(*) FROM {table}")
            (count,) = cursor.fetchone()
            if dry_run:
                dropped, rows = dropped + 1, rows + count
                continue
            cursor.execute(
                f"UPDATE {counts} AS c SET messages = c.messages - d.n FROM "
                f"(SELECT owner_id, count(*) AS n FROM {table} GROUP BY owner_id) AS d "
                "WHERE c.owner_id = d.owner_id"
            )
            cursor.execute(f"DELETE FROM {feedback} WHERE message_id IN (SELECT id FROM {table})")
            cursor.execute(f"DROP TABLE {table}")
        logger.info("mpai: dropped partition %s (%d messages)", part.name, count)
        dropped, rows = dropped + 1, rows + count
    return dropped, rows


_COUNTER_TRIGGERS = f"""
CREATE TRIGGER mpai_history_count_added AFTER INSERT ON {PARENT}
    REFERENCING NEW TABLE AS mpai_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpai_history_count_added();
CREATE TRIGGER mpai_history_count_removed AFTER DELETE ON {PARENT}
    REFERENCING OLD TABLE AS mpai_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mpai_history_count_removed();
"""

_CLIENT_ID_UNIQUENESS = f"""
CREATE OR REPLACE FUNCTION {CLIENT_ID_TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.client_id IS NOT NULL THEN
        -- Held to the end of the transaction: a concurrent insert of the same pair
        -- waits here, then sees this row (a new snapshot per statement).
        PERFORM pg_advisory_xact_lock(
            hashtextextended('{PARENT}.client_id:' || NEW.owner_id || ':' || NEW.client_id, 0));
        IF EXISTS (SELECT 1 FROM {PARENT}
                    WHERE owner_id = NEW.owner_id AND client_id = NEW.client_id) THEN
            RAISE unique_violation USING
                MESSAGE = 'duplicate key value violates unique constraint '
                          '"mpai_msg_owner_client_id_uniq"',
                CONSTRAINT = 'mpai_msg_owner_client_id_uniq';
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER {CLIENT_ID_TRIGGER} BEFORE INSERT ON {PARENT}
    FOR EACH ROW EXECUTE FUNCTION {CLIENT_ID_TRIGGER}();
"""
