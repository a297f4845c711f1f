"""OpenTelemetry spans of real turns (mpai.metrics.tracing), with an in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mpai import signals
from mpai.chat.pipeline import ChatPipeline
from mpai.chat.trace import Trace
from mpai.metrics import tracing
from mpai.providers.offline import OfflineProvider
from tests.chat.turning import drive

pytestmark = pytest.mark.django_db(transaction=True)

REPLY = "Your membership renews on the first of the month."


def mpai_with(**options: Any) -> override_settings:
    return override_settings(MPAI={**settings.MPAI, **options})


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.set_tracer_provider_for_tests(provider)
    try:
        yield spans
    finally:
        tracing.set_tracer_provider_for_tests(None)
        provider.shutdown()


@pytest.fixture
def user(make_user):
    return make_user()


def turn(user: Any) -> Any:
    pipe = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0, reply=REPLY))
    return drive(pipe.stream(user=user, content="When do I renew?"))


def test_the_receiver_is_connected_when_opentelemetry_is_installed() -> None:
    assert tracing.available()
    uids = [entry[0][0] for entry in signals.request_complete.receivers]
    assert "mpai.metrics.tracing.trace_turn" in uids


def test_a_turn_is_one_chat_span_with_its_stages_in_order(user, exporter) -> None:
    result = turn(user)
    assert result.status == "complete"
    spans = exporter.get_finished_spans()
    parents = [s for s in spans if s.parent is None]
    assert len(parents) == 1
    parent = parents[0]
    model = result.message.model
    assert model
    assert parent.name == f"chat {model}"
    assert parent.kind is SpanKind.CLIENT
    attributes = dict(parent.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == model
    assert attributes["gen_ai.provider.name"] == "mpai.offline"
    assert attributes["gen_ai.usage.input_tokens"] == result.message.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == result.message.completion_tokens
    if result.message.finish_reason:
        assert attributes["gen_ai.response.finish_reasons"] == (result.message.finish_reason,)
    assert attributes["mpai.cached"] is False
    assert attributes["mpai.replayed"] is False
    assert "error.type" not in attributes
    assert parent.status.status_code is not StatusCode.ERROR

    children = sorted(
        (s for s in spans if s.parent is not None), key=lambda s: (s.start_time, s.end_time)
    )
    assert [c.name for c in children] == [
        "mpai.context",
        "mpai.api_wait",
        "mpai.generation",
        "mpai.processing",
    ]
    assert parent.start_time is not None
    assert parent.end_time is not None
    previous_end = parent.start_time
    for child in children:
        assert child.parent is not None
        assert child.parent.span_id == parent.context.span_id
        assert child.context.trace_id == parent.context.trace_id
        assert child.start_time is not None
        assert child.end_time is not None
        assert parent.start_time <= child.start_time <= child.end_time <= parent.end_time
        assert child.start_time >= previous_end  # in order, not overlapping
        previous_end = child.end_time
    # Epoch nanoseconds, near now (not monotonic nanoseconds since boot).
    total_ms = (parent.end_time - parent.start_time) / 1e6
    assert total_ms == pytest.approx(result.timings_ms["total"], abs=0.01)


def test_no_span_while_tracing_is_false(user, exporter) -> None:
    with mpai_with(TRACING=False):
        assert turn(user).status == "complete"
    assert exporter.get_finished_spans() == ()


def test_an_error_sets_error_type(exporter) -> None:
    class Reply:
        model, prompt_tokens, completion_tokens, finish_reason = "m-1", 3, None, ""

    trace = Trace()
    trace.mark("context_built")
    trace.mark("request_complete")
    tracing.trace_turn(trace=trace, message=Reply(), status="error", error_code="provider_timeout")
    spans = exporter.get_finished_spans()
    (span,) = [s for s in spans if s.parent is None]
    assert [s.name for s in spans if s.parent is not None] == ["mpai.context"]
    assert span.name == "chat m-1"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "provider_timeout"
    assert span.attributes["gen_ai.usage.input_tokens"] == 3
    assert "gen_ai.usage.output_tokens" not in span.attributes
    assert span.status.status_code is StatusCode.ERROR


def test_without_a_configured_provider_nothing_is_built(user, monkeypatch) -> None:
    tracing.set_tracer_provider_for_tests(None)
    from opentelemetry import trace as otel_trace

    if not isinstance(otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider):
        pytest.skip("a global TracerProvider is set in this process")
    built: list[Any] = []
    monkeypatch.setattr(tracing, "turn_attributes", lambda **kw: built.append(kw) or {})
    assert turn(user).status == "complete"
    assert built == []
