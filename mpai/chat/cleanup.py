"""History cleanup: delete chat history older than its retention period (30 days by default).

Run daily by the Celery task ``mpai.cleanup_chat_history`` and by ``python manage.py
mpai_cleanup [--dry-run] [--days N]`` (README, "The chat pipeline").

Retention
---------
Everyone keeps ``MPAI["HISTORY_RETENTION_DAYS"]`` days (30) unless
``MPAI["HISTORY_RETENTION_RULE"]`` names a callable ``(user) -> int | None`` that gives a
user another number of days (``None``: the default), e.g. by membership plan. An answer
below ``MPAI["HISTORY_RETENTION_MIN_DAYS"]`` (1) is raised to it, so no rule can make
anyone's history go sooner than that.

How it stays cheap
------------------
Without a rule (the common case) the messages go by age alone, in batches of
``MPAI["CLEANUP_BATCH_SIZE"]`` (1000): each batch finds its ids through the partial index
``mpai_msg_expiry_idx`` (``WHERE id > 0 AND created_at < cutoff ORDER BY created_at
LIMIT n``; the constant ``id > 0`` is the index's predicate, which only these queries
repeat, so a user's history can never be planned on it) and
deletes them with ``DELETE ... WHERE id IN (...)``, one short statement (its own
transaction) each; no batch scans the table.

With a rule, the rule is asked only about the users who own a message older than
``min(HISTORY_RETENTION_DAYS, HISTORY_RETENTION_MIN_DAYS)`` days (nobody else can have
anything to delete under any rule): users are read in pages of ``CLEANUP_BATCH_SIZE``,
each probed with one ``EXISTS`` on ``mpai_msg_owner_created_idx``. The users whose
retention is the default are cleaned by the age batches above, which skip the others
(``owner_id <> ALL(...)`` and a moving lower bound on ``created_at``, so rows kept for
them are never scanned twice); each other group of users with the same retention is
cleaned in batches of ``WHERE owner_id IN (<up to n users>) AND created_at < its cutoff``.
The users with their own retention are held in memory for the run (their ids).

Empty conversations then go, in batches too: ``updated_at`` older than the shortest
retention in play (the default's cutoff; with a rule, ``min(HISTORY_RETENTION_DAYS,
HISTORY_RETENTION_MIN_DAYS)`` days) through ``mpai_conv_updated_idx``, and no message,
checked with ``NOT EXISTS`` on an index of ``mpai_message.conversation_id`` (the
foreign key's, or ``mpai_msg_conv_created_idx``); the ``DELETE`` checks
``NOT EXISTS`` again, so a conversation a turn writes to meanwhile stays. A conversation
that still has a message inside its period stays, and so does that message.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.models import BooleanField, Exists, OuterRef, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from mpai.chat import leases, partitions
from mpai.conf import mpai_settings
from mpai.models import Conversation, Message

logger = logging.getLogger(__name__)

#: A reply still ``streaming`` this long after it started lost its process.
STALE_STREAMING = timedelta(hours=1)


@dataclass(frozen=True)
class CleanupResult:
    """What :func:`cleanup_chat_history` removed (or, with ``dry_run``, would remove).

    Attributes:
        messages_deleted: messages deleted (counted, with ``dry_run``).
        conversations_deleted: empty conversations deleted (counted, with ``dry_run``).
        stale_streams_closed: streaming replies with no live writer marked ``error``
            (counted, with ``dry_run``).
        batches: delete statements run (0 with ``dry_run``).
        partitions_dropped: whole monthly partitions dropped (counted, with ``dry_run``;
            always 0 on the plain table, ``mpai.chat.partitions``); their messages are
            in ``messages_deleted``.
        duration_ms: wall time of the whole run, milliseconds.
        users_with_own_retention: users the rule gave a retention other than the default.
        dry_run: True when nothing was changed.
    """

    messages_deleted: int
    conversations_deleted: int
    stale_streams_closed: int
    batches: int = 0
    partitions_dropped: int = 0
    duration_ms: float = 0.0
    users_with_own_retention: int = 0
    dry_run: bool = False


@dataclass
class _Plan:
    """The cutoffs of one run: the default's, and those of users with their own."""

    default_cutoff: datetime
    conversation_cutoff: datetime
    #: cutoff -> owner ids whose retention gives that cutoff (not the default's).
    own: dict[datetime, list[int]] = field(default_factory=dict)

    @property
    def earliest_cutoff(self) -> datetime:
        """The cutoff of the longest retention in play: older rows are nobody's."""
        return min([self.default_cutoff, *self.own])

    @property
    def excluded(self) -> list[int]:
        return sorted(pk for owners in self.own.values() for pk in owners)


