"""Prometheus metrics of mpai, built with prometheus-client.

The GenAI metrics follow the OpenTelemetry semantic conventions for generative AI
metrics (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-metrics/) translated
to Prometheus names as the OpenTelemetry Prometheus exporter does (dots become
underscores, the unit ``s`` becomes the suffix ``_seconds``; see
https://opentelemetry.io/docs/specs/otel/compatibility/prometheus_and_openmetrics/):

- ``gen_ai.client.operation.duration`` → ``gen_ai_client_operation_duration_seconds``
  (histogram, s; labels ``gen_ai_operation_name``, ``gen_ai_request_model``,
  ``error_type``, ``""`` when the operation did not fail).
- ``gen_ai.client.token.usage`` → ``gen_ai_client_token_usage`` (histogram of tokens;
  labels ``gen_ai_operation_name``, ``gen_ai_request_model``, ``gen_ai_token_type`` =
  ``input`` | ``output``). The unit ``{token}`` is an annotation and adds no suffix.
- ``gen_ai.client.operation.time_to_first_chunk`` →
  ``gen_ai_client_operation_time_to_first_chunk_seconds`` (histogram, s; labels
  ``gen_ai_operation_name``, ``gen_ai_request_model``). The client-side counterpart of
  ``gen_ai.server.time_to_first_token``: mpai is a client of its provider and measures
  the first streamed chunk (delta), not a token inside the model server.

mpai's own metrics: ``mpai_chat_turns_total{outcome}``,
``mpai_stage_duration_seconds{stage}``, ``mpai_cache_requests_total{layer,result}``,
``mpai_rate_limited_total``, ``mpai_provider_errors_total{code}``, ``mpai_active_turns``
and ``mpai_websocket_connections`` (gauges),
``mpai_http_request_duration_seconds{route,method,status_class}`` (recorded by
:class:`mpai.metrics.middleware.ResponseTimeMiddleware`), and for tool calls
(``MPAI["TOOLS"]``) ``mpai_tool_calls_total{tool,outcome}`` and
``mpai_tool_call_duration_seconds{tool}`` (fed by the ``tool_called`` signal,
:func:`observe_tool_call`).

Every label has a bounded set of values: outcomes and error codes are mpai's error codes
(anything else is reported as ``other``), stages are :data:`~mpai.metrics.record.STAGES`,
models come from the site's settings, routes are URL patterns (never raw paths). No user,
conversation or message ids.

Multiprocess mode (https://prometheus.github.io/client_python/multiprocess/): when the
environment variable ``PROMETHEUS_MULTIPROC_DIR`` is set before the process starts,
prometheus-client writes every value to files in that directory and :func:`exposition`
collects all processes' files with ``MultiProcessCollector`` on a fresh
``CollectorRegistry``. The gauges use ``multiprocess_mode="livesum"``: the sum over the
live processes (call ``prometheus_client.multiprocess.mark_process_dead(pid)`` when a
worker exits).

All functions here are thread-safe (prometheus-client locks its values) and cheap enough
to call on every turn or request.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from mpai.metrics.record import STAGES, TurnRecord

logger = logging.getLogger(__name__)

__all__ = [
    "CONTENT_TYPE_LATEST",
    "cache_request",
    "exposition",
    "observe_http_request",
    "observe_tool_call",
    "observe_turn",
    "rate_limited",
    "turn_ended",
    "turn_started",
    "websocket_closed",
    "websocket_opened",
]

#: Bucket upper bounds (s) for latencies of LLM calls and stages: 10 ms to 60 s.
DURATION_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
)

#: Bucket upper bounds (tokens): the boundaries the GenAI conventions advise for
#: ``gen_ai.client.token.usage`` (powers of 4 from 1 to 4**13).
TOKEN_BUCKETS = tuple(float(4**n) for n in range(14))

#: Bucket upper bounds (s) for HTTP requests of the site: 5 ms to 60 s.
HTTP_BUCKETS = (0.005, *DURATION_BUCKETS)

#: ``gen_ai.operation.name`` of a chat turn.
OPERATION_CHAT = "chat"

#: Outcomes of a turn that are not errors.
SUCCESS_OUTCOMES = frozenset({"complete", "cancelled"})

#: Label value for an outcome or error code mpai does not know (keeps labels bounded).
OTHER = "other"

GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_request_model")

OPERATION_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "GenAI operation duration (s): request sent to the provider until the last chunk or "
    "the error (OpenTelemetry gen_ai.client.operation.duration).",
    [*GENAI_LABELS, "error_type"],
    buckets=DURATION_BUCKETS,
)
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Number of input and output tokens used per operation, as the provider reported "
    "them (OpenTelemetry gen_ai.client.token.usage).",
    [*GENAI_LABELS, "gen_ai_token_type"],
    buckets=TOKEN_BUCKETS,
)
TIME_TO_FIRST_CHUNK = Histogram(
    "gen_ai_client_operation_time_to_first_chunk_seconds",
    "Time (s) from the request sent to the provider to the first streamed chunk "
    "(OpenTelemetry gen_ai.client.operation.time_to_first_chunk).",
    list(GENAI_LABELS),
    buckets=DURATION_BUCKETS,
)
CHAT_TURNS = Counter(
    "mpai_chat_turns",
    "Finished chat turns by outcome (complete, cancelled or the error code).",
    ["outcome"],
)
STAGE_DURATION = Histogram(
    "mpai_stage_duration_seconds",
    "Duration (s) of each stage of a chat turn (the stages of timings_ms).",
    ["stage"],
    buckets=DURATION_BUCKETS,
)
CACHE_REQUESTS = Counter(
    "mpai_cache_requests",
    "Lookups in mpai's layered cache by layer and result (hit or miss).",
    ["layer", "result"],
)
RATE_LIMITED = Counter(
    "mpai_rate_limited",
    "Chat requests refused by the rate limit.",
)
PROVIDER_ERRORS = Counter(
    "mpai_provider_errors",
    "Turns that ended with a provider error, by error code.",
    ["code"],
)
ACTIVE_TURNS = Gauge(
    "mpai_active_turns",
    "Chat turns running now.",
    multiprocess_mode="livesum",
)
WEBSOCKET_CONNECTIONS = Gauge(
    "mpai_websocket_connections",
    "Open chat websockets.",
    multiprocess_mode="livesum",
)
HTTP_REQUEST_DURATION = Histogram(
    "mpai_http_request_duration_seconds",
    "HTTP request duration (s) by URL route (the pattern, not the path), method and "
    "status class (2xx, 4xx, ...).",
    ["route", "method", "status_class"],
    buckets=HTTP_BUCKETS,
)

TOOL_CALLS = Counter(
    "mpai_tool_calls",
    "Tool calls the model made, by tool and outcome (ok, cancelled or the error code).",
    ["tool", "outcome"],
)
TOOL_CALL_DURATION = Histogram(
    "mpai_tool_call_duration_seconds",
    "Duration (s) of each tool call, from its start to its result, timeout or cancel.",
    ["tool"],
    buckets=DURATION_BUCKETS,
)

#: A tool's own ToolError code becomes a label only when it looks like one.
_TOOL_CODE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_known_codes: frozenset[str] | None = None


def _error_codes() -> frozenset[str]:
    """The ``code`` of every :class:`mpai.exceptions.MpaiError` subclass (computed once)."""
    global _known_codes
    if _known_codes is None:
        from mpai.exceptions import MpaiError

        codes = {MpaiError.code}
        pending = list(MpaiError.__subclasses__())
        while pending:
            cls = pending.pop()
            codes.add(cls.code)
            pending.extend(cls.__subclasses__())
        _known_codes = frozenset(codes)
    return _known_codes


def _outcome_label(outcome: str) -> str:
    """``outcome`` when it is a success outcome or a known error code, else ``other``."""
    if outcome in SUCCESS_OUTCOMES or outcome in _error_codes():
        return outcome
    return OTHER


def _is_provider_error(outcome: str) -> bool:
    return outcome.startswith("provider_") or outcome == "context_length_exceeded"


def observe_turn(record: TurnRecord) -> None:
    """Record one finished turn (called once per turn, from any thread).

    - ``mpai_chat_turns_total{outcome}`` += 1.
    - ``mpai_stage_duration_seconds{stage}``: each stage of ``record.timings_ms`` (ms,
      converted to s) that is one of :data:`STAGES`.
    - ``mpai_provider_errors_total{code}`` += 1 when the outcome starts with
      ``provider_`` or is ``context_length_exceeded``.
    - The GenAI metrics, only for turns that called the provider (``model`` set, neither
      cached nor replayed):

      - operation duration = ``total − context − processing`` (request sent until the
        last chunk or the error), with ``error_type`` = the outcome unless it is
        ``complete`` or ``cancelled`` (then ``""``); skipped without ``total``;
      - time to first chunk = ``first_token`` (only when the turn received one);
      - token usage, ``input`` and ``output``, for each count the provider sent.
    """
    outcome = _outcome_label(record.outcome)
    CHAT_TURNS.labels(outcome=outcome).inc()
    timings = record.timings_ms
    for stage in STAGES:
        value = timings.get(stage)
        if value is not None:
            STAGE_DURATION.labels(stage=stage).observe(max(0.0, value) / 1000.0)
    if _is_provider_error(record.outcome):
        PROVIDER_ERRORS.labels(code=outcome).inc()
    try:
        sample_cache_layers()
    except Exception:  # a cache's stats() failing must not lose the turn's metrics
        logger.debug("mpai metrics: sampling the cache layers failed", exc_info=True)

    if not record.model or record.cached or record.replayed:
        return
    model = record.model
    total = timings.get("total")
    if total is not None:
        operation_ms = total - timings.get("context", 0.0) - timings.get("processing", 0.0)
        error_type = "" if outcome in SUCCESS_OUTCOMES else outcome
        OPERATION_DURATION.labels(
            gen_ai_operation_name=OPERATION_CHAT,
            gen_ai_request_model=model,
            error_type=error_type,
        ).observe(max(0.0, operation_ms) / 1000.0)
    first_token = timings.get("first_token")
    if first_token is not None:
        TIME_TO_FIRST_CHUNK.labels(
            gen_ai_operation_name=OPERATION_CHAT, gen_ai_request_model=model
        ).observe(max(0.0, first_token) / 1000.0)
    for token_type, count in (("input", record.input_tokens), ("output", record.output_tokens)):
        if count is not None:
            TOKEN_USAGE.labels(
                gen_ai_operation_name=OPERATION_CHAT,
                gen_ai_request_model=model,
                gen_ai_token_type=token_type,
            ).observe(max(0, count))


def observe_tool_call(tool: str, status: str, duration_ms: float, error_code: str | None) -> None:
    """Record one ended tool call (from any thread).

    - ``mpai_tool_calls_total{tool,outcome}`` += 1, ``outcome`` ``ok``, ``cancelled``
      or the error code (``mpai.tools.execution``'s or the tool's own; one that is not
      snake_case, up to 40 characters, is ``other``);
    - ``mpai_tool_call_duration_seconds{tool}``: ``duration_ms`` converted to s.

    ``tool`` is the called name when it is a configured tool, else ``other`` (the model
    may call any name; labels stay bounded).
    """
    from mpai.tools.registry import configured_tools

    try:
        known = tool in configured_tools()
    except Exception:  # a broken MPAI["TOOLS"] fails turns, not metrics
        known = False
    label = tool if known else OTHER
    if status in ("ok", "cancelled"):
        outcome = status
    else:
        code = error_code or "error"
        outcome = code if _TOOL_CODE.match(code) else OTHER
    TOOL_CALLS.labels(tool=label, outcome=outcome).inc()
    TOOL_CALL_DURATION.labels(tool=label).observe(max(0.0, float(duration_ms)) / 1000.0)


def observe_http_request(route: str, method: str, status: int, seconds: float) -> None:
    """Record one HTTP request: ``route`` is a URL pattern or view name (never the raw
    path), ``status`` the HTTP status code, ``seconds`` the duration (s)."""
    method = method.upper() if method.upper() in _HTTP_METHODS else OTHER
    status_class = f"{status // 100}xx" if 100 <= status <= 599 else OTHER
    HTTP_REQUEST_DURATION.labels(route=route, method=method, status_class=status_class).observe(
        max(0.0, seconds)
    )


def websocket_opened() -> None:
    """A chat websocket was accepted: ``mpai_websocket_connections`` += 1."""
    WEBSOCKET_CONNECTIONS.inc()


def websocket_closed() -> None:
    """An accepted chat websocket closed: ``mpai_websocket_connections`` −= 1."""
    WEBSOCKET_CONNECTIONS.dec()


def turn_started() -> None:
    """A chat turn started: ``mpai_active_turns`` += 1."""
    ACTIVE_TURNS.inc()


def turn_ended() -> None:
    """A chat turn ended, however it ended: ``mpai_active_turns`` −= 1."""
    ACTIVE_TURNS.dec()


def cache_request(layer: str, result: str, count: int = 1) -> None:
    """``count`` lookups in cache layer ``layer`` (a layer name: ``memory``, ``redis``,
    ``database``) with ``result`` ``hit`` or ``miss``:
    ``mpai_cache_requests_total{layer,result}`` += count."""
    if count > 0:
        CACHE_REQUESTS.labels(layer=layer, result=result).inc(count)


#: Seconds between two samples of the layered caches' counters.
CACHE_SAMPLE_SECONDS = 1.0
_cache_seen: dict[tuple[str, str, str], int] = {}
_cache_sampled_at = 0.0
_cache_lock = threading.Lock()


def sample_cache_layers(*, force: bool = False) -> None:
    """Add what each layered cache counted since the last sample to
    ``mpai_cache_requests_total`` (at most once per :data:`CACHE_SAMPLE_SECONDS` unless
    ``force``).

    The cache package knows nothing of metrics: its layers count hits and misses
    themselves (``LayeredCache.stats()``), and this turns the counts' growth into
    counter increments. Called after each recorded turn (on the metrics thread) and
    before each exposition, so the counters are right in multiprocess mode too: every
    process adds its own growth to its own files. Only caches already in use are read.
    """
    global _cache_sampled_at
    now = time.monotonic()
    if not force and now - _cache_sampled_at < CACHE_SAMPLE_SECONDS:
        return
    from django.core.cache import caches

    from mpai.cache import LayeredCache

    with _cache_lock:
        _cache_sampled_at = now
        for cache in caches.all(initialized_only=True):
            if not isinstance(cache, LayeredCache):
                continue
            alias = str(id(cache))
            for layer, counters in cache.stats().items():
                for result, field in (("hit", "hits"), ("miss", "misses")):
                    value = int(counters.get(field, 0) or 0)
                    key = (alias, layer, result)
                    # A cache rebuilt (new settings) starts again from 0: count afresh.
                    grown = value - _cache_seen.get(key, 0)
                    _cache_seen[key] = value
                    cache_request(layer, result, grown if grown >= 0 else value)


def rate_limited() -> None:
    """A request was refused by the rate limit: ``mpai_rate_limited_total`` += 1."""
    RATE_LIMITED.inc()


def multiprocess_dir() -> str | None:
    """The multiprocess directory (``$PROMETHEUS_MULTIPROC_DIR``), or None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> bytes:
    """The metrics in the Prometheus text format (``CONTENT_TYPE_LATEST``), UTF-8.

    In multiprocess mode, the values of every process that wrote to
    ``$PROMETHEUS_MULTIPROC_DIR``, collected on a fresh registry (the default registry
    would double count, per prometheus-client's docs); otherwise the default registry.
    """
    if multiprocess_dir():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        sample_cache_layers(force=True)
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    sample_cache_layers(force=True)
    return generate_latest(REGISTRY)
