"""``chat.tool`` frames on the websocket (in-process consumer) and as SSE events."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import sseclient
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from rest_framework.test import APIClient

from mpai.models import Message
from mpai.routing import websocket_urlpatterns

if TYPE_CHECKING:
    from tests.fake_openai import FakeOpenAI

DEMO = {
    "MEMBERSHIP_ADAPTER": "config.tools.DemoMembershipAdapter",
    "TOOLS": [
        "mpai.tools.membership.get_my_memberships",
        "mpai.tools.membership.list_plans",
        "mpai.tools.membership.search_help_articles",
    ],
    "RESPONSE_CACHE_ENABLED": False,
}
OFFLINE = {
    "BACKEND": "mpai.providers.offline.OfflineProvider",
    "OPTIONS": {"first_token_ms": 0, "tokens_per_second": 0},
}


async def turn_frames(user: Any, content: str) -> list[dict[str, Any]]:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/mpai/chat/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_json_to({"type": "chat.message", "content": content})
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=10)
        frames.append(frame)
        if frame["type"] in ("chat.completed", "chat.error"):
            break
    await communicator.disconnect()
    return frames


def shape(frames: list[dict[str, Any]]) -> list[str]:
    """Frame types (chat.tool with its status), consecutive deltas merged."""
    out: list[str] = []
    for frame in frames:
        kind = frame["type"]
        if kind == "chat.tool":
            kind = f"chat.tool:{frame['status']}"
        if not (out and kind == "chat.delta" == out[-1]):
            out.append(kind)
    return out


@pytest.mark.django_db(transaction=True)
async def test_websocket_frames_with_the_offline_model_calling_a_tool(settings, user):
    settings.MPAI = {**settings.MPAI, **DEMO, "PROVIDER": OFFLINE}
    frames = await turn_frames(user, "What plans do you have?")
    assert shape(frames) == [
        "chat.started",
        "chat.tool:started",
        "chat.tool:ok",
        "chat.delta",
        "chat.completed",
    ]
    started, ended = frames[1], frames[2]
    assert set(started) == {"type", "name", "call_id", "status"}
    assert started["name"] == ended["name"] == "list_plans"
    assert started["call_id"] == ended["call_id"]
    assert set(ended) == {"type", "name", "call_id", "status", "duration_ms"}
    assert ended["duration_ms"] >= 0
    text = "".join(f["text"] for f in frames if f["type"] == "chat.delta")
    saved = await database_sync_to_async(Message.objects.get)(pk=frames[0]["message"])
    assert text == saved.content
    assert saved.content.startswith("The plans on offer:")
    assert saved.tool_calls[0]["id"] == started["call_id"]


@pytest.mark.django_db(transaction=True)
async def test_websocket_frames_of_two_parallel_calls_over_http(
    settings, user, fake_openai: FakeOpenAI
):
    settings.MPAI = {
        **settings.MPAI,
        **DEMO,
        "PROVIDER": {
            "BACKEND": "mpai.providers.openai.OpenAIProvider",
            "OPTIONS": {"base_url": fake_openai.base_url, "backoff_initial": 0.001},
        },
    }
    fake_openai.stream_tool_calls(
        [
            {"id": "call_plans", "name": "list_plans", "arguments": "{}"},
            {"id": "call_help", "name": "search_help_articles", "arguments": '{"query": "cancel"}'},
        ],
        parts=["Checking. "],
        pieces=3,
    )
    fake_openai.stream_reply(["Here ", "you go."])
    frames = await turn_frames(user, "Plans, and how do I cancel?")
    assert shape(frames) == [
        "chat.started",
        "chat.delta",
        "chat.tool:started",
        "chat.tool:started",
        "chat.tool:ok",
        "chat.tool:ok",
        "chat.delta",
        "chat.completed",
    ]
    tools = [f for f in frames if f["type"] == "chat.tool"]
    assert [(f["call_id"], f["status"]) for f in tools] == [
        ("call_plans", "started"),
        ("call_help", "started"),
        ("call_plans", "ok"),
        ("call_help", "ok"),
    ]
    text = "".join(f["text"] for f in frames if f["type"] == "chat.delta")
    assert text == "Checking. \n\nHere you go."
    saved = await database_sync_to_async(Message.objects.get)(pk=frames[0]["message"])
    assert saved.content == text
    follow_up = fake_openai.requests[1]["messages"]
    assert [m["role"] for m in follow_up[-3:]] == ["assistant", "tool", "tool"]
    assert follow_up[-3]["content"] == "Checking. "


@pytest.mark.django_db(transaction=True)
async def test_the_iteration_limit_is_a_chat_error_frame(settings, user, fake_openai: FakeOpenAI):
    settings.MPAI = {
        **settings.MPAI,
        **DEMO,
        "TOOL_MAX_ITERATIONS": 1,
        "PROVIDER": {
            "BACKEND": "mpai.providers.openai.OpenAIProvider",
            "OPTIONS": {"base_url": fake_openai.base_url, "backoff_initial": 0.001},
        },
    }
    fake_openai.stream_tool_calls([{"name": "list_plans", "arguments": "{}"}], times=None)
    frames = await turn_frames(user, "Loop")
    assert shape(frames) == ["chat.started", "chat.tool:started", "chat.tool:ok", "chat.error"]
    assert frames[-1]["code"] == "tool_iterations_exceeded"
    assert frames[-1]["detail"]


@pytest.mark.django_db(transaction=True)
def test_sse_events_include_chat_tool(settings, user):
    settings.MPAI = {**settings.MPAI, **DEMO, "PROVIDER": OFFLINE}
    client = APIClient()
    client.force_authenticate(user)
    response = client.post(
        "/api/mpai/v1/chat/",
        {"content": "When does my membership renew?"},
        format="json",
        HTTP_ACCEPT="text/event-stream",
    )
    assert response.status_code == 200
    events = [
        (e.event, json.loads(e.data))
        for e in sseclient.SSEClient(response.streaming_content).events()
    ]
    kinds = [kind for kind, _ in events]
    assert kinds[:3] == ["chat.started", "chat.tool", "chat.tool"]
    assert kinds[-1] == "chat.completed"
    assert [d["status"] for k, d in events if k == "chat.tool"] == ["started", "ok"]
    assert [d["name"] for k, d in events if k == "chat.tool"] == ["get_my_memberships"] * 2