def cleanup_chat_history(
    *,
    now: datetime | None = None,
    days: int | None = None,
    batch_size: int | None = None,
    dry_run: bool = False,
) -> CleanupResult:
    """Delete messages past their retention, then the conversations left empty.

    Also marks replies stuck in ``streaming`` with no live writer (their lease expired,
    ``mpai.chat.leases``, or they started over an hour ago) as ``error`` with code
    ``internal_error``, keeping their text. The strategy (batches, indexes, the rule)
    is in this module's docstring.

    Args:
        now: the current time (injectable for tests); default ``timezone.now()``.
        days: retention in days for everyone, the rule ignored; default
            ``MPAI["HISTORY_RETENTION_DAYS"]`` (30) and ``MPAI["HISTORY_RETENTION_RULE"]``.
        batch_size: rows per delete statement (and users per page asked of the rule);
            default ``MPAI["CLEANUP_BATCH_SIZE"]`` (1000).
        dry_run: count what would go, change nothing.

    Raises:
        ValueError: ``days`` or ``batch_size`` below 0 / 1.
        ImproperlyConfigured: the rule returned something that is not ``None`` or an
            ``int`` of at least 0 (the user's pk is named), or the rule cannot be imported.
    """
    started = time.perf_counter()
    now = now or timezone.now()
    size = int(batch_size if batch_size is not None else mpai_settings.CLEANUP_BATCH_SIZE)
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, not {size}")
    if days is not None and days < 0:
        raise ValueError(f"days must be at least 0, not {days}")
    plan = _plan(now, days, size)

    stale_qs = Message.objects.filter(
        Q(status=Message.Status.STREAMING, created_at__lt=now - STALE_STREAMING) | leases.orphaned()
    ).exclude(pk__in=leases.held())
    if dry_run:
        parts, _ = partitions.drop_partitions_before(plan.earliest_cutoff, dry_run=True)
        result = CleanupResult(
            messages_deleted=_count_messages(plan),
            partitions_dropped=parts,
            conversations_deleted=_count_conversations(plan),
            stale_streams_closed=stale_qs.count(),
            users_with_own_retention=len(plan.excluded),
            dry_run=True,
            duration_ms=_ms(started),
        )
        logger.info("mpai cleanup (dry run): %s", result)
        return result

    # Streaming replies with no live writer: their lease expired, or (rows of a
    # process that kept no heartbeat) they started over an hour ago.
    stale = stale_qs.update(status=Message.Status.ERROR, error_code="internal_error")
    # The monthly layout: months nobody keeps go whole, then rows as on a plain table.
    if partitions.is_partitioned():
        partitions.ensure_partitions(now=now)
    parts, messages = partitions.drop_partitions_before(plan.earliest_cutoff)
    conversations = batches = 0
    for deleted in _delete_messages(plan, size):
        messages += deleted
        batches += 1
    for deleted in _delete_empty_conversations(plan.conversation_cutoff, size):
        conversations += deleted
        batches += 1
    result = CleanupResult(
        messages_deleted=messages,
        conversations_deleted=conversations,
        stale_streams_closed=stale,
        batches=batches,
        partitions_dropped=parts,
        duration_ms=_ms(started),
        users_with_own_retention=len(plan.excluded),
    )
    logger.info("mpai cleanup: %s", result)
    return result


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


