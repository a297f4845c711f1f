"""Optional OpenTelemetry spans of each chat turn (the ``mpai[otel]`` extra).

When ``opentelemetry`` is importable, :func:`connect_tracing` (called from ``MpaiConfig.ready``)
connects :func:`trace_turn` to ``mpai.signals.request_complete``; when it is
not, nothing is connected and nothing is imported. The receiver does nothing while
``MPAI["TRACING"]`` is False or while the site has configured no TracerProvider (the
API's default proxy provider records nothing), so the cost without a provider is one
settings read and one ``isinstance`` per turn.

Each turn becomes one span after the GenAI semantic conventions
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/): name
``"chat <model>"`` (``{gen_ai.operation.name} {gen_ai.request.model}``), kind CLIENT,
attributes ``gen_ai.operation.name`` (``"chat"``), ``gen_ai.provider.name`` (the provider's
``provider_name``: ``"openai"``, ``"mpai.offline"``), ``gen_ai.request.model``,
``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens`` (tokens, when the provider
sent its usage), ``gen_ai.response.finish_reasons`` (when known), ``error.type``
(https://opentelemetry.io/docs/specs/semconv/attributes-registry/error/; the mpai error
code) on errors, and ``mpai.cached`` / ``mpai.replayed``. Its children, one per stage
(``mpai.context``, ``mpai.api_wait``, ``mpai.generation``, ``mpai.processing``; kind
INTERNAL), are built from the trace's timestamps, as ``chat.completed``'s
``timings_ms`` measures them.

Spans are built at ``request_complete``, after the final event left, with explicit
start and end times: the trace's ``time.monotonic_ns()`` marks plus one offset
(:data:`EPOCH_OFFSET_NS`, measured at import) give epoch nanoseconds. Nothing is built
on the streaming path while the reply is streamed.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import Any

from mpai.chat import trace as points
from mpai.conf import mpai_settings

logger = logging.getLogger("mpai.metrics")

#: ``time.time_ns() - time.monotonic_ns()`` at import (ns): a monotonic mark plus this
#: is the epoch time in ns that OpenTelemetry expects (one offset for every span, so
#: a wall-clock step never reorders a turn's spans).
EPOCH_OFFSET_NS: int = time.time_ns() - time.monotonic_ns()

#: The instrumentation scope's name (the tracer's name).
SCOPE = "mpai"

#: Child spans: stage → (start point, end point), as ``Trace.timings_ms`` measures them.
STAGE_POINTS: dict[str, tuple[str, str]] = {
    "context": (points.START, points.CONTEXT_BUILT),
    "api_wait": (points.API_REQUEST_SENT, points.API_RESPONSE_RECEIVED),
    "generation": (points.FIRST_DELTA, points.LAST_DELTA),
    "processing": (points.LAST_DELTA, points.SAVED),
}

_otel: Any = False  # False: not imported yet; None: unavailable; else opentelemetry.trace
_provider_for_tests: Any = None
_tracers: dict[int, Any] = {}


def available() -> bool:
    """True when the OpenTelemetry API can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):
        return False


def _api() -> Any:
    """Return ``opentelemetry.trace``, imported on first use (None when absent)."""
    global _otel
    if _otel is False:
        try:
            from opentelemetry import trace as otel_trace
        except ImportError:
            _otel = None
        else:
            _otel = otel_trace
    return _otel


def set_tracer_provider_for_tests(provider: Any) -> None:
    """Use ``provider`` instead of the global TracerProvider (None: the global again).

    OpenTelemetry's global provider can be set once per process; tests pass their own.
    """
    global _provider_for_tests
    _provider_for_tests = provider
    _tracers.clear()


def _tracer(otel: Any) -> Any:
    """Return mpai's tracer of the configured provider, or None when none is configured."""
    provider = _provider_for_tests or otel.get_tracer_provider()
    if isinstance(provider, otel.ProxyTracerProvider | otel.NoOpTracerProvider):
        return None  # the site configured no SDK provider: nothing would be recorded
    tracer = _tracers.get(id(provider))
    if tracer is None:
        tracer = _tracers[id(provider)] = otel.get_tracer(SCOPE, tracer_provider=provider)
    return tracer


