"""Smoke test: the embedded default (no DATABASE_URL, no REDIS_URL) serves a chat.

SQLite, local-memory cache, in-memory channel layer, eager Celery, offline provider:
what ``make run`` starts. Not the main suite, which runs on PostgreSQL and Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from websockets.sync.client import connect

from tests.asgi_server import ROOT, AsgiServer

SESSION_SCRIPT = """
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.auth import SESSION_KEY, BACKEND_SESSION_KEY, HASH_SESSION_KEY
user = get_user_model().objects.create_user("smoke", password="pw")
s = SessionStore()
s[SESSION_KEY] = str(user.pk)
s[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
s[HASH_SESSION_KEY] = user.get_session_auth_hash()
s.create()
print(s.session_key)
"""


@pytest.fixture
def embedded(tmp_path):
    env = {
        "MPAI_SQLITE_PATH": str(tmp_path / "db.sqlite3"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "REDIS_URL", "MPAI_PROVIDER"))
    }
    run = {"cwd": ROOT, "env": {**base, **env}, "check": True, "capture_output": True}
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], **run)
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", SESSION_SCRIPT], **run)
    session_key = out.stdout.decode().strip().splitlines()[-1]
    server = AsgiServer(env)
    server.env = {**env, "DATABASE_URL": "", "REDIS_URL": "", "MPAI_PROVIDER_BASE_URL": ""}
    server.start()
    yield server, session_key
    server.stop()


def test_embedded_default_answers_a_chat_over_the_websocket(embedded):
    server, session_key = embedded
    with connect(
        server.ws_url,
        origin=server.http_url,
        additional_headers={"Cookie": f"sessionid={session_key}"},
        open_timeout=10,
    ) as ws:
        ws.send(json.dumps({"type": "chat.message", "conversation": None, "content": "Hi!"}))
        started = json.loads(ws.recv(timeout=10))
        assert started["type"] == "chat.started"
        text = ""
        while True:
            frame = json.loads(ws.recv(timeout=30))
            if frame["type"] != "chat.delta":
                break
            text += frame["text"]
        assert frame["type"] == "chat.completed", frame
        assert frame["status"] == "complete"
        assert len(text) > 20
