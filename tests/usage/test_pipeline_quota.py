"""The quota through the chat interfaces: HTTP (429 + Retry-After) and the websocket
(``chat.error`` ``quota_exceeded`` with ``retry_after``); nothing is saved for a refused
message, and a resend of an answered message is replayed, not counted."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from rest_framework.test import APIClient

from mpai.models import Message
from tests.test_consumer import collect, open_socket

URL = "/api/mpai/v1/chat/"
OFFLINE = {
    "BACKEND": "mpai.providers.offline.OfflineProvider",
    "OPTIONS": {"first_token_ms": 0, "tokens_per_second": 0, "reply": "Sure."},
}


@pytest.mark.django_db
def test_http_third_message_of_the_day_is_429_quota_exceeded(configure, user):
    configure(PROVIDER=OFFLINE)  # default plan: 2 messages a day
    api = APIClient()
    api.force_authenticate(user)
    first = api.post(URL, {"content": "one", "client_id": "q-1"}, format="json")
    assert first.status_code == 201
    assert api.post(URL, {"content": "two"}, format="json").status_code == 201
    saved = Message.objects.filter(owner=user).count()

    refused = api.post(URL, {"content": "three"}, format="json")
    assert refused.status_code == 429
    assert refused.json()["code"] == "quota_exceeded"
    assert 1 <= int(refused["Retry-After"]) <= 24 * 3600
    assert Message.objects.filter(owner=user).count() == saved  # nothing saved
    # A resend of the first message is its replay, not a new message.
    again = api.post(URL, {"content": "one", "client_id": "q-1"}, format="json")
    assert again.status_code in (200, 201)
    assert again.json()["message"] == first.json()["message"]


@pytest.mark.django_db(transaction=True)
async def test_websocket_gets_quota_exceeded_with_retry_after(configure, user):
    configure(PROVIDER=OFFLINE)
    ws = await open_socket(user)
    for content in ("one", "two"):
        await ws.send_json_to({"type": "chat.message", "conversation": None, "content": content})
        _frames, final = await collect(ws)
        assert final["type"] == "chat.completed"
    await ws.send_json_to({"type": "chat.message", "conversation": None, "content": "three"})
    _frames, final = await collect(ws)
    assert final["type"] == "chat.error"
    assert final["code"] == "quota_exceeded"
    assert 1 <= final["retry_after"] <= 24 * 3600
    count = await database_sync_to_async(Message.objects.filter(owner=user).count)()
    assert count == 4
    await ws.disconnect()