def epoch_ns(monotonic_ns: int) -> int:
    """Convert a ``time.monotonic_ns()`` mark (ns) to epoch nanoseconds."""
    return monotonic_ns + EPOCH_OFFSET_NS


def turn_attributes(
    *, trace: Any, message: Any, status: str, error_code: str | None
) -> dict[str, Any]:
    """Return the turn span's attributes (GenAI semantic conventions, plus ``mpai.*``)."""
    model = getattr(message, "model", "") or ""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "mpai.cached": bool(getattr(trace, "cached", False)),
        "mpai.replayed": bool(getattr(trace, "replayed", False)),
    }
    if model:
        attributes["gen_ai.request.model"] = model
    provider_name = getattr(trace, "provider_name", "")
    if provider_name:
        attributes["gen_ai.provider.name"] = provider_name
    input_tokens = getattr(message, "prompt_tokens", None)
    output_tokens = getattr(message, "completion_tokens", None)
    if input_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = int(input_tokens)
    if output_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = int(output_tokens)
    finish_reason = getattr(message, "finish_reason", "") or ""
    if finish_reason:
        attributes["gen_ai.response.finish_reasons"] = (finish_reason,)
    if status == "error":
        attributes["error.type"] = error_code or "error"
    return attributes


def emit(*, trace: Any, message: Any, status: str, error_code: str | None) -> Any:
    """Build the turn's span and its stage children; return the parent (None: no tracer)."""
    otel = _api()
    if otel is None:
        return None
    tracer = _tracer(otel)
    if tracer is None:
        return None
    marks: dict[str, int] = trace.marks
    start = marks.get(points.START, time.monotonic_ns())
    end = marks.get(points.REQUEST_COMPLETE) or time.monotonic_ns()
    attributes = turn_attributes(trace=trace, message=message, status=status, error_code=error_code)
    model = attributes.get("gen_ai.request.model")
    name = f"chat {model}" if model else "chat"
    parent = tracer.start_span(
        name,
        kind=otel.SpanKind.CLIENT,
        attributes=attributes,
        start_time=epoch_ns(start),
    )
    try:
        context = otel.set_span_in_context(parent)
        skip_api = trace.cached or trace.replayed
        for stage, (begin, finish) in STAGE_POINTS.items():
            if begin not in marks or finish not in marks or (skip_api and stage == "api_wait"):
                continue
            child_start = min(max(marks[begin], start), end)
            child_end = min(max(marks[finish], child_start), end)
            child = tracer.start_span(
                f"mpai.{stage}",
                context=context,
                kind=otel.SpanKind.INTERNAL,
                attributes={"mpai.stage": stage},
                start_time=epoch_ns(child_start),
            )
            child.end(end_time=epoch_ns(child_end))
        if status == "error":
            parent.set_status(otel.Status(otel.StatusCode.ERROR, error_code or "error"))
    finally:
        parent.end(end_time=epoch_ns(end))
    return parent


def trace_turn(
    *,
    trace: Any,
    message: Any,
    status: str,
    error_code: str | None = None,
    **kwargs: Any,
) -> None:
    """Receiver of ``request_complete``: emit the turn's spans while ``MPAI["TRACING"]``."""
    if mpai_settings.TRACING is False:
        return
    try:
        emit(trace=trace, message=message, status=status, error_code=error_code)
    except Exception:
        logger.exception("mpai tracing: could not emit the turn's spans")


def connect_tracing() -> bool:
    """Connect :func:`trace_turn` when OpenTelemetry is installed (one dispatch_uid).

    Returns whether it was connected; without OpenTelemetry nothing is.
    """
    if not available():
        return False
    from mpai import signals

    signals.request_complete.connect(trace_turn, dispatch_uid="mpai.metrics.tracing.trace_turn")
    return True
