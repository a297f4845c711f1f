"""Export of a user's own chat history as JSON Lines (README, "The chat pipeline").

One line per message, oldest first, each a JSON object (UTF-8, no line breaks inside)::

    {"conversation_id": 12, "conversation_title": "Renewing my plan", "message_id": 345,
     "role": "user" | "assistant", "content": "...", "created_at": "2026-12-03T14:50:00+00:00",
     "model": "offline-1" | "", "status": "complete" | "streaming" | "error" | "cancelled"}

``created_at`` is ISO 8601 with its UTC offset. The rows are read in keyset pages of
``MPAI["EXPORT_CHUNK_SIZE"]`` (500) through the index ``mpai_msg_owner_created_idx``
(``WHERE owner_id = ? AND (created_at, id) > (?, ?) ORDER BY created_at, id LIMIT n``):
nothing is built in memory, and no cursor or transaction stays open between pages, so
a slow download holds no database connection and an ASGI server may read each page on
any thread (:func:`aiter_export_lines`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import Q

from mpai.conf import mpai_settings
from mpai.models import Message

#: The media type of the export (JSON Lines, also known as NDJSON).
MEDIA_TYPE = "application/x-ndjson"

_FIELDS = (
    "pk",
    "conversation_id",
    "conversation__title",
    "role",
    "content",
    "created_at",
    "model",
    "status",
)

_Cursor = tuple[datetime, int] | None


def _chunk_size(chunk_size: int | None) -> int:
    size = int(chunk_size if chunk_size is not None else mpai_settings.EXPORT_CHUNK_SIZE)
    if size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {size}")
    return size


def export_page(user: Any, *, after: _Cursor, size: int) -> tuple[list[bytes], _Cursor]:
    """Return up to ``size`` lines of ``user``'s messages after ``after`` (a
    ``(created_at, id)`` cursor; None: from the first), and the cursor of the last one
    (None when there are no more pages).

    Each line is the UTF-8 JSON of one message (module docstring) and ends with ``\\n``.
    """
    qs = Message.objects.filter(owner=user)
    if after is not None:
        created_at, pk = after
        qs = qs.filter(Q(created_at__gt=created_at) | Q(created_at=created_at, pk__gt=pk))
    rows = list(qs.order_by("created_at", "pk").values_list(*_FIELDS)[:size])
    lines = [
        _line(
            {
                "conversation_id": conversation_id,
                "conversation_title": title,
                "message_id": pk,
                "role": role,
                "content": content,
                "created_at": created_at.isoformat(),
                "model": model,
                "status": status,
            }
        )
        for pk, conversation_id, title, role, content, created_at, model, status in rows
    ]
    cursor = (rows[-1][5], rows[-1][0]) if len(rows) == size else None
    return lines, cursor


def _line(row: dict[str, Any]) -> bytes:
    """One JSON line in UTF-8 (a lone surrogate, which UTF-8 cannot carry, escaped)."""
    try:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(row) + "\n").encode("ascii")


def iter_export_lines(user: Any, *, chunk_size: int | None = None) -> Iterator[bytes]:
    """Yield ``user``'s messages as JSON Lines (bytes, one message each), oldest first.

    Args:
        chunk_size: rows per query; default ``MPAI["EXPORT_CHUNK_SIZE"]`` (500).

    Raises:
        ValueError: ``chunk_size`` below 1 (at once, before any query).
    """
    size = _chunk_size(chunk_size)
    return _lines(user, size)


def _lines(user: Any, size: int) -> Iterator[bytes]:
    after: _Cursor = None
    while True:
        lines, after = export_page(user, after=after, size=size)
        yield from lines
        if after is None:
            return


async def aiter_export_lines(user: Any, *, chunk_size: int | None = None) -> AsyncIterator[bytes]:
    """:func:`iter_export_lines` for an ASGI server: each page is read on a worker
    thread (``sync_to_async``), the event loop never blocks on the database.

    Raises:
        ValueError: ``chunk_size`` below 1 (on the first iteration).
    """
    size = _chunk_size(chunk_size)
    after: _Cursor = None
    while True:
        lines, after = await sync_to_async(export_page)(user, after=after, size=size)
        for line in lines:
            yield line
        if after is None:
            return
