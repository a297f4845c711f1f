"""Read queries, shaped for the indexes in ``mpai.models``."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from mpai.models import Message


def message_history(*, user: Any) -> QuerySet[Message]:
    """Return ``user``'s messages, both roles, newest first.

    Ordered by ``(created_at, id)`` descending, which the index
    ``mpai_msg_owner_created_idx`` serves (keyset-friendly).
    """
    return Message.objects.filter(owner=user).order_by("-created_at", "-id")
