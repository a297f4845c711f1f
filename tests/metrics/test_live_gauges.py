"""The live gauges and counters move with real websockets and turns."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from prometheus_client import REGISTRY

from mpai.routing import websocket_urlpatterns
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def final_frame(socket: WebsocketCommunicator) -> dict:
    while (frame := await socket.receive_json_from(timeout=10))["type"] not in (
        "chat.completed",
        "chat.error",
    ):
        pass
    return frame


async def test_websockets_turns_and_rate_limits_are_counted(settings, make_user) -> None:
    settings.MPAI = {
        **settings.MPAI,
        "RATE_LIMIT": {"CAPACITY": 1, "REFILL_RATE": 0.001, "KEY_PREFIX": "rl-gauges:"},
    }
    user = await database_sync_to_async(make_user)()
    sockets, turns = sample("mpai_websocket_connections"), sample("mpai_active_turns")
    limited = sample("mpai_rate_limited_total")
    socket = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/mpai/chat/")
    socket.scope["user"] = user
    assert (await socket.connect())[0]
    assert sample("mpai_websocket_connections") == sockets + 1

    await socket.send_json_to({"type": "chat.message", "conversation": None, "content": "hi"})
    assert (await final_frame(socket))["type"] == "chat.completed"
    await socket.send_json_to({"type": "chat.message", "conversation": None, "content": "hi"})
    assert (await final_frame(socket))["code"] == "rate_limited"
    assert sample("mpai_rate_limited_total") == limited + 1
    # The stream thread ends the turn after the final frame left.
    await database_sync_to_async(wait_until)(
        lambda: sample("mpai_active_turns") == turns, timeout=10
    )

    await socket.disconnect()
    assert sample("mpai_websocket_connections") == sockets
