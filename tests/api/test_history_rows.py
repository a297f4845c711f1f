"""Chat-history rows built from ``.values()`` (mpai.api.serializers.chat_history_rows)
are exactly what ChatHistoryMessageSerializer gives, and the endpoint's JSON is
byte-for-byte what the serializer-based view rendered."""

from __future__ import annotations

import datetime
import json
import zoneinfo
from typing import Any

import pytest
from django.test.utils import override_settings
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from mpai.api.serializers import (
    HISTORY_ROW_VALUES,
    ChatHistoryMessageSerializer,
    chat_history_rows,
)
from mpai.chat.history import history_count, message_history
from mpai.models import Conversation, Feedback, Message
from tests.api.helpers import BASE, client_for

pytestmark = pytest.mark.django_db

URL = f"{BASE}chat-history/"


@pytest.fixture
def saved(user: Any) -> list[Message]:
    """Messages of every shape a row can have: null token counts, a model and token
    counts, feedback, tool calls, an error, a cancelled reply, odd text, microseconds
    and a whole second."""
    conversation = Conversation.objects.create(owner=user, title="t")
    other = Conversation.objects.create(owner=user, title="u")
    base = timezone.now().replace(microsecond=0) - datetime.timedelta(days=2)
    specs: list[dict[str, Any]] = [
        {"role": "user", "content": 'hi <b>&amp;</b> \u00e9\u00e8 \U0001f600 "q" \\ \n'},
        {
            "role": "assistant",
            "content": "hello",
            "model": "gpt-4o-mini",
            "prompt_tokens": 12,
            "completion_tokens": 0,
            "finish_reason": "stop",
        },
        {"role": "user", "content": "", "conversation": other},
        {
            "role": "assistant",
            "content": "partial",
            "status": Message.Status.ERROR,
            "error_code": "provider_error",
            "prompt_tokens": None,
            "completion_tokens": None,
        },
        {"role": "assistant", "content": "stopped", "status": Message.Status.CANCELLED},
        {
            "role": "assistant",
            "content": "with tools",
            "tool_calls": [{"id": "c1", "name": "lookup", "status": "ok"}],
            "prompt_tokens": 2_000_000_000,
        },
    ]
    messages = []
    for i, spec in enumerate(specs):
        spec = {"conversation": conversation, **spec}
        message = Message.objects.create(owner=user, **spec)
        when = base + datetime.timedelta(seconds=i, microseconds=0 if i % 2 else 123456)
        Message.objects.filter(pk=message.pk).update(created_at=when)
        messages.append(message)
    Feedback.objects.create(user=user, message=messages[1], rating="up", comment="good")
    return messages


def by_serializer(user: Any) -> list[dict[str, Any]]:
    queryset = message_history(user=user)
    return ChatHistoryMessageSerializer(queryset, many=True).data  # type: ignore[return-value]


def by_values(user: Any) -> list[dict[str, Any]]:
    return chat_history_rows(message_history(user=user).values(*HISTORY_ROW_VALUES))


def test_rows_equal_the_serializers_with_keys_in_its_order(user: Any, saved: list[Message]):
    expected, rows = by_serializer(user), by_values(user)
    assert len(rows) == len(saved)
    assert rows == [dict(row) for row in expected]
    for row, reference in zip(rows, expected, strict=True):
        assert list(row) == list(reference)
        assert [type(v) for v in row.values()] == [type(v) for v in reference.values()]
    nulls = next(row for row in rows if row["content"] == "partial")
    assert (nulls["prompt_tokens"], nulls["completion_tokens"]) == (None, None)
    assert nulls["status"] == "error"
    assert JSONRenderer().render(rows) == JSONRenderer().render(expected)


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata"])
@pytest.mark.parametrize("fmt", [None, "%Y-%m-%d %H:%M:%S.%f%z", "iso-8601"])
def test_the_datetime_format_follows_drfs_settings_and_the_active_time_zone(
    user: Any, saved: list[Message], zone: str, fmt: str | None
):
    framework = {"DATETIME_FORMAT": fmt} if fmt else {}
    from django.conf import settings

    with (
        override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, **framework}),
        timezone.override(zoneinfo.ZoneInfo(zone)),
    ):
        expected, rows = by_serializer(user), by_values(user)
    assert [row["created_at"] for row in rows] == [row["created_at"] for row in expected]
    if fmt is None and zone == "UTC":
        assert all(row["created_at"].endswith("Z") for row in rows)
        assert {len(row["created_at"]) for row in rows} == {20, 27}  # whole s, and µs


def page_as_before(user: Any, *, page: int, per_page: int) -> bytes:
    """The page/per_page body as the serializer-based view rendered it."""
    rows = list(message_history(user=user)[(page - 1) * per_page : page * per_page])
    body = {
        "count": history_count(user=user),
        "page": page,
        "per_page": per_page,
        "results": ChatHistoryMessageSerializer(rows, many=True).data,
    }
    return JSONRenderer().render(body)


@pytest.mark.parametrize(("page", "per_page"), [(1, 10), (1, 4), (2, 4), (3, 4)])
def test_the_endpoints_json_is_byte_for_byte_the_serializers(
    user: Any, saved: list[Message], page: int, per_page: int
):
    response = client_for(user).get(URL, {"page": page, "per_page": per_page})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.content == page_as_before(user, page=page, per_page=per_page)


def test_cursor_pages_are_the_serializers_rows_too(user: Any, saved: list[Message]):
    client = client_for(user)
    seen: list[dict[str, Any]] = []
    body = client.get(URL, {"cursor": "", "per_page": 4}).json()
    seen += body["results"]
    body = client.get(body["next"]).json()
    seen += body["results"]
    assert body["next"] is None
    expected = json.loads(JSONRenderer().render(by_serializer(user)))
    assert seen == expected
