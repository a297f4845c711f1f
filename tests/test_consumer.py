"""The chat consumer in-process (WebsocketCommunicator) with the offline provider.

End-to-end tests over a real server process are in test_websocket_e2e.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from mpai.models import Message
from mpai.routing import websocket_urlpatterns

pytestmark = pytest.mark.django_db(transaction=True)

REPLY = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture
def provider(settings):
    def configure(**options):
        options.setdefault("first_token_ms", 0)
        options.setdefault("tokens_per_second", 0)
        options.setdefault("reply", REPLY)
        settings.MPAI = {
            **settings.MPAI,
            "PROVIDER": {"BACKEND": "mpai.providers.offline.OfflineProvider", "OPTIONS": options},
        }

    configure()
    return configure


async def open_socket(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/mpai/chat/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def collect(communicator, wait=10.0):
    """Receive frames until the final one; returns (frames, final)."""
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=wait)
        frames.append(frame)
        if frame["type"] in ("chat.completed", "chat.error"):
            return frames, frame


@pytest.fixture
def auser(user):
    return user


async def test_anonymous_connection_is_refused(provider):
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/mpai/chat/")
    communicator.scope["user"] = AnonymousUser()
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.wait()  # the consumer has ended; nothing is left running


async def test_chat_streams_and_saves(provider, auser):
    ws = await open_socket(auser)
    await ws.send_json_to({"type": "chat.message", "conversation": None, "content": "hi"})
    frames, final = await collect(ws)
    started, deltas = frames[0], [f["text"] for f in frames[1:-1]]
    assert started["type"] == "chat.started"
    assert all(f["type"] == "chat.delta" for f in frames[1:-1])
    assert "".join(deltas) == REPLY
    assert final["type"] == "chat.completed"
    assert final["status"] == "complete"
    assert final["finish_reason"] == "stop"
    assert final["cached"] is False
    assert final["replayed"] is False
    assert final["message"] == started["message"]
    saved = await database_sync_to_async(Message.objects.get)(pk=started["message"])
    assert saved.content == REPLY
    await ws.disconnect()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        ('{"type": "chat.nope"}', "unknown_type"),
        ('{"content": "no type"}', "unknown_type"),
        ('{"type": "chat.message", "content": "   "}', "invalid_message"),
        ('{"type": "chat.message", "content": "bad \\u0000 char"}', "invalid_message"),
        (
            '{"type": "chat.message", "content": "hi", "conversation": 99999}',
            "conversation_not_found",
        ),
        ('{"type": "chat.message", "content": "hi", "client_id": ""}', "invalid_message"),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays_usable(provider, auser, raw, code):
    ws = await open_socket(auser)
    await ws.send_to(text_data=raw)
    frame = await ws.receive_json_from(timeout=5)
    assert frame["type"] == "chat.error"
    assert frame["code"] == code
    assert frame["detail"]
    await ws.send_json_to({"type": "chat.message", "conversation": None, "content": "hi"})
    _, final = await collect(ws)
    assert final["type"] == "chat.completed"
    await ws.disconnect()


async def test_message_too_long(provider, auser, settings):
    settings.MPAI = {**settings.MPAI, "MAX_MESSAGE_LENGTH": 10}
    ws = await open_socket(auser)
    await ws.send_json_to({"type": "chat.message", "content": "x" * 11})
    frame = await ws.receive_json_from(timeout=5)
    assert frame["code"] == "message_too_long"
    assert await database_sync_to_async(Message.objects.count)() == 0
    await ws.disconnect()


async def test_second_message_while_streaming_is_busy(provider, auser):
    provider(tokens_per_second=40)
    ws = await open_socket(auser)
    await ws.send_json_to({"type": "chat.message", "content": "first"})
    started = await ws.receive_json_from(timeout=5)
    assert started["type"] == "chat.started"
    await ws.send_json_to({"type": "chat.message", "content": "second"})
    frames, final = [], None
    busy = None
    while final is None:
        frame = await ws.receive_json_from(timeout=10)
        if frame["type"] == "chat.error" and frame["code"] == "busy":
            busy = frame
        elif frame["type"] in ("chat.completed", "chat.error"):
            final = frame
        else:
            frames.append(frame)
    assert busy is not None
    assert final["type"] == "chat.completed"
    assert "".join(f["text"] for f in frames) == REPLY
    await ws.disconnect()


async def test_cancel_stops_the_reply_and_saves_it_as_cancelled(provider, auser):
    provider(tokens_per_second=20)
    ws = await open_socket(auser)
    await ws.send_json_to({"type": "chat.message", "content": "tell me"})
    started = await ws.receive_json_from(timeout=5)
    first = await ws.receive_json_from(timeout=5)
    assert first["type"] == "chat.delta"
    await ws.send_json_to({"type": "chat.cancel"})
    frames, final = await collect(ws)
    assert final["type"] == "chat.completed"
    assert final["status"] == "cancelled"
    assert final["finish_reason"] is None
    shown = first["text"] + "".join(f["text"] for f in frames if f["type"] == "chat.delta")
    saved = await database_sync_to_async(Message.objects.get)(pk=started["message"])
    assert saved.status == "cancelled"
    assert saved.content == shown
    assert len(shown) < len(REPLY)
    await ws.disconnect()


async def test_disconnect_is_not_a_cancel(provider, auser):
    provider(tokens_per_second=100)
    ws = await open_socket(auser)
    await ws.send_json_to({"type": "chat.message", "content": "go on without me"})
    started = await ws.receive_json_from(timeout=5)
    await ws.receive_json_from(timeout=5)  # one delta
    await ws.disconnect()
    deadline = time.monotonic() + 10
    while True:
        saved = await database_sync_to_async(Message.objects.get)(pk=started["message"])
        if saved.status != "streaming" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert saved.status == "complete"
    assert saved.content == REPLY


async def test_rate_limited_frame_carries_retry_after(provider, auser, settings):
    settings.MPAI = {
        **settings.MPAI,
        "RATE_LIMIT": {"CAPACITY": 1, "REFILL_RATE": 0.01, "KEY_PREFIX": f"rl-ws-{auser.pk}:"},
    }
    ws = await open_socket(auser)
    await ws.send_json_to({"type": "chat.message", "content": "first"})
    _, final = await collect(ws)
    assert final["type"] == "chat.completed"
    # Sent the instant chat.completed arrives: the connection is free (never busy).
    await ws.send_json_to({"type": "chat.message", "content": "second"})
    frame = await ws.receive_json_from(timeout=5)
    assert frame["type"] == "chat.error"
    assert frame["code"] == "rate_limited"
    assert 0 < frame["retry_after"] <= 100
    await ws.disconnect()


async def test_a_message_sent_right_after_the_final_frame_is_never_busy(provider, auser):
    ws = await open_socket(auser)
    for i in range(20):
        await ws.send_json_to({"type": "chat.message", "content": f"quick {i}"})
        _, final = await collect(ws)
        assert final["type"] == "chat.completed", final
    await ws.disconnect()


async def test_cancel_sent_before_chat_started_still_stops_the_reply(provider, auser):
    provider(first_token_ms=300, tokens_per_second=20)
    ws = await open_socket(auser)
    await ws.send_json_to({"type": "chat.message", "content": "stop me at once"})
    await ws.send_json_to({"type": "chat.cancel"})
    frames, final = await collect(ws)
    assert frames[0]["type"] == "chat.started"
    assert final["type"] == "chat.completed"
    assert final["status"] == "cancelled"
    saved = await database_sync_to_async(Message.objects.get)(pk=frames[0]["message"])
    assert saved.status == "cancelled"
    assert saved.content == "".join(f["text"] for f in frames if f["type"] == "chat.delta")
    await ws.disconnect()


async def test_cancel_with_nothing_streaming_is_ignored(provider, auser):
    ws = await open_socket(auser)
    await ws.send_json_to({"type": "chat.cancel"})
    await ws.send_json_to({"type": "chat.message", "content": "hi"})
    _, final = await collect(ws)
    assert final["status"] == "complete"
    await ws.disconnect()
