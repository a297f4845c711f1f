"""Builders shared by the REST API tests."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework.test import APIClient

from mpai.models import Conversation, Message

BASE = "/api/mpai/v1/"


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def conversation(user: Any, title: str = "t", *, minutes_ago: float = 0) -> Conversation:
    """A conversation of ``user`` last active ``minutes_ago`` minutes ago."""
    conv = Conversation.objects.create(owner=user, title=title)
    when = timezone.now() - timedelta(minutes=minutes_ago)
    Conversation.objects.filter(pk=conv.pk).update(updated_at=when, created_at=when)
    conv.refresh_from_db()
    return conv


def messages(conv: Conversation, n: int, *, same_time: bool = False) -> list[Message]:
    """Save ``n`` messages alternating user/assistant, 1 s apart (or all at one instant)."""
    base = timezone.now() - timedelta(days=1)
    saved = []
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        msg = Message.objects.create(
            conversation=conv,
            owner=conv.owner,
            role=role,
            content=f"m{i}",
            model="" if role == "user" else "gpt-4o",
            finish_reason="" if role == "user" else "stop",
        )
        when = base if same_time else base + timedelta(seconds=i)
        Message.objects.filter(pk=msg.pk).update(created_at=when)
        saved.append(msg)
    return saved
