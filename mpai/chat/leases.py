"""Stream leases: which ``streaming`` replies still have a live writer, in any process.

A reply is saved as ``streaming`` when its turn starts and gets its final status when
the turn ends. A process that dies in between (a crash, a kill, a lost database
connection) leaves the row ``streaming`` forever, and every resend of its
``client_id`` would wait for it. So each process keeps a heartbeat on the rows it is
writing: one ``UPDATE … WHERE id IN (…)`` every ``MPAI["STREAM_HEARTBEAT_SECONDS"]``
(5 s) from one daemon thread, whatever the number of streams, on a connection it
holds only for that statement. A ``streaming`` row whose ``heartbeat_at`` is older
than ``MPAI["STREAM_LEASE_SECONDS"]`` (30 s) has no writer anywhere: a waiting resend
reports it as failed instead of waiting (README, "Resends and replays").
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from django.db import close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from mpai.conf import mpai_settings
from mpai.models import Message

logger = logging.getLogger(__name__)

_held: set[int] = set()
_lock = threading.Lock()
_wake = threading.Event()
_thread: threading.Thread | None = None


def hold(message_id: int) -> None:
    """Start keeping the heartbeat of ``message_id`` (a reply this process writes)."""
    global _thread
    with _lock:
        _held.add(message_id)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_beat_forever, name="mpai-heartbeat", daemon=True)
            _thread.start()


def release(message_id: int) -> None:
    """Stop the heartbeat of ``message_id`` (its turn has ended)."""
    with _lock:
        _held.discard(message_id)


def held() -> frozenset[int]:
    """Return the ids of the replies this process is writing."""
    with _lock:
        return frozenset(_held)


def beat(now: datetime | None = None) -> int:
    """Refresh the heartbeat of every reply this process writes; return rows updated."""
    ids = held()
    if not ids:
        return 0
    return Message.objects.filter(pk__in=ids, status=Message.Status.STREAMING).update(
        heartbeat_at=now or timezone.now()
    )


def lease_expired_before(now: datetime | None = None) -> datetime:
    """Return the instant before which a heartbeat means "no live writer"."""
    return (now or timezone.now()) - timedelta(seconds=float(mpai_settings.STREAM_LEASE_SECONDS))


def orphaned() -> Q:
    """Return a filter for ``streaming`` replies that no live turn owns.

    Rows from before heartbeats existed (``heartbeat_at`` NULL) count by their
    ``created_at``.
    """
    cutoff = lease_expired_before()
    return Q(status=Message.Status.STREAMING) & (
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    )


def fail_if_orphaned(message_id: int) -> bool:
    """Mark the reply ``error`` (code ``internal_error``) if no live turn owns it.

    One conditional ``UPDATE``: a writer that is alive keeps its row. Returns whether
    the row was marked. Its text, empty or partial, is kept.
    """
    if message_id in held():
        return False
    return bool(
        Message.objects.filter(orphaned(), pk=message_id).update(
            status=Message.Status.ERROR, error_code="internal_error"
        )
    )


def _beat_forever() -> None:
    while True:
        interval = float(mpai_settings.STREAM_HEARTBEAT_SECONDS)
        _wake.wait(interval)
        _wake.clear()
        try:
            beat()
        except Exception:
            # A database outage loses heartbeats, never a reply: the turns go on.
            logger.warning("mpai stream heartbeat failed", exc_info=True)
        finally:
            close_old_connections()
            if not connection.in_atomic_block:
                connection.close()
