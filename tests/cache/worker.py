"""A second process for the cross-process tests, driven by JSON lines.

Run as ``python -m tests.cache.worker '<config json>'``; the config holds ``location``
and ``params`` (a CACHES entry for a LayeredCache) and ``db_name`` (the test
database). It prints ``{"ready": true}`` once its invalidation listener is subscribed,
then answers one JSON line per request line:

- ``{"op": "get", "key": k}`` -> ``{"value": v}``
- ``{"op": "set", "key": k, "value": v, "timeout": s}`` -> ``{}``
- ``{"op": "delete", "key": k}`` -> ``{"deleted": bool}``
- ``{"op": "watch", "key": k, "expected": v, "timeout": s}`` -> ``{"seen": bool,
  "reads": n}``: reads ``k`` until it equals ``v``
- ``{"op": "compute_once", "key": k, "redis": url, "counter": c, "go": g, "sleep": s}``
  -> ``{"value": v}``: waits for key ``g`` in Redis (a start barrier), then
  ``get_or_set(k, f)`` where ``f`` INCRs ``c`` and sleeps ``s`` seconds
- ``{"op": "stats"}`` -> ``{"stats": ..., "stampede": ...}``
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class Peer:
    """The parent's handle on a worker process."""

    def __init__(self, config: dict[str, Any]) -> None:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.cache.worker", json.dumps(config)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self.read(30.0)
        assert ready == {"ready": True}, ready

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert readable, f"no answer from the worker within {timeout} s"
        line = self.process.stdout.readline()
        assert line, f"the worker exited (code {self.process.poll()})"
        return dict(json.loads(line))

    def send(self, **request: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def request(self, wait: float = 30.0, **request: Any) -> dict[str, Any]:
        """Send one request and return the answer (waiting at most ``wait`` s)."""
        self.send(**request)
        return self.read(wait)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def _serve(config: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    settings.DATABASES["default"]["NAME"] = config["db_name"]
    settings.DATABASES["default"]["TEST"] = {"NAME": config["db_name"]}
    django.setup()
    import redis

    from mpai.cache import LayeredCache

    cache = LayeredCache(config["location"], config["params"])
    cache.wait_ready(20.0)
    _reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "get":
            _reply({"value": cache.get(request["key"])})
        elif op == "set":
            cache.set(request["key"], request["value"], request.get("timeout", 300))
            _reply({})
        elif op == "delete":
            _reply({"deleted": cache.delete(request["key"])})
        elif op == "watch":
            deadline = time.monotonic() + request["timeout"]
            reads = 0
            while True:
                reads += 1
                if cache.get(request["key"]) == request["expected"]:
                    _reply({"seen": True, "reads": reads})
                    break
                if time.monotonic() > deadline:
                    _reply({"seen": False, "reads": reads})
                    break
                time.sleep(0.001)
        elif op == "compute_once":
            client = redis.Redis.from_url(request["redis"])
            while not client.exists(request["go"]):
                time.sleep(0.001)

            def compute(client: Any = client, request: dict[str, Any] = request) -> str:
                client.incr(request["counter"])
                time.sleep(request["sleep"])
                return f"computed by {os.getpid()}"

            _reply({"value": cache.get_or_set(request["key"], compute, 300)})
        elif op == "stats":
            _reply({"stats": cache.stats(), "stampede": cache.stampede_stats()})
        else:
            _reply({"error": f"unknown op {op!r}"})


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
