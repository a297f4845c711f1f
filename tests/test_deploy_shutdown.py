"""Graceful shutdown under the deployment's process managers (README, "Deployment").

The demo project runs as production runs it, several worker processes behind one
port: gunicorn with uvicorn workers (``config/Dockerfile``'s command) and
``uvicorn --workers``. SIGTERM to the manager, while a reply streams, ends every
worker through the ASGI lifespan (mpai.lifespan): the reply is saved as ``cancelled``
with the text streamed so far, and the manager exits 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests
from django.test import Client

from mpai.models import Message
from tests.asgi_server import ROOT, AsgiServer, server_env
from tests.test_websocket_e2e import open_ws, send

pytestmark = pytest.mark.django_db(transaction=True)

# The deploy extra is part of the test extra: both managers are always tested.
GUNICORN = shutil.which("gunicorn", path=os.path.dirname(sys.executable))


class ManagedServer(AsgiServer):
    """The demo under ``command`` (a process manager with 2 workers) on a free port."""

    def __init__(self, env: dict[str, str], command: list[str]) -> None:
        super().__init__(env)
        self.command = [part.format(port=self.port) for part in command]

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **self.env}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command[0]} exited: {self.log()}")
            try:
                requests.get(f"{self.http_url}/accounts/login/", timeout=1)
                return
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.05)  # not listening yet: ask again until the deadline
        raise RuntimeError(f"{self.command[0]} did not start: {self.log()}")


COMMANDS = {
    "gunicorn+uvicorn": [
        GUNICORN or "gunicorn",  # not found: the test fails, the extra is missing
        "config.asgi:application",
        "-k",
        "uvicorn_worker.UvicornWorker",
        "--workers",
        "2",
        "--bind",
        "127.0.0.1:{port}",
        "--graceful-timeout",
        "30",
    ],
    "uvicorn --workers": [
        sys.executable,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--workers",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--timeout-graceful-shutdown",
        "30",
    ],
}


@pytest.fixture
def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


@pytest.mark.parametrize("manager", sorted(COMMANDS))
def test_sigterm_saves_the_streaming_reply_as_cancelled(
    manager, django_db_setup, redis_server, fake_openai, session_cookie
) -> None:
    server = ManagedServer(server_env(redis_server.url, fake_openai.base_url), COMMANDS[manager])
    fake_openai.stream_reply(["slow "] * 200, delay_s=0.1)
    server.start()
    try:
        assert server.process is not None
        with open_ws(server, session_cookie) as ws:
            send(ws, type="chat.message", conversation=None, content="long story please")
            started = json.loads(ws.recv(timeout=20))
            json.loads(ws.recv(timeout=20))  # the first delta
            server.process.send_signal(signal.SIGTERM)
            code = server.process.wait(timeout=60)
    finally:
        server.stop()
    assert code == 0, server.log()
    saved = Message.objects.get(pk=started["message"])
    assert saved.status == "cancelled", server.log()
    assert saved.content.startswith("slow ")
    assert len(saved.content) < len("slow ") * 200
