"""The websocket end to end: the demo project's ASGI app in a real uvicorn process,
channels-redis on the private Redis, PostgreSQL, and the provider over real HTTP
(tests/fake_openai.py), with a real websocket client.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from django.test import Client
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from mpai.models import Message
from tests.asgi_server import AsgiServer, server_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def open_ws(
    server: AsgiServer, cookie: str | None, *, origin: str | None = None
) -> ClientConnection:
    headers = {"Cookie": f"sessionid={cookie}"} if cookie else {}
    return connect(
        server.ws_url,
        origin=origin or server.http_url,  # type: ignore[arg-type]
        additional_headers=headers,
        open_timeout=10,
    )


def send(ws: ClientConnection, **frame: Any) -> None:
    ws.send(json.dumps(frame))


def turn(ws: ClientConnection, wait: float = 20) -> tuple[dict, list[str], dict]:
    """Read one turn: (chat.started, delta texts, final frame)."""
    started = json.loads(ws.recv(timeout=wait))
    deltas: list[str] = []
    while True:
        frame = json.loads(ws.recv(timeout=wait))
        if frame["type"] == "chat.delta":
            deltas.append(frame["text"])
        else:
            return started, deltas, frame


PARTS = ["Your ", "membership ", "renews ", "on ", "the ", "first ", "of ", "the ", "month."]


def test_reply_streams_in_order_is_saved_and_listed_by_the_api(
    e2e_server, session_cookie, fake_openai, user
):
    fake_openai.stream_reply(PARTS, usage=(42, 9))
    with open_ws(e2e_server, session_cookie) as ws:
        send(ws, type="chat.message", conversation=None, content="When does it renew?")
        started, deltas, final = turn(ws)
    assert started["type"] == "chat.started"
    # Deltas the server had not sent yet may leave merged: the text is exactly the reply.
    assert "".join(deltas) == "".join(PARTS)
    assert all(deltas)
    assert 1 <= len(deltas) <= len(PARTS)
    assert final["type"] == "chat.completed"
    assert final["status"] == "complete"
    assert final["finish_reason"] == "stop"
    assert final["usage"] == {"prompt_tokens": 42, "completion_tokens": 9, "total_tokens": 51}
    assert set(final["timings_ms"]) == {
        "context",
        "api_wait",
        "first_token",
        "generation",
        "processing",
        "total",
    }
    saved = Message.objects.get(pk=final["message"])
    assert saved.content == "".join(PARTS)
    assert saved.status == "complete"
    assert saved.prompt_tokens == 42
    assert fake_openai.requests[-1]["stream"] is True
    assert fake_openai.requests[-1]["messages"][-1] == {
        "role": "user",
        "content": "When does it renew?",
    }
    # The context's user-info section reached the provider (the scope's lazy user).
    assert f"username: {user.get_username()}" in fake_openai.requests[-1]["messages"][0]["content"]

    history = requests.get(
        f"{e2e_server.http_url}/api/mpai/v1/chat-history/",
        cookies={"sessionid": session_cookie},
        timeout=10,
    ).json()
    assert history["count"] == 2
    assert [row["role"] for row in history["results"]] == ["assistant", "user"]
    assert history["results"][0]["content"] == "".join(PARTS)
    assert history["results"][0]["id"] == final["message"]


def test_anonymous_connection_is_refused_at_the_handshake(e2e_server):
    with pytest.raises(InvalidStatus) as excinfo:
        open_ws(e2e_server, None)
    assert excinfo.value.response.status_code == 403


def test_wrong_origin_is_refused_at_the_handshake(e2e_server, session_cookie):
    with pytest.raises(InvalidStatus) as excinfo:
        open_ws(e2e_server, session_cookie, origin="http://evil.example")
    assert excinfo.value.response.status_code == 403


def test_provider_failure_mid_stream_gives_chat_error_and_saves_the_partial_reply(
    e2e_server, session_cookie, fake_openai
):
    fake_openai.stream_then_error(["Half ", "a ", "reply"], "upstream model crashed")
    with open_ws(e2e_server, session_cookie) as ws:
        send(ws, type="chat.message", conversation=None, content="Tell me everything")
        started, deltas, final = turn(ws)
        assert final["type"] == "chat.error"
        assert final["code"] == "provider_error"
        assert final["message"] == started["message"]
        # The connection stays usable after the error.
        fake_openai.stream_reply(["ok"])
        send(ws, type="chat.message", conversation=started["conversation"], content="again")
        _, _, again = turn(ws)
        assert again["type"] == "chat.completed"
    saved = Message.objects.get(pk=started["message"])
    assert saved.status == "error"
    assert saved.error_code == "provider_error"
    assert saved.content == "".join(deltas) == "Half a reply"


def test_provider_auth_error_before_the_stream(e2e_server, session_cookie, fake_openai):
    fake_openai.respond_error(401, "Incorrect API key provided")
    with open_ws(e2e_server, session_cookie) as ws:
        send(ws, type="chat.message", conversation=None, content="hi")
        started, deltas, final = turn(ws)
    assert deltas == []
    assert final["code"] == "provider_auth"
    assert "message" not in final
    assert Message.objects.get(pk=started["message"]).status == "error"


def test_an_idle_connection_outlives_redis_blocking_reads(e2e_server, session_cookie, fake_openai):
    """channels_redis #422: a 5 s socket timeout killed consumers idle for 5 s."""
    fake_openai.stream_reply(["still ", "here"])
    with open_ws(e2e_server, session_cookie) as ws:
        deadline = time.monotonic() + 6.5
        while time.monotonic() < deadline:
            with pytest.raises(TimeoutError):
                ws.recv(timeout=deadline - time.monotonic())
        send(ws, type="chat.message", conversation=None, content="hello?")
        _, deltas, final = turn(ws)
    assert final["type"] == "chat.completed"
    assert "".join(deltas) == "still here"


