"""``POST /api/mpai/v1/chat/`` with ``Accept: text/event-stream``: the turn's websocket
frames as Server-Sent Events, read by a real SSE client (sseclient-py), under WSGI
(Django's test client) and under ASGI (the demo in a real uvicorn process)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import sseclient
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mpai.models import Message
from tests.waiting import wait_until

URL = "/api/mpai/v1/chat/"
SSE = {"HTTP_ACCEPT": "text/event-stream"}
REPLY = "Your plan renews on the first of the month."


def events_of(chunks: Any) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of an SSE body, parsed by sseclient-py."""
    return [(event.event, json.loads(event.data)) for event in sseclient.SSEClient(chunks).events()]


@pytest.fixture
def api(user, settings):
    settings.MPAI = {
        **settings.MPAI,
        "PROVIDER": {
            "BACKEND": "mpai.providers.offline.OfflineProvider",
            "OPTIONS": {"first_token_ms": 0, "tokens_per_second": 0, "reply": REPLY},
        },
    }
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.django_db(transaction=True)
def test_the_turn_streams_as_the_websocket_frames_and_is_saved(api):
    response = api.post(URL, {"content": "When do I renew?"}, format="json", **SSE)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    events = events_of(response.streaming_content)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "chat.started"
    assert kinds[-1] == "chat.completed"
    assert set(kinds[1:-1]) == {"chat.delta"}
    assert all(kind == data["type"] for kind, data in events)
    started, completed = events[0][1], events[-1][1]
    text = "".join(data["text"] for kind, data in events if kind == "chat.delta")
    assert text == REPLY
    assert completed["status"] == "complete"
    assert completed["message"] == started["message"]
    saved = Message.objects.get(pk=started["message"])
    assert (saved.content, saved.status) == (REPLY, "complete")


@pytest.mark.django_db(transaction=True)
def test_a_resend_with_its_client_id_replays_the_reply(api):
    body = {"content": "When do I renew?", "client_id": "sse-1"}
    first = events_of(api.post(URL, body, format="json", **SSE).streaming_content)
    again = events_of(api.post(URL, body, format="json", **SSE).streaming_content)
    assert again[0][1]["message"] == first[0][1]["message"]
    assert again[-1][1]["replayed"] is True
    assert "".join(d["text"] for k, d in again if k == "chat.delta") == REPLY
    assert Message.objects.filter(client_id="sse-1").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_response_never_read_still_saves_the_reply_and_frees_its_slot(api):
    from mpai.chat.capacity import stream_slots

    response = api.post(URL, {"content": "When do I renew?"}, format="json", **SSE)
    assert response.status_code == 200  # the body is never read
    message = wait_until(
        lambda: Message.objects.filter(role="assistant", status="complete").first(),
        what="the unread reply saved",
    )
    assert message.content == REPLY
    wait_until(lambda: stream_slots().stats().in_use == 0, what="the slot freed")
    response.close()


@pytest.mark.django_db
def test_a_bad_message_is_its_http_status_with_one_error_event(api):
    response = api.post(URL, {"content": "   "}, format="json", **SSE)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/event-stream")
    [(kind, data)] = events_of([response.content])
    assert kind == "chat.error"
    assert data["code"] == "invalid_message"
    assert not Message.objects.exists()


@pytest.mark.django_db
def test_a_body_drf_refuses_is_an_error_event_too(api):
    response = api.post(URL, {"no_content": 1}, format="json", **SSE)
    assert response.status_code == 400
    [(kind, data)] = events_of([response.content])
    assert kind == "chat.error"
    assert data["code"] == "invalid_message"
    assert "content" in data["detail"]


@pytest.mark.django_db
def test_rate_limited_is_429_with_retry_after(api, settings, user):
    settings.MPAI = {
        **settings.MPAI,
        "RATE_LIMIT": {"CAPACITY": 1, "REFILL_RATE": 0.01, "KEY_PREFIX": f"rl-sse-{user.pk}:"},
    }
    assert api.post(URL, {"content": "one"}, format="json", **SSE).status_code == 200
    response = api.post(URL, {"content": "two"}, format="json", **SSE)
    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    [(kind, data)] = events_of([response.content])
    assert (kind, data["code"]) == ("chat.error", "rate_limited")


@pytest.mark.django_db
def test_anonymous_gets_no_stream():
    response = APIClient().post(URL, {"content": "hi"}, format="json", **SSE)
    assert response.status_code in (401, 403)
    [(kind, data)] = events_of([response.content])
    assert (kind, data["code"]) == ("chat.error", "not_authenticated")


# -- under ASGI: the demo in uvicorn, the provider over real HTTP ------------------------

PARTS = ["Your ", "membership ", "renews ", "on ", "the ", "first ", "of ", "the ", "month."]


@pytest.mark.django_db(transaction=True)
def test_over_uvicorn_the_events_arrive_as_they_stream(e2e_server, fake_openai, user):
    fake_openai.stream_reply(PARTS)
    token = Token.objects.create(user=user)
    with requests.post(
        f"{e2e_server.http_url}{URL}",
        json={"content": "When does it renew?"},
        headers={"Authorization": f"Token {token.key}", "Accept": "text/event-stream"},
        stream=True,
        timeout=20,
    ) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        events = events_of(response.iter_content(chunk_size=None))
    assert events[0][0] == "chat.started"
    assert events[-1][0] == "chat.completed"
    assert "".join(d["text"] for k, d in events if k == "chat.delta") == "".join(PARTS)
    saved = Message.objects.get(pk=events[0][1]["message"])
    assert (saved.content, saved.status) == ("".join(PARTS), "complete")


@pytest.mark.django_db(transaction=True)
def test_a_client_that_disconnects_does_not_cancel_the_reply(e2e_server, fake_openai, user):
    fake_openai.stream_reply(PARTS, delay_s=0.05)
    token = Token.objects.create(user=user)
    response = requests.post(
        f"{e2e_server.http_url}{URL}",
        json={"content": "When does it renew?", "client_id": "sse-gone"},
        headers={"Authorization": f"Token {token.key}", "Accept": "text/event-stream"},
        stream=True,
        timeout=20,
    )
    client = sseclient.SSEClient(response.iter_content(chunk_size=None))
    first = next(client.events())
    assert first.event == "chat.started"
    message_id = json.loads(first.data)["message"]
    response.close()  # gone before the reply ends

    def saved() -> Message | None:
        message = Message.objects.get(pk=message_id)
        return message if message.status != "streaming" else None

    message = wait_until(saved, timeout=20, what="the reply saved after the disconnect")
    assert (message.status, message.content) == ("complete", "".join(PARTS))
