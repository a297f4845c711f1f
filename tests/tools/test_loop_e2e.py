"""The tool loop end to end: the demo project (its membership tools enabled) in a real
uvicorn process, the model over real HTTP (tests/fake_openai.py), a real websocket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from websockets.sync.client import connect

from mpai.models import Message

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def session_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def test_the_demo_calls_its_membership_tool_and_answers(
    e2e_server, session_cookie, fake_openai, user
):
    fake_openai.stream_tool_calls(
        [{"id": "call_me", "name": "get_my_memberships", "arguments": "{}"}], pieces=2
    )
    fake_openai.stream_reply(["You're ", "on Monthly."])
    headers = {"Cookie": f"sessionid={session_cookie}"}
    with connect(
        e2e_server.ws_url, origin=e2e_server.http_url, additional_headers=headers, open_timeout=20
    ) as ws:
        ws.send(json.dumps({"type": "chat.message", "content": "Which plan am I on?"}))
        frames = []
        while not frames or frames[-1]["type"] not in ("chat.completed", "chat.error"):
            frames.append(json.loads(ws.recv(timeout=20)))
    kinds = [f["type"] + (f":{f['status']}" if f["type"] == "chat.tool" else "") for f in frames]
    assert kinds[:3] == ["chat.started", "chat.tool:started", "chat.tool:ok"]
    assert set(kinds[3:-1]) == {"chat.delta"}
    assert kinds[-1] == "chat.completed"
    assert frames[1]["name"] == "get_my_memberships"
    text = "".join(f["text"] for f in frames if f["type"] == "chat.delta")
    assert text == "You're on Monthly."

    offered = [t["function"]["name"] for t in fake_openai.requests[0]["tools"]]
    assert offered == ["get_my_memberships", "list_plans", "search_help_articles"]
    result = fake_openai.requests[1]["messages"][-1]
    assert result["role"] == "tool"
    assert result["tool_call_id"] == "call_me"
    (membership,) = json.loads(result["content"])["memberships"]
    assert membership["plan"] == "Monthly"
    saved = Message.objects.get(pk=frames[-1]["message"])
    assert saved.content == text
    assert saved.tool_calls[0]["name"] == "get_my_memberships"
    assert saved.tool_calls[0]["status"] == "ok"
