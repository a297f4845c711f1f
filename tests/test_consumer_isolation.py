"""One user's streams never hold up another user's new turn (head-of-line blocking), and
past its stream slots a process says so at once instead of queueing turns for seconds."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from mpai.models import Message
from mpai.routing import websocket_urlpatterns

pytestmark = pytest.mark.django_db(transaction=True)


async def open_socket(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/mpai/chat/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


def long_reply(settings, **mpai) -> None:
    settings.MPAI = {
        **settings.MPAI,
        **mpai,
        "PROVIDER": {
            "BACKEND": "mpai.providers.offline.OfflineProvider",
            # About 6 s of reply: it holds its stream thread for the whole test.
            "OPTIONS": {"first_token_ms": 0, "tokens_per_second": 20, "reply": "word " * 120},
        },
    }


async def drain(*sockets: WebsocketCommunicator) -> None:
    for socket in sockets:
        while (await socket.receive_json_from(timeout=20))["type"] not in (
            "chat.completed",
            "chat.error",
        ):
            pass
        await socket.disconnect()


async def test_past_its_stream_slots_a_turn_is_refused_overloaded_with_nothing_saved(
    settings, make_user
):
    long_reply(settings, STREAM_WORKERS=1, STREAM_QUEUE=4, STREAM_QUEUE_SECONDS=0.2)
    first_user, second_user = await database_sync_to_async(lambda: (make_user(), make_user()))()
    first = await open_socket(first_user)
    await first.send_json_to({"type": "chat.message", "conversation": None, "content": "long"})
    assert (await first.receive_json_from(timeout=10))["type"] == "chat.started"

    second = await open_socket(second_user)
    await second.send_json_to({"type": "chat.message", "conversation": None, "content": "hi"})
    frame = await second.receive_json_from(timeout=10)
    assert frame["type"] == "chat.error"
    assert frame["code"] == "overloaded"
    assert frame["retry_after"] >= 1
    assert not await Message.objects.filter(owner=second_user).aexists()

    # The slot comes back when the first reply is saved; then the second user is served.
    await first.send_json_to({"type": "chat.cancel"})
    await drain(first)
    await second.send_json_to({"type": "chat.message", "conversation": None, "content": "hi"})
    assert (await second.receive_json_from(timeout=10))["type"] == "chat.started"
    await second.send_json_to({"type": "chat.cancel"})
    await drain(second)


async def test_a_new_turn_starts_while_another_user_streams(settings, make_user):
    long_reply(settings, STREAM_WORKERS=2)
    first_user, second_user = await database_sync_to_async(lambda: (make_user(), make_user()))()
    first = await open_socket(first_user)
    await first.send_json_to({"type": "chat.message", "conversation": None, "content": "long"})
    started = await first.receive_json_from(timeout=10)
    assert started["type"] == "chat.started"
    await first.receive_json_from(timeout=10)  # a delta: one stream thread is taken

    second = await open_socket(second_user)
    await second.send_json_to({"type": "chat.message", "conversation": None, "content": "hi"})
    frame = await second.receive_json_from(timeout=10)
    assert frame["type"] == "chat.started"
    # The first reply is still streaming: the second turn did not wait for it.
    status = (
        await Message.objects.filter(pk=started["message"]).values_list("status", flat=True).aget()
    )
    assert status == "streaming"
    await first.send_json_to({"type": "chat.cancel"})
    await second.send_json_to({"type": "chat.cancel"})
    await drain(first, second)
