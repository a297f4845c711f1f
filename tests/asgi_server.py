"""Run the demo project's ASGI app in a real uvicorn process on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests
from django.db import connection

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


class AsgiServer:
    """``uvicorn config.asgi:application`` in a subprocess with ``env`` added."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(f"/tmp/mpai-test-uvicorn-{os.getpid()}-{self.port}.log")

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/mpai/chat/"

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **self.env}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {self.log()}")
            try:
                requests.get(f"{self.http_url}/accounts/login/", timeout=1)
                return
            except (requests.ConnectionError, requests.Timeout):
                # Not listening yet, or its first answer is slow (a cold start on a busy
                # machine): ask again until the deadline.
                time.sleep(0.05)
        raise RuntimeError(f"uvicorn did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
            self._log.close()


def start_servers(env: dict[str, str], count: int = 2) -> list[AsgiServer]:
    """Start ``count`` worker processes of one site (``env``); all stopped on a failure."""
    started: list[AsgiServer] = []
    try:
        for _ in range(count):
            server = AsgiServer(env)
            server.start()
            started.append(server)
    except BaseException:
        for server in started:
            server.stop()
        raise
    return started


def server_env(redis_url: str, provider_url: str) -> dict[str, str]:
    """The demo project's environment for a server on the test database and Redis."""
    db = connection.settings_dict
    return {
        "DATABASE_URL": (
            f"postgres://{db['USER']}:{db['PASSWORD'] or 'postgres'}@"
            f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        ),
        "REDIS_URL": redis_url,
        "MPAI_PROVIDER_BASE_URL": provider_url,
        "MPAI_PROVIDER_API_KEY": "test-key",
        "MPAI_PROVIDER_MODEL": "fake-model",
        "DJANGO_SECRET_KEY": "tests-only-not-secret",
        "DJANGO_DEBUG": "0",
    }