def test_disconnect_then_resend_replays_the_whole_reply(e2e_server, session_cookie, fake_openai):
    fake_openai.stream_reply(PARTS, delay_s=0.05)
    with open_ws(e2e_server, session_cookie) as ws:
        send(ws, type="chat.message", conversation=None, content="renewal?", client_id="c-1")
        started = json.loads(ws.recv(timeout=10))
        json.loads(ws.recv(timeout=10))  # one delta, then the connection drops
    with open_ws(e2e_server, session_cookie) as ws:
        send(ws, type="chat.message", conversation=None, content="renewal?", client_id="c-1")
        again, deltas, final = turn(ws)
    assert again["message"] == started["message"]
    assert again["user_message"] == started["user_message"]
    assert again["client_id"] == "c-1"
    assert final["replayed"] is True
    assert final["status"] == "complete"
    assert "".join(deltas) == "".join(PARTS)
    assert Message.objects.filter(client_id="c-1").count() == 1
    assert len(fake_openai.requests) == 1


def test_server_shutdown_saves_streaming_replies_as_cancelled(
    django_db_setup, redis_server, fake_openai, user, session_cookie
):
    """A reply in progress when the server stops is saved with what was streamed."""
    server = AsgiServer(server_env(redis_server.url, fake_openai.base_url))
    fake_openai.stream_reply(["slow "] * 200, delay_s=0.1)
    server.start()
    try:
        with open_ws(server, session_cookie) as ws:
            send(ws, type="chat.message", conversation=None, content="long story please")
            started = json.loads(ws.recv(timeout=10))
            json.loads(ws.recv(timeout=10))  # the first delta
            server.process.terminate()
            server.process.wait(timeout=30)
    finally:
        server.stop()
    saved = Message.objects.get(pk=started["message"])
    assert saved.status == "cancelled"
    assert saved.content.startswith("slow ")
    assert len(saved.content) < len("slow ") * 200


def test_a_refusal_is_streamed_saved_and_flagged_on_the_final_frame(
    e2e_server, session_cookie, fake_openai
):
    parts = ["I'm sorry, ", "I can't help with that."]
    fake_openai.stream_refusal(parts)
    with open_ws(e2e_server, session_cookie) as ws:
        send(ws, type="chat.message", conversation=None, content="Something I may not ask")
        started, deltas, final = turn(ws)
    assert "".join(deltas) == "".join(parts)
    assert all(deltas)
    assert final["type"] == "chat.completed"
    assert final["refusal"] is True
    saved = Message.objects.get(pk=started["message"])
    assert saved.content == "".join(parts)
    assert saved.status == "complete"


def test_a_stream_cut_off_without_finish_reason_is_an_error_with_its_partial_text(
    e2e_server, session_cookie, fake_openai
):
    fake_openai.stream_truncated(["Half ", "a "])
    with open_ws(e2e_server, session_cookie) as ws:
        send(ws, type="chat.message", conversation=None, content="Tell me everything")
        started, deltas, final = turn(ws)
    assert final["type"] == "chat.error"
    assert final["code"] == "provider_unavailable"
    assert final["message"] == started["message"]
    saved = Message.objects.get(pk=started["message"])
    assert saved.status == "error"
    assert saved.content == "".join(deltas) == "Half a "