# -- the plan ---------------------------------------------------------------------------


def retention_days(user: Any, rule: Callable[[Any], Any] | None = None) -> int:
    """Return ``user``'s retention in days: the rule's answer (raised to
    ``MPAI["HISTORY_RETENTION_MIN_DAYS"]``), or ``MPAI["HISTORY_RETENTION_DAYS"]``.

    Args:
        rule: the callable to ask; default ``MPAI["HISTORY_RETENTION_RULE"]`` (None: none).

    Raises:
        ImproperlyConfigured: the rule's answer is neither None nor an int >= 0.
    """
    rule = rule if rule is not None else mpai_settings.HISTORY_RETENTION_RULE
    default = int(mpai_settings.HISTORY_RETENTION_DAYS)
    if rule is None:
        return default
    days = rule(user)
    if days is None:
        return default
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise ImproperlyConfigured(
            f'MPAI["HISTORY_RETENTION_RULE"] returned {days!r} for user {user.pk}; '
            "expected None or a number of days (int >= 0)."
        )
    return max(days, int(mpai_settings.HISTORY_RETENTION_MIN_DAYS))


def _plan(now: datetime, days: int | None, size: int) -> _Plan:
    if days is not None:
        cutoff = now - timedelta(days=days)
        return _Plan(cutoff, cutoff)
    default = int(mpai_settings.HISTORY_RETENTION_DAYS)
    rule = mpai_settings.HISTORY_RETENTION_RULE
    if rule is None:
        cutoff = now - timedelta(days=default)
        return _Plan(cutoff, cutoff)
    shortest = min(default, int(mpai_settings.HISTORY_RETENTION_MIN_DAYS))
    plan = _Plan(now - timedelta(days=default), now - timedelta(days=shortest))
    own: dict[datetime, list[int]] = defaultdict(list)
    for user in _owners_of_messages_before(now - timedelta(days=shortest), size):
        user_days = retention_days(user, rule)
        if user_days != default:
            own[now - timedelta(days=user_days)].append(user.pk)
    plan.own = dict(own)
    return plan


def _owners_of_messages_before(cutoff: datetime, size: int) -> Iterator[Any]:
    """The users owning a message older than ``cutoff``, in pages of ``size`` by pk."""
    users = get_user_model()._default_manager.filter(
        Exists(Message.objects.filter(owner=OuterRef("pk"), created_at__lt=cutoff))
    )
    last: Any = None
    while True:
        page_qs = users if last is None else users.filter(pk__gt=last)
        page = list(page_qs.order_by("pk")[:size])
        yield from page
        if len(page) < size:
            return
        last = page[-1].pk


# -- messages ---------------------------------------------------------------------------


def _expired(cutoff: datetime) -> QuerySet[Any]:
    """Messages created before ``cutoff``, through ``mpai_msg_expiry_idx``.

    The index's predicate goes into the SQL as a constant, never as a parameter: a
    generic plan of a prepared statement could not prove ``id > $1`` implies it.
    """
    table = connection.ops.quote_name(Message._meta.db_table)
    in_index = RawSQL(f"{table}.{connection.ops.quote_name('id')} > 0", (), BooleanField())
    return Message.objects.filter(in_index, created_at__lt=cutoff)


