"""Exact-origin websocket handshakes (issue 8): ``mpai.security.OriginValidator``.

Channels' ``AllowedHostsOriginValidator`` let a signed-in user's cookie chat from
``http://127.0.0.1:9999``, ``https://127.0.0.1`` and ``http://localhost:1`` (it checks
the host only). Origins must now match the site's own or ``CSRF_TRUSTED_ORIGINS`` in
scheme, host and port, as Django's CSRF check does for HTTP. The unit tests drive the
middleware through raw ASGI handshakes; the end-to-end tests run the demo project in
uvicorn with a real websocket client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.test import Client
from django.test.utils import override_settings
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from mpai.security import OriginValidator
from tests.asgi_server import AsgiServer, server_env

SITE_HOST = "127.0.0.1:8000"
TRUSTED = "https://members.example.com"


async def accepting_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})


async def handshake(
    origin: str | None,
    *,
    host: str = SITE_HOST,
    scheme: str = "ws",
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    allowed_origins: list[str] | None = None,
) -> str:
    """Run one handshake through the validator; return ``"accept"`` or ``"close"``."""
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    headers += extra_headers or []
    scope = {
        "type": "websocket",
        "path": "/ws/mpai/chat/",
        "scheme": scheme,
        "headers": headers,
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "subprotocols": [],
    }
    communicator = ApplicationCommunicator(OriginValidator(accepting_app, allowed_origins), scope)
    await communicator.send_input({"type": "websocket.connect"})
    message = await communicator.receive_output(timeout=5)
    await communicator.wait(timeout=5)
    return str(message["type"]).removeprefix("websocket.")


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:9999",  # another port
        "https://127.0.0.1:8000",  # another scheme
        "https://127.0.0.1",
        "http://127.0.0.1",  # the default port is another port
        "http://localhost:8000",  # another host, although in ALLOWED_HOSTS
        "http://localhost:1",
        "http://127.0.0.1:8000.evil.example",
        "null",
        "",
    ],
)
async def test_origins_differing_in_scheme_host_or_port_are_refused(origin):
    assert await handshake(origin) == "close"


async def test_a_handshake_without_an_origin_is_refused():
    assert await handshake(None) == "close"


async def test_the_sites_exact_origin_is_accepted():
    assert await handshake("http://127.0.0.1:8000") == "accept"


async def test_a_wss_connection_accepts_the_https_origin_only():
    assert await handshake("https://127.0.0.1:8000", scheme="wss") == "accept"
    assert await handshake("http://127.0.0.1:8000", scheme="wss") == "close"


async def test_x_forwarded_proto_is_ignored_unless_the_project_trusts_it():
    forwarded = [(b"x-forwarded-proto", b"https")]
    assert await handshake("https://127.0.0.1:8000", extra_headers=forwarded) == "close"
    assert await handshake("http://127.0.0.1:8000", extra_headers=forwarded) == "accept"


async def test_x_forwarded_proto_decides_the_scheme_when_secure_proxy_ssl_header_is_set():
    forwarded = [(b"x-forwarded-proto", b"https")]
    with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        assert await handshake("https://127.0.0.1:8000", extra_headers=forwarded) == "accept"
        assert await handshake("http://127.0.0.1:8000", extra_headers=forwarded) == "close"


async def test_a_host_outside_allowed_hosts_gives_no_site_origin():
    """DNS rebinding: a foreign name resolving to the server sends matching Host and
    Origin; Django's ALLOWED_HOSTS check refuses the host, so the origin is not the site's."""
    assert await handshake("http://evil.example:8000", host="evil.example:8000") == "close"


async def test_x_forwarded_host_counts_only_with_use_x_forwarded_host():
    proxied = [(b"x-forwarded-host", b"localhost:8443")]
    assert await handshake("http://localhost:8443", extra_headers=proxied) == "close"
    with override_settings(USE_X_FORWARDED_HOST=True):
        assert await handshake("http://localhost:8443", extra_headers=proxied) == "accept"


@pytest.mark.parametrize(
    ("origin", "result"),
    [
        ("https://members.example.com", "accept"),
        ("http://members.example.com", "close"),
        ("https://members.example.com:8443", "close"),
        ("https://www.members.example.com", "close"),
    ],
)
async def test_csrf_trusted_origins_are_accepted_exactly(origin, result):
    with override_settings(CSRF_TRUSTED_ORIGINS=[TRUSTED]):
        assert await handshake(origin) == result


@pytest.mark.parametrize(
    ("origin", "result"),
    [
        ("https://example.com", "accept"),
        ("https://chat.example.com", "accept"),
        ("http://chat.example.com", "close"),
        ("https://chat.example.com:8443", "close"),
        ("https://badexample.com", "close"),
    ],
)
async def test_a_wildcard_trusted_origin_matches_subdomains_with_its_scheme(origin, result):
    with override_settings(CSRF_TRUSTED_ORIGINS=["https://*.example.com"]):
        assert await handshake(origin) == result


async def test_explicit_allowed_origins_replace_csrf_trusted_origins():
    with override_settings(CSRF_TRUSTED_ORIGINS=[TRUSTED]):
        assert await handshake(TRUSTED, allowed_origins=[]) == "close"
        assert (
            await handshake("https://app.example.net", allowed_origins=["https://app.example.net"])
            == "accept"
        )


async def test_a_non_websocket_scope_is_an_error():
    validator = OriginValidator(accepting_app)
    with pytest.raises(ValueError, match="websocket"):
        await validator({"type": "http"}, None, None)  # type: ignore[arg-type]


# --- end to end: the demo project in uvicorn, a real websocket client ----------------


@pytest.fixture(scope="module")
def origin_server(django_db_setup, redis_server, fake_openai_url) -> Iterator[AsgiServer]:
    """The demo project in uvicorn, trusting one extra origin (CSRF_TRUSTED_ORIGINS)."""
    server = AsgiServer(
        {**server_env(redis_server.url, fake_openai_url), "DJANGO_CSRF_TRUSTED_ORIGINS": TRUSTED}
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def chat_from(server: AsgiServer, cookie: str, origin: str) -> list[dict[str, Any]]:
    """Open the chat websocket with ``Origin: origin``, send one message, return its frames."""
    with connect(
        server.ws_url,
        origin=origin,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={cookie}"},
        open_timeout=10,
    ) as ws:
        ws.send(json.dumps({"type": "chat.message", "conversation": None, "content": "hi"}))
        frames = [json.loads(ws.recv(timeout=20))]
        while frames[-1]["type"] in ("chat.started", "chat.delta"):
            frames.append(json.loads(ws.recv(timeout=20)))
    return frames


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "origin", ["http://127.0.0.1:9999", "https://127.0.0.1", "http://localhost:1"]
)
def test_a_signed_in_user_is_refused_from_a_foreign_origin(origin_server, session_cookie, origin):
    with pytest.raises(InvalidStatus) as excinfo:
        chat_from(origin_server, session_cookie, origin)
    assert excinfo.value.response.status_code == 403


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("which", ["site", "trusted"])
def test_a_signed_in_user_chats_from_the_exact_site_origin_or_a_trusted_one(
    origin_server, session_cookie, fake_openai, which
):
    fake_openai.stream_reply(["Hello ", "there."])
    origin = origin_server.http_url if which == "site" else TRUSTED
    frames = chat_from(origin_server, session_cookie, origin)
    kinds = [frame["type"] for frame in frames]
    # Deltas not sent yet may leave merged: one or two frames, exactly the reply's text.
    assert kinds[0] == "chat.started"
    assert kinds[-1] == "chat.completed"
    assert set(kinds[1:-1]) == {"chat.delta"}
    assert "".join(frame["text"] for frame in frames[1:-1]) == "Hello there."
