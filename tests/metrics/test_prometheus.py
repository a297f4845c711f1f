"""The Prometheus exposition (mpai.metrics.prometheus, /metrics) and X-Response-Time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from mpai.metrics import prometheus
from mpai.metrics.record import TurnRecord

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "scrape-token-for-tests"
MPAI_WITH_TOKEN = {"METRICS_TOKEN": TOKEN}


def record(**changes: Any) -> TurnRecord:
    figures: dict[str, Any] = {
        "timings_ms": {
            "context": 2.0,
            "api_wait": 40.0,
            "first_token": 120.0,
            "generation": 900.0,
            "processing": 5.0,
            "total": 1027.0,
        },
        "outcome": "complete",
        "model": "test-model",
        "cached": False,
        "replayed": False,
        "input_tokens": 300,
        "output_tokens": 42,
        "ended_at": 1_700_000_000.0,
    }
    figures.update(changes)
    return TurnRecord(**figures)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_sum(family: Any, sample_name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in family.samples
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    )


# --- observe_turn and the exposition ---------------------------------------------------


def test_observe_turn_updates_the_turn_metrics() -> None:
    model = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "test-model"}
    before = {
        "complete": value("mpai_chat_turns_total", outcome="complete"),
        "timeout": value("mpai_chat_turns_total", outcome="provider_timeout"),
        "provider": value("mpai_provider_errors_total", code="provider_timeout"),
        "context_length": value("mpai_provider_errors_total", code="context_length_exceeded"),
        "ok": value("gen_ai_client_operation_duration_seconds_count", **model, error_type=""),
        "failed": value(
            "gen_ai_client_operation_duration_seconds_count", **model, error_type="provider_timeout"
        ),
        "input": value("gen_ai_client_token_usage_sum", **model, gen_ai_token_type="input"),
        "ttfc": value("gen_ai_client_operation_time_to_first_chunk_seconds_count", **model),
        "stage": value("mpai_stage_duration_seconds_count", stage="total"),
        "other": value("mpai_chat_turns_total", outcome="other"),
    }

    prometheus.observe_turn(record())
    prometheus.observe_turn(record(cached=True))  # no provider call: no GenAI figures
    prometheus.observe_turn(
        record(
            outcome="provider_timeout",
            timings_ms={"context": 2.0, "total": 30_002.0},
            input_tokens=None,
            output_tokens=None,
        )
    )
    prometheus.observe_turn(
        record(outcome="context_length_exceeded", timings_ms={}, input_tokens=None)
    )
    prometheus.observe_turn(record(outcome="some-new-code/123", input_tokens=None))

    assert value("mpai_chat_turns_total", outcome="complete") - before["complete"] == 2
    assert value("mpai_chat_turns_total", outcome="provider_timeout") - before["timeout"] == 1
    assert value("mpai_chat_turns_total", outcome="other") - before["other"] == 1
    assert value("mpai_provider_errors_total", code="provider_timeout") - before["provider"] == 1
    assert (
        value("mpai_provider_errors_total", code="context_length_exceeded")
        - before["context_length"]
        == 1
    )
    ok = value("gen_ai_client_operation_duration_seconds_count", **model, error_type="")
    assert ok - before["ok"] == 1
    failed = value(
        "gen_ai_client_operation_duration_seconds_count", **model, error_type="provider_timeout"
    )
    assert failed - before["failed"] == 1
    input_sum = value("gen_ai_client_token_usage_sum", **model, gen_ai_token_type="input")
    assert input_sum - before["input"] == 300  # the cached turn adds nothing
    ttfc = value("gen_ai_client_operation_time_to_first_chunk_seconds_count", **model)
    assert ttfc - before["ttfc"] == 2  # complete and "other"; not cached, not without one
    assert value("mpai_stage_duration_seconds_count", stage="total") - before["stage"] == 4


def test_gauges_and_counters_helpers() -> None:
    active = value("mpai_active_turns")
    sockets = value("mpai_websocket_connections")
    hits = value("mpai_cache_requests_total", layer="response", result="hit")
    limited = value("mpai_rate_limited_total")

    prometheus.turn_started()
    prometheus.websocket_opened()
    prometheus.websocket_opened()
    prometheus.cache_request("response", "hit")
    prometheus.rate_limited()
    assert value("mpai_active_turns") == active + 1
    assert value("mpai_websocket_connections") == sockets + 2
    assert value("mpai_cache_requests_total", layer="response", result="hit") == hits + 1
    assert value("mpai_rate_limited_total") == limited + 1

    prometheus.turn_ended()
    prometheus.websocket_closed()
    prometheus.websocket_closed()
    assert value("mpai_active_turns") == active
    assert value("mpai_websocket_connections") == sockets


EXPECTED_FAMILIES = {
    "gen_ai_client_operation_duration_seconds",
    "gen_ai_client_token_usage",
    "gen_ai_client_operation_time_to_first_chunk_seconds",
    "mpai_chat_turns",
    "mpai_stage_duration_seconds",
    "mpai_cache_requests",
    "mpai_rate_limited",
    "mpai_provider_errors",
    "mpai_active_turns",
    "mpai_websocket_connections",
    "mpai_http_request_duration_seconds",
}


@override_settings(MPAI=MPAI_WITH_TOKEN)
def test_metrics_endpoint_parses_and_names_the_metrics(client: Client) -> None:
    prometheus.observe_turn(record())
    prometheus.observe_turn(record(outcome="provider_unavailable"))
    prometheus.cache_request("response", "miss")
    prometheus.rate_limited()

    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 200
    assert response["Content-Type"] == prometheus.CONTENT_TYPE_LATEST
    found = families(response.content.decode())
    assert set(found) >= EXPECTED_FAMILIES
    assert found["gen_ai_client_operation_duration_seconds"].type == "histogram"
    assert found["mpai_chat_turns"].type == "counter"
    assert found["mpai_active_turns"].type == "gauge"
    buckets = {
        s.labels["le"]
        for s in found["mpai_stage_duration_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert {"0.01", "60.0", "+Inf"} <= buckets


# --- access ----------------------------------------------------------------------------


@override_settings(MPAI=MPAI_WITH_TOKEN)
def test_anonymous_gets_401_with_a_bearer_challenge(client: Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


@override_settings(MPAI=MPAI_WITH_TOKEN)
def test_a_wrong_token_gets_401(client: Client) -> None:
    response = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_no_token_configured_refuses_every_token(client: Client) -> None:
    response = client.get("/metrics", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 401


@pytest.mark.django_db
def test_signed_in_non_staff_gets_403(client: Client, make_user: Callable[..., Any]) -> None:
    client.force_login(make_user())
    assert client.get("/metrics").status_code == 403


@pytest.mark.django_db
@override_settings(MPAI=MPAI_WITH_TOKEN)
def test_the_token_lets_a_non_staff_session_read(
    client: Client, make_user: Callable[..., Any]
) -> None:
    client.force_login(make_user())
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


@pytest.mark.django_db
def test_staff_user_gets_the_metrics(client: Client, make_user: Callable[..., Any]) -> None:
    client.force_login(make_user(is_staff=True))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "mpai_chat_turns" in families(response.content.decode())


# --- X-Response-Time and the route histogram ------------------------------------------


@pytest.mark.django_db
def test_response_time_header_and_route_label(
    client: Client, make_user: Callable[..., Any]
) -> None:
    labels = {"route": "api/mpai/v1/chat-history/", "method": "GET", "status_class": "2xx"}
    before = value("mpai_http_request_duration_seconds_count", **labels)
    client.force_login(make_user())

    response = client.get("/api/mpai/v1/chat-history/?page=1&per_page=5")

    assert response.status_code == 200
    header = response["X-Response-Time"]
    assert header.endswith("ms")
    assert float(header.removesuffix("ms")) >= 0
    assert value("mpai_http_request_duration_seconds_count", **labels) == before + 1
    routes = {
        s.labels["route"]
        for s in families(prometheus.exposition().decode())[
            "mpai_http_request_duration_seconds"
        ].samples
    }
    # Never the raw path with its query (a regex route such as the admin's holds "(?P<").
    assert not any("page=" in r or "chat-history/?" in r for r in routes)


def test_unmatched_paths_share_one_route_label(client: Client) -> None:
    labels = {"route": "<unmatched>", "method": "GET", "status_class": "4xx"}
    before = value("mpai_http_request_duration_seconds_count", **labels)
    response = client.get("/no/such/page/12345")
    assert response.status_code == 404
    assert "X-Response-Time" in response
    assert value("mpai_http_request_duration_seconds_count", **labels) == before + 1
    routes = {
        s.labels["route"]
        for s in families(prometheus.exposition().decode())[
            "mpai_http_request_duration_seconds"
        ].samples
    }
    assert "no/such/page/12345" not in routes
    assert "/no/such/page/12345" not in routes


async def test_response_time_header_under_async(async_client: Any) -> None:
    response = await async_client.get("/no/such/async/page")
    assert response.status_code == 404
    assert response["X-Response-Time"].endswith("ms")


# --- multiprocess mode -----------------------------------------------------------------

_SETUP = """
import django, os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()
from mpai.metrics import prometheus
from mpai.metrics.record import TurnRecord
"""

_WORKER = """
prometheus.observe_turn(TurnRecord(
    timings_ms={"context": 1.0, "first_token": 100.0, "generation": 400.0, "total": 505.0},
    outcome="complete", model="mp-model", cached=False, replayed=False,
    input_tokens=10, output_tokens=int(sys.argv[1]), ended_at=0.0,
))
prometheus.observe_turn(TurnRecord(
    timings_ms={"total": 5.0}, outcome="provider_timeout", model="mp-model", cached=False,
    replayed=False, input_tokens=None, output_tokens=None, ended_at=0.0,
))
prometheus.websocket_opened()
print(os.getpid())
"""

_EXPOSE = """
sys.stdout.write(prometheus.exposition().decode())
"""

_MARK_DEAD_AND_EXPOSE = """
from prometheus_client import multiprocess
for pid in sys.argv[1:]:
    multiprocess.mark_process_dead(int(pid))
