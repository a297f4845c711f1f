"""Two ASGI worker processes of one site share rate limits, quotas and metrics.

Two uvicorn processes of the demo project on the test database and the private Redis,
with Prometheus' multiprocess mode on (one ``PROMETHEUS_MULTIPROC_DIR``): one user
chats on both, alternately. Admitted messages never exceed the token bucket's capacity
(the refill is negligible), the plan's daily quota counts the messages of both
workers, and ``/metrics`` of either worker reports the turns of both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from tests.asgi_server import AsgiServer, server_env, start_servers

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "two-workers-scrape-token"
CAPACITY = 6
FAST_OFFLINE = {
    "BACKEND": "mpai.providers.offline.OfflineProvider",
    "OPTIONS": {"first_token_ms": 0, "tokens_per_second": 0, "reply": "Shared by both."},
}


def start_workers(redis_url: str, fake_openai_url: str, tmp_path: Any, **mpai: Any) -> list:
    env = {
        **server_env(redis_url, fake_openai_url),
        "DJANGO_SETTINGS_MODULE": "tests.e2e_settings",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "MPAI_TEST_SETTINGS": json.dumps(
            {"PROVIDER": FAST_OFFLINE, "METRICS_TOKEN": TOKEN, "RESPONSE_CACHE_ENABLED": False}
            | mpai
        ),
    }
    return start_servers(env)


@pytest.fixture
def workers(django_db_blocker, redis_server, fake_openai_url, tmp_path) -> Iterator[Any]:
    """Factory: two workers with these ``MPAI`` options; stopped at the end."""
    running: list[AsgiServer] = []

    def start(**mpai: Any) -> list[AsgiServer]:
        with django_db_blocker.unblock():
            pair = start_workers(redis_server.url, fake_openai_url, tmp_path, **mpai)
        running.extend(pair)
        return pair

    yield start
    for server in running:
        server.stop()


def login_cookie(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def chat(server: AsgiServer, cookie: str, content: str) -> dict[str, Any]:
    """One message on a new socket; return its final frame (or the refusal)."""
    with connect(
        server.ws_url,
        origin=server.http_url,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"sessionid={cookie}"},
        open_timeout=10,
    ) as ws:
        ws.send(json.dumps({"type": "chat.message", "content": content}))
        while True:
            frame = json.loads(ws.recv(timeout=30))
            if frame["type"] in ("chat.completed", "chat.error"):
                return frame


def turns_total(server: AsgiServer) -> float:
    body = requests.get(
        f"{server.http_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    body.raise_for_status()
    for family in text_string_to_metric_families(body.text):
        if family.name == "mpai_chat_turns":
            return sum(s.value for s in family.samples if s.name == "mpai_chat_turns_total")
    return 0.0


def test_the_rate_limit_is_exact_and_metrics_merge_across_two_workers(workers, user):
    a, b = workers(RATE_LIMIT={"CAPACITY": CAPACITY, "REFILL_RATE": 0.0001})
    cookie = login_cookie(user)
    finals = [chat((a, b)[i % 2], cookie, f"message {i}") for i in range(2 * CAPACITY)]

    admitted = [f for f in finals if f["type"] == "chat.completed"]
    refused = [f for f in finals if f["type"] == "chat.error"]
    assert len(admitted) == CAPACITY  # capacity + refill × elapsed (≈ 0.001)
    assert {f["code"] for f in refused} == {"rate_limited"}
    assert {f["status"] for f in admitted} == {"complete"}
    # Both workers admitted some and refused some: one bucket, not one per process.
    assert {i % 2 for i, f in enumerate(finals) if f["type"] == "chat.completed"} == {0, 1}
    assert {i % 2 for i, f in enumerate(finals) if f["type"] == "chat.error"} == {0, 1}
    # Either worker's /metrics reports the turns of both processes.
    assert turns_total(a) == turns_total(b) == CAPACITY


def test_a_daily_quota_counts_the_messages_of_both_workers(workers, user):
    a, b = workers(
        QUOTAS={
            "Monthly": {"messages_per_day": 3, "tokens_per_day": None, "tokens_per_month": None}
        }
    )
    cookie = login_cookie(user)
    finals = [chat((a, b)[i % 2], cookie, f"question {i}") for i in range(5)]
    assert [f["type"] for f in finals] == ["chat.completed"] * 3 + ["chat.error"] * 2
    assert {f["code"] for f in finals[3:]} == {"quota_exceeded"}