def _without_owners(qs: QuerySet[Any], owners: list[int], column: str) -> QuerySet[Any]:
    """``qs`` without the rows of ``owners`` (one array parameter on PostgreSQL)."""
    if not owners:
        return qs
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(qs.model._meta.db_table)
        sql = f"{table}.{connection.ops.quote_name(column)} <> ALL(%s)"
        return qs.filter(RawSQL(sql, (owners,), output_field=BooleanField()))
    return qs.exclude(**{f"{column}__in": owners})


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _delete_messages(plan: _Plan, size: int) -> Iterator[int]:
    """Delete the expired messages in batches; yield each batch's count."""
    excluded = plan.excluded
    expired = _expired(plan.default_cutoff)
    if not excluded:
        # Every row found is deleted: each batch starts again from the oldest.
        while True:
            ids = list(expired.order_by("created_at").values_list("pk", flat=True)[:size])
            if not ids:
                break
            yield _delete_ids(ids)
            if len(ids) < size:
                break
    floor: datetime | None = None
    while excluded:
        qs = expired
        if floor is not None:
            # Rows below the floor that are left are kept for their owners: skip them.
            qs = qs.filter(created_at__gte=floor)
        rows = list(
            _without_owners(qs, excluded, "owner_id")
            .order_by("created_at")
            .values_list("pk", "created_at")[:size]
        )
        if not rows:
            break
        yield _delete_ids([pk for pk, _ in rows])
        floor = rows[-1][1]
        if len(rows) < size:
            break
    for cutoff, owners in plan.own.items():
        for chunk in _chunks(owners, size):
            while True:
                ids = list(
                    Message.objects.filter(owner_id__in=chunk, created_at__lt=cutoff)
                    .order_by("created_at")
                    .values_list("pk", flat=True)[:size]
                )
                if not ids:
                    break
                yield _delete_ids(ids)
                if len(ids) < size:
                    break


def _delete_ids(ids: list[int]) -> int:
    """``DELETE FROM mpai_message WHERE id IN (ids)``: one statement (nothing cascades
    from a message and no signal receiver listens, so Django deletes without collecting)."""
    deleted, _ = Message.objects.filter(pk__in=ids).delete()
    return deleted


def _count_messages(plan: _Plan) -> int:
    total = _without_owners(_expired(plan.default_cutoff), plan.excluded, "owner_id").count()
    for cutoff, owners in plan.own.items():
        for chunk in _chunks(owners, 1000):
            total += Message.objects.filter(owner_id__in=chunk, created_at__lt=cutoff).count()
    return total


# -- conversations ----------------------------------------------------------------------


def _has_messages() -> Exists:
    return Exists(Message.objects.filter(conversation=OuterRef("pk")))


def _delete_empty_conversations(cutoff: datetime, size: int) -> Iterator[int]:
    """Delete conversations idle since before ``cutoff`` with no message, in batches."""
    floor: datetime | None = None
    conv = connection.ops.quote_name(Conversation._meta.db_table)
    msg = connection.ops.quote_name(Message._meta.db_table)
    while True:
        qs = Conversation.objects.filter(updated_at__lt=cutoff).filter(~_has_messages())
        if floor is not None:
            qs = qs.filter(updated_at__gte=floor)
        rows = list(qs.order_by("updated_at").values_list("pk", "updated_at")[:size])
        if not rows:
            break
        marks = ", ".join(["%s"] * len(rows))
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {conv} WHERE {conv}.id IN ({marks}) AND NOT EXISTS "
                f"(SELECT 1 FROM {msg} WHERE {msg}.conversation_id = {conv}.id)",
                [pk for pk, _ in rows],
            )
            yield max(cursor.rowcount, 0)
        floor = rows[-1][1]
        if len(rows) < size:
            break


def _count_conversations(plan: _Plan) -> int:
    """Conversations the run would leave empty (no message inside its owner's period)."""

    def left_empty(cutoff: datetime) -> Exists:
        return Exists(Message.objects.filter(conversation=OuterRef("pk"), created_at__gte=cutoff))

    idle = Conversation.objects.filter(updated_at__lt=plan.conversation_cutoff)
    total = _without_owners(
        idle.filter(~left_empty(plan.default_cutoff)), plan.excluded, "owner_id"
    ).count()
    for cutoff, owners in plan.own.items():
        for chunk in _chunks(owners, 1000):
            total += idle.filter(owner_id__in=chunk).filter(~left_empty(cutoff)).count()
    return total