sys.stdout.write(prometheus.exposition().decode())
"""


def _run(code: str, env: dict[str, str], *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SETUP + code), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_two_worker_processes_are_summed(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    env.pop("prometheus_multiproc_dir", None)

    pids = [_run(_WORKER, env, "7").strip(), _run(_WORKER, env, "5").strip()]
    found = families(_run(_EXPOSE, env))

    assert sample_sum(found["mpai_chat_turns"], "mpai_chat_turns_total", outcome="complete") == 2
    assert (
        sample_sum(
            found["mpai_provider_errors"], "mpai_provider_errors_total", code="provider_timeout"
        )
        == 2
    )
    tokens = found["gen_ai_client_token_usage"]
    assert sample_sum(tokens, "gen_ai_client_token_usage_sum", gen_ai_token_type="output") == 12
    assert sample_sum(tokens, "gen_ai_client_token_usage_count", gen_ai_token_type="input") == 2
    duration = found["gen_ai_client_operation_duration_seconds"]
    assert sample_sum(duration, "gen_ai_client_operation_duration_seconds_count") == 4
    assert (
        sample_sum(
            duration,
            "gen_ai_client_operation_duration_seconds_count",
            error_type="provider_timeout",
        )
        == 2
    )
    # livesum gauges: both workers' files are there until mark_process_dead removes them.
    sockets = found["mpai_websocket_connections"]
    assert sample_sum(sockets, "mpai_websocket_connections") == 2

    after = families(_run(_MARK_DEAD_AND_EXPOSE, env, *pids))
    assert sample_sum(after["mpai_websocket_connections"], "mpai_websocket_connections") == 0
    assert sample_sum(after["mpai_chat_turns"], "mpai_chat_turns_total", outcome="complete") == 2


@pytest.mark.django_db
def test_cache_layer_lookups_become_cache_request_counters() -> None:
    from django.core.cache import caches

    layered = {
        "default": {"BACKEND": "mpai.cache.LayeredCache", "LOCATION": "", "KEY_PREFIX": "prom"}
    }
    with override_settings(CACHES=layered):
        cache = caches["default"]
        prometheus.sample_cache_layers(force=True)  # the baseline of this new cache
        before = {
            (layer, result): value("mpai_cache_requests_total", layer=layer, result=result)
            for layer in ("memory", "database")
            for result in ("hit", "miss")
        }
        assert cache.get("prom-key") is None  # a miss in memory, then in the database
        cache.set("prom-key", "v")
        assert cache.get("prom-key") == "v"  # a memory hit
        prometheus.sample_cache_layers(force=True)
        grown = {
            key: value("mpai_cache_requests_total", layer=key[0], result=key[1]) - count
            for key, count in before.items()
        }
        assert grown == {
            ("memory", "hit"): 1,
            ("memory", "miss"): 1,
            ("database", "hit"): 0,
            ("database", "miss"): 1,
        }
        prometheus.sample_cache_layers(force=True)  # nothing new: nothing added
        assert value("mpai_cache_requests_total", layer="memory", result="hit") == (
            before[("memory", "hit")] + 1
        )
        cache.clear()
