"""Bad input gets a clear error (issue 8): nested or oversized JSON on the websocket and
on ``POST /api/mpai/v1/chat/``, and refused handshakes that are not errors.
"""

from __future__ import annotations

import json
import logging

import pytest
import requests
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.db import SessionStore
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from mpai.models import Message
from mpai.routing import websocket_urlpatterns
from tests.test_consumer import collect

URL = "/api/mpai/v1/chat/"

OFFLINE = {
    "BACKEND": "mpai.providers.offline.OfflineProvider",
    "OPTIONS": {"first_token_ms": 0, "tokens_per_second": 0, "reply": "Sure thing."},
}


def nested(depth: int) -> str:
    """A chat.message frame with an extra field ``depth`` lists deep."""
    return '{"type": "chat.message", "content": "hi", "extra": ' + "[" * depth + "]" * depth + "}"


@pytest.fixture
def offline(settings):
    settings.MPAI = {**settings.MPAI, "PROVIDER": OFFLINE}


@pytest.fixture
def api(user, offline):
    client = APIClient()
    client.force_authenticate(user)
    return client


# --- websocket ---------------------------------------------------------------------


async def open_socket(user) -> WebsocketCommunicator:
    """A connected socket with the scope AuthMiddlewareStack gives a signed-in user."""

    def sign_in() -> str:
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    key = await database_sync_to_async(sign_in)()
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/mpai/chat/")
    communicator.scope["user"] = user
    communicator.scope["session"] = SessionStore(session_key=key)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def assert_still_answers(ws: WebsocketCommunicator) -> None:
    await ws.send_json_to({"type": "chat.message", "conversation": None, "content": "hi"})
    _, final = await collect(ws)
    assert final["type"] == "chat.completed", final


@pytest.mark.django_db(transaction=True)
async def test_a_frame_nested_thousands_deep_is_invalid_json_and_the_socket_stays_open(
    offline, user
):
    ws = await open_socket(user)
    await ws.send_to(text_data=nested(5000))
    frame = await ws.receive_json_from(timeout=5)
    assert frame["type"] == "chat.error"
    assert frame["code"] == "invalid_json"
    assert "nested" in frame["detail"]
    await assert_still_answers(ws)
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_frame_one_level_past_max_json_depth_is_invalid_json(offline, user, settings):
    settings.MPAI = {**settings.MPAI, "MAX_JSON_DEPTH": 4}
    ws = await open_socket(user)
    await ws.send_to(text_data=nested(3))  # the frame object + 3 lists = depth 4: accepted
    frame = await ws.receive_json_from(timeout=5)
    assert frame["type"] == "chat.started"
    await collect(ws)
    await ws.send_to(text_data=nested(4))
    frame = await ws.receive_json_from(timeout=5)
    assert frame["code"] == "invalid_json"
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_frame_over_max_frame_bytes_is_invalid_json_and_saves_nothing(
    offline, user, settings
):
    settings.MPAI = {**settings.MPAI, "MAX_FRAME_BYTES": 1000}
    ws = await open_socket(user)
    # 300 four-byte characters: 300 characters, 1,200 bytes of UTF-8.
    await ws.send_json_to({"type": "chat.message", "content": "\U0001f600" * 300})
    frame = await ws.receive_json_from(timeout=5)
    assert frame["type"] == "chat.error"
    assert frame["code"] == "invalid_json"
    assert "1000 bytes" in frame["detail"]
    assert await Message.objects.acount() == 0
    await assert_still_answers(ws)
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_binary_frame_is_invalid_json(offline, user):
    ws = await open_socket(user)
    await ws.send_to(bytes_data=b'{"type": "chat.message", "content": "hi"}')
    frame = await ws.receive_json_from(timeout=5)
    assert frame["code"] == "invalid_json"
    await assert_still_answers(ws)
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_refused_handshake_logs_no_error(offline, caplog):
    caplog.set_level(logging.DEBUG)
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/mpai/chat/")
    communicator.scope["user"] = AnonymousUser()
    connected, _ = await communicator.connect()
    assert not connected
    # The server reports the refused client gone, as uvicorn and daphne do.
    await communicator.disconnect()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- HTTP --------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_body_nested_thousands_deep_is_a_400_invalid_json(api):
    response = api.post(URL, nested(5000), content_type="application/json")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == "invalid_json"
    assert "nested" in body["detail"]
    assert Message.objects.count() == 0


@pytest.mark.django_db
def test_a_malformed_body_is_a_400_invalid_json(api):
    response = api.post(URL, '{"content": "hi"', content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"


@pytest.mark.django_db
@pytest.mark.parametrize("raw", ['{"content": NaN}', '{"content": "hi", "x": Infinity}'])
def test_nan_and_infinity_are_not_json(api, raw):
    response = api.post(URL, raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"


@pytest.mark.django_db
def test_a_ten_megabyte_body_is_a_413_json_error(api):
    payload = json.dumps({"content": "x" * (10 * 1024 * 1024)})
    response = api.post(URL, payload, content_type="application/json")
    assert response.status_code == 413
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == "invalid_json"
    assert "131072 bytes" in body["detail"]
    assert Message.objects.count() == 0


@pytest.mark.django_db
def test_a_body_at_max_frame_bytes_is_parsed(api, settings):
    payload = json.dumps({"content": "hi", "client_id": "a"})
    settings.MPAI = {**settings.MPAI, "MAX_FRAME_BYTES": len(payload)}
    assert api.post(URL, payload, content_type="application/json").status_code == 201
    settings.MPAI = {**settings.MPAI, "MAX_FRAME_BYTES": len(payload) - 1}
    assert api.post(URL, payload, content_type="application/json").status_code == 413


@pytest.mark.django_db(transaction=True)
def test_a_ten_megabyte_body_over_a_real_server_is_a_413_json_error(e2e_server, user):
    token = Token.objects.create(user=user)
    response = requests.post(
        e2e_server.http_url + URL,
        data=b'{"content": "' + b"x" * (10 * 1024 * 1024) + b'"}',
        headers={"Authorization": f"Token {token.key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["code"] == "invalid_json"


# --- page ------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["url", "title"])
def test_a_lone_surrogate_in_the_page_is_a_400_invalid_message_and_saves_nothing(api, key):
    raw = json.dumps({"content": "hi", "page": {key: "Plans \ud800"}})  # ASCII: "\\ud800"
    response = api.post(URL, raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_message",
        "detail": f"page.{key} contains control characters.",
    }
    assert Message.objects.count() == 0


@pytest.mark.django_db(transaction=True)
async def test_a_lone_surrogate_in_the_page_of_a_frame_is_invalid_message(offline, user):
    ws = await open_socket(user)
    await ws.send_to(
        text_data='{"type": "chat.message", "content": "hi", "page": {"title": "\\udfff"}}'
    )
    frame = await ws.receive_json_from(timeout=5)
    assert frame["type"] == "chat.error"
    assert frame["code"] == "invalid_message"
    assert "page.title" in frame["detail"]
    assert await Message.objects.acount() == 0
    await assert_still_answers(ws)
    await ws.disconnect()
