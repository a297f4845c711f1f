"""What attacking and breaking the service found, against the real stack: uvicorn,
PostgreSQL with psycopg's pool, a private Redis, and the provider over real HTTP.

- a resend of a reply that will never finish returns within its deadline, and twenty of
  them leave the process serving;
- an open socket of a revoked session stops chatting;
- a client that never reads holds bounded memory and its reply is still saved;
- database connections terminated mid-turn leave every streamed reply saved.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from django.test import Client
from django.utils import timezone
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from mpai.models import Conversation, Message
from tests.asgi_server import AsgiServer, server_env
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def login_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def open_ws(server: AsgiServer, cookie: str, **kwargs: Any) -> ClientConnection:
    return connect(
        server.ws_url,
        origin=server.http_url,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={cookie}"},
        open_timeout=10,
        **kwargs,
    )


def send(ws: ClientConnection, **frame: Any) -> None:
    ws.send(json.dumps(frame))


def read_turn(ws: ClientConnection, wait: float = 30) -> tuple[dict, list[str], dict]:
    """(first frame, delta texts, final frame) of one turn."""
    first = json.loads(ws.recv(timeout=wait))
    if first["type"] == "chat.error":
        return first, [], first
    deltas: list[str] = []
    while True:
        frame = json.loads(ws.recv(timeout=wait))
        if frame["type"] == "chat.delta":
            deltas.append(frame["text"])
        else:
            return first, deltas, frame


@pytest.fixture
def custom_server(django_db_setup, redis_server, fake_openai_url) -> Iterator[Any]:
    """Factory: a demo server with extra ``MPAI`` options and environment variables."""
    servers: list[AsgiServer] = []

    def start(mpai: dict[str, Any] | None = None, **env: str) -> AsgiServer:
        server = AsgiServer(
            {
                **server_env(redis_server.url, fake_openai_url),
                "DJANGO_SETTINGS_MODULE": "tests.e2e_settings",
                "MPAI_TEST_SETTINGS": json.dumps(mpai or {}),
                **env,
            }
        )
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def stuck_exchange(user: Any, client_id: str, *, heartbeat_age: timedelta) -> Message:
    """A saved exchange whose reply is ``streaming`` with a heartbeat of that age
    (negative: a writer that will look alive for the whole test)."""
    conversation = Conversation.objects.create(owner=user, title="stuck")
    Message.objects.create(
        conversation=conversation, owner=user, role="user", content="hi", client_id=client_id
    )
    return Message.objects.create(
        conversation=conversation,
        owner=user,
        role="assistant",
        status="streaming",
        heartbeat_at=timezone.now() - heartbeat_age,
    )


# --- poisoned replays ----------------------------------------------------------------


def test_a_resend_of_a_reply_no_process_owns_is_reported_and_marked_failed(e2e_server, user):
    reply = stuck_exchange(user, "lost-1", heartbeat_age=timedelta(minutes=5))
    with open_ws(e2e_server, login_cookie(user)) as ws:
        send(ws, type="chat.message", conversation=None, content="hi", client_id="lost-1")
        started, _, final = read_turn(ws)
    assert started["message"] == reply.pk
    assert final["type"] == "chat.error"
    assert final["code"] == "internal_error"
    reply.refresh_from_db()
    assert reply.status == "error"  # the next resend gets the answer at once


def test_resends_of_a_reply_that_never_finishes_end_at_their_deadline_and_the_process_serves(
    custom_server, make_user, fake_openai
):
    # A small pool: before the fix, each waiting resend held a pooled connection.
    server = custom_server(
        {"REPLAY_TIMEOUT_SECONDS": 4, "RATE_LIMIT": {"CAPACITY": 100}}, MPAI_DB_POOL_MAX="4"
    )
    user = make_user()
    stuck_exchange(user, "forever", heartbeat_age=-timedelta(hours=1))
    cookie = login_cookie(user)
    sockets = [open_ws(server, cookie) for _ in range(20)]
    try:
        for ws in sockets:
            send(ws, type="chat.message", conversation=None, content="hi", client_id="forever")
        for ws in sockets:
            assert json.loads(ws.recv(timeout=30))["type"] == "chat.started"
        # While twenty resends wait, another member chats normally.
        fake_openai.stream_reply(["Still ", "serving."])
        with open_ws(server, login_cookie(make_user())) as other:
            send(other, type="chat.message", conversation=None, content="Are you there?")
            _, deltas, final = read_turn(other)
        assert final["type"] == "chat.completed"
        assert "".join(deltas) == "Still serving."
        finals = [read_turn_rest(ws) for ws in sockets]
    finally:
        for ws in sockets:
            ws.close()
    assert {frame["type"] for frame in finals} == {"chat.error"}
    assert {frame["code"] for frame in finals} == {"provider_timeout"}


def read_turn_rest(ws: ClientConnection, wait: float = 30) -> dict:
    """Frames after chat.started until the final one; returns the final frame."""
    while True:
        frame = json.loads(ws.recv(timeout=wait))
        if frame["type"] in ("chat.completed", "chat.error"):
            return frame


def test_a_resend_stops_waiting_when_its_client_goes(custom_server, make_user, fake_openai):
    server = custom_server({"REPLAY_TIMEOUT_SECONDS": 600, "STREAM_WORKERS": 2})
    user = make_user()
    stuck_exchange(user, "gone", heartbeat_age=-timedelta(hours=1))
    cookie = login_cookie(user)
    for _ in range(3):  # more waiters than stream threads, one after the other
        with open_ws(server, cookie) as ws:
            send(ws, type="chat.message", conversation=None, content="hi", client_id="gone")
            assert json.loads(ws.recv(timeout=30))["type"] == "chat.started"
    fake_openai.stream_reply(["free"])
    with open_ws(server, cookie) as ws:
        send(ws, type="chat.message", conversation=None, content="new one")
        _, _, final = read_turn(ws)
    assert final["type"] == "chat.completed"


# --- revoked sessions ----------------------------------------------------------------


def sign_out(user: Any, cookie: str) -> None:
    SessionStore(session_key=cookie).delete()


def deactivate(user: Any, cookie: str) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])


def change_password(user: Any, cookie: str) -> None:
    user.set_password("a new password")
    user.save()


@pytest.mark.parametrize("revoke", [sign_out, deactivate, change_password])
def test_an_open_socket_of_a_revoked_session_stops_chatting(e2e_server, user, fake_openai, revoke):
    fake_openai.stream_reply(["fine"])
    cookie = login_cookie(user)
    with open_ws(e2e_server, cookie) as ws:
        send(ws, type="chat.message", conversation=None, content="first")
        assert read_turn(ws)[2]["type"] == "chat.completed"
        revoke(user, cookie)
        requests_before = len(fake_openai.requests)
        send(ws, type="chat.message", conversation=None, content="after")
        frame = json.loads(ws.recv(timeout=10))
        assert frame["type"] == "chat.error"
        assert frame["code"] == "not_authenticated"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401
    assert len(fake_openai.requests) == requests_before
    assert not Message.objects.filter(content="after").exists()


# --- slow clients --------------------------------------------------------------------


def raw_websocket(server: AsgiServer, cookie: str) -> socket.socket:
    """A websocket that never reads: the handshake by hand (RFC 6455 section 4.1), then
    nothing is read, so the server's writes back up into its own buffers."""
    # The default receive buffer: the kernel grows it only for an application that
    # reads, so it stays small (tcp_rmem's default) while this one does not.
    sock = socket.create_connection(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/mpai/chat/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {server.http_url}\r\nCookie: sessionid={cookie}\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)  # byte by byte: read nothing past the handshake
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def send_raw_text(sock: socket.socket, text: str) -> None:
    """One masked text frame (RFC 6455 section 5.2)."""
    payload = text.encode()
    mask = os.urandom(4)
    assert len(payload) < 65536
    header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", len(payload)) + mask
    sock.sendall(header + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def close_code_at_the_end(sock: socket.socket, deadline_s: float = 60) -> int | None:
    """Read everything the server sent; return the close frame's code, if any."""
    sock.settimeout(deadline_s)
    data = bytearray()
    while chunk := sock.recv(1 << 20):
        data += chunk
        marker = data.rfind(b"\x88\x02")  # an unmasked close frame with a 2-byte code
        if marker >= 0 and marker + 4 <= len(data) and marker + 4 >= len(data) - 2:
            return int(struct.unpack("!H", bytes(data[marker + 2 : marker + 4]))[0])
    return None


def test_a_client_that_never_reads_is_dropped_and_its_reply_is_saved(
    custom_server, user, fake_openai
):
    server = custom_server(
        {"WEBSOCKET_SEND_BUFFER_BYTES": 64 * 1024, "WEBSOCKET_SLOW_CLIENT_SECONDS": 1}
    )
    part = "x" * 1023 + " "
    fake_openai.stream_reply([part] * 12_000)  # 12 MB: more than every socket buffer
    sock = raw_websocket(server, login_cookie(user))
    try:
        send_raw_text(sock, json.dumps({"type": "chat.message", "content": "Tell me everything"}))
        reply = wait_until(
            lambda: Message.objects.filter(owner=user, role="assistant", status="complete").first(),
            timeout=60,
        )
        assert reply.content == part * 12_000
        # What the client finally reads ends with the server's close code 1013.
        assert close_code_at_the_end(sock) == 1013
    finally:
        sock.close()


# --- database connections terminated mid-turn ----------------------------------------


def terminate_other_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def test_database_connections_terminated_mid_turn_leave_every_streamed_reply_saved(
    custom_server, make_user, fake_openai
):
    server = custom_server()
    fake_openai.stream_reply([f"word{i} " for i in range(30)], delay_s=0.05)
    users = [make_user() for _ in range(4)]
    results: dict[int, tuple[dict, list[str], dict]] = {}
    started: dict[int, dict] = {}

    def chat(index: int) -> None:
        with open_ws(server, login_cookie(users[index])) as ws:
            send(ws, type="chat.message", conversation=None, content=f"question {index}")
            first = started[index] = json.loads(ws.recv(timeout=30))
            deltas: list[str] = []
            while True:
                frame = json.loads(ws.recv(timeout=30))
                if frame["type"] != "chat.delta":
                    break
                deltas.append(frame["text"])
            results[index] = (first, deltas, frame)

    threads = [threading.Thread(target=chat, args=(i,)) for i in range(len(users))]
    for thread in threads:
        thread.start()
    # Every exchange is saved (chat.started) and every provider stream has begun: the
    # replies are on their way to the clients.
    wait_until(lambda: len(started) == len(users), timeout=30)
    assert all(frame["type"] == "chat.started" for frame in started.values())
    wait_until(lambda: len(fake_openai.requests) == len(users), timeout=30)
    assert terminate_other_connections() >= 1
    for thread in threads:
        thread.join(timeout=60)
    for started, deltas, final in results.values():
        assert final["type"] == "chat.completed"
        saved = Message.objects.get(pk=started["message"])
        assert saved.status == "complete"
        assert saved.content == "".join(deltas) != ""
    assert len(results) == len(users)
