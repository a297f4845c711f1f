"""OpenAIProvider over real HTTP against the fake OpenAI server (tests/fake_openai.py)."""

from __future__ import annotations

import email.utils
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from mpai.exceptions import (
    ContextLengthExceeded,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamError,
    ProviderTimeout,
    ProviderUnavailable,
)
from mpai.providers.base import ChatRequest, StreamChunk, Usage
from mpai.providers.openai import OpenAIProvider, OpenAIStream
from mpai.providers.sse import SSEEvent, SSEParser
from tests.redis_server import free_port
from tests.waiting import wait_until

if TYPE_CHECKING:
    from tests.fake_openai import FakeOpenAI


REQUEST = ChatRequest(model="test-model", messages=[{"role": "user", "content": "hi there"}])
MakeProvider = Callable[..., OpenAIProvider]


@pytest.fixture
def make_provider(fake_openai: FakeOpenAI) -> Iterator[MakeProvider]:
    """``make_provider(**options)``: a provider on the fake server with millisecond backoff."""
    made: list[OpenAIProvider] = []

    def make(**options: Any) -> OpenAIProvider:
        settings = {
            "base_url": fake_openai.base_url,
            "api_key": "sk-test",
            "backoff_initial": 0.001,
            "backoff_max": 0.005,
            "backoff_jitter": 0.001,
            "connect_timeout": 2.0,
            "read_timeout": 10.0,
            **options,
        }
        made.append(OpenAIProvider(**settings))
        return made[-1]

    yield make
    for provider in made:
        provider.close()


def read_all(stream: OpenAIStream) -> list[StreamChunk]:
    with stream:
        return list(stream)


def text_of(chunks: list[StreamChunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def delta(content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": {**d, **extra}, "finish_reason": finish}
    return {"object": "chat.completion.chunk", "model": "m", "choices": [choice]}


# --- streaming -------------------------------------------------------------------------


def test_stream_yields_text_parts_in_order(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.stream_reply(["Hel", "lo", ", ", "world"])
    chunks = read_all(make_provider().open_stream(REQUEST))
    assert [c.text for c in chunks if c.text] == ["Hel", "lo", ", ", "world"]
    assert text_of(chunks) == "Hello, world"


def test_role_only_first_chunk_is_skipped(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.stream_reply(["x"], usage=None)
    chunks = read_all(make_provider().open_stream(REQUEST))
    assert chunks == [StreamChunk("x"), StreamChunk("", "stop")]


def test_usage_is_read_from_final_chunk_with_empty_choices(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_reply(["a", "b"], usage=(12, 4))
    chunks = read_all(make_provider().open_stream(REQUEST))
    assert chunks[-1] == StreamChunk("", None, Usage(12, 4, 16))
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls", "content_filter"])
def test_each_finish_reason_is_reported(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, reason: str
):
    fake_openai.stream_reply(["a"], finish_reason=reason)
    chunks = read_all(make_provider().open_stream(REQUEST))
    assert [c.finish_reason for c in chunks if c.finish_reason] == [reason]


def test_legacy_and_unknown_finish_reasons_are_normalised(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_raw([sse(delta("a", "function_call")), sse(delta("b", "eos_token"))])
    chunks = read_all(make_provider().open_stream(REQUEST))
    assert [c.finish_reason for c in chunks] == ["tool_calls", "stop"]


def test_request_body_asks_for_a_stream_with_usage(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    request = ChatRequest(
        model="m1", messages=REQUEST.messages, max_tokens=50, temperature=0.2, extra={"seed": 7}
    )
    read_all(make_provider(extra_headers={"X-Site": "s1"}).open_stream(request))
    body = fake_openai.requests[-1]
    assert body == {
        "model": "m1",
        "messages": REQUEST.messages,
        "max_tokens": 50,
        "temperature": 0.2,
        "seed": 7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = fake_openai.request_headers[-1]
    assert headers["Authorization"] == "Bearer sk-test"
    assert headers["Accept"] == "text/event-stream"
    assert headers["X-Site"] == "s1"


def test_include_usage_false_sends_no_stream_options(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_reply(["a"], usage=(3, 1))
    chunks = read_all(make_provider(include_usage=False, api_key="").open_stream(REQUEST))
    assert "stream_options" not in fake_openai.requests[-1]
    assert "Authorization" not in fake_openai.request_headers[-1]
    assert all(c.usage is None for c in chunks)


def test_stream_exposes_headers_and_attempts(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    with make_provider().open_stream(REQUEST) as stream:
        assert stream.attempts == 1
        assert stream.status == 200
        assert stream.headers["x-fake-openai"] == "1"
        assert text_of(list(stream)) == "Hello from the fake provider."


def test_comments_crlf_multiline_data_and_empty_deltas_are_handled(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    role = json.dumps(delta(None, role="assistant"))
    two_lines = json.dumps(delta("B"), indent=1).replace("\n", "\r\ndata: ")
    fake_openai.stream_raw(
        [
            ": keep-alive\r\n\r\n",
            f"retry: 3000\r\nid: 1\r\ndata: {role}\r\n\r\n",
            f"data: {json.dumps(delta(''))}\r\n\r\n",
            f"data: {json.dumps(delta('A'))}\r",  # the CRLF is split across two writes
            "\n\r\n",
            f"data: {two_lines}\r\n\r\n:comment\n\n",
            f"data: {json.dumps(delta(None))}\n\n",
            f"data:{json.dumps(delta('C', 'stop'))}\r\rdata: [DONE]\r\r",
        ],
    )
    chunks = read_all(make_provider().open_stream(REQUEST))
    assert chunks == [StreamChunk("A"), StreamChunk("B"), StreamChunk("C", "stop")]


@pytest.mark.parametrize("as_event", [False, True], ids=["error-object", "event-error"])
def test_error_in_stream_raises_stream_error_with_message(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, as_event: bool
):
    fake_openai.stream_then_error(["par", "tial"], "The model is overloaded", as_event=as_event)
    got: list[str] = []
    stream = make_provider().open_stream(REQUEST)
    with stream, pytest.raises(ProviderStreamError) as info:
        got.extend(chunk.text for chunk in stream)
    assert got == ["par", "tial"]
    assert info.value.provider_message == "The model is overloaded"
    assert info.value.code == "provider_error"


def test_vllm_style_error_object_carries_its_status(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    error = {"object": "error", "message": "out of KV cache", "type": "x", "code": 500}
    fake_openai.stream_raw([sse(delta("a")), sse(error)])
    with pytest.raises(ProviderStreamError) as info:
        read_all(make_provider().open_stream(REQUEST))
    assert (info.value.status, info.value.provider_message) == (500, "out of KV cache")


def test_unparseable_stream_data_raises_stream_error(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_raw(["data: {not json\n\n"])
    with pytest.raises(ProviderStreamError) as info:
        read_all(make_provider().open_stream(REQUEST))
    assert info.value.provider_message == "unparseable data: {not json"


def test_stream_without_done_ends_cleanly(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.stream_reply(["a", "b"], done=False)
    chunks = read_all(make_provider().open_stream(REQUEST))
    assert text_of(chunks) == "ab"
    assert chunks[-1].usage is not None


def test_refusal_deltas_are_streamed_as_text_marked_refusal(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_refusal(["I can't ", "help with that."], usage=(5, 4))
    chunks = read_all(make_provider().open_stream(REQUEST))
    assert chunks == [
        StreamChunk("I can't ", refusal=True),
        StreamChunk("help with that.", refusal=True),
        StreamChunk("", "stop"),
        StreamChunk("", usage=Usage(5, 4, 9)),
    ]


def test_an_ordinary_reply_has_no_chunk_marked_refusal(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_reply(["fine"])  # its role chunk carries "refusal": null
    chunks = read_all(make_provider().open_stream(REQUEST))
    assert text_of(chunks) == "fine"
    assert not any(chunk.refusal for chunk in chunks)


def test_non_streamed_refusal_is_the_completion_text(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_refusal(["No."])
    reply = make_provider().complete(REQUEST)
    assert (reply.text, reply.refusal, reply.finish_reason) == ("No.", True, "stop")


def test_refusal_from_a_server_ignoring_the_stream_flag_is_marked(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    message = {"role": "assistant", "content": None, "refusal": "No."}
    body = {"object": "chat.completion", "choices": [{"message": message, "finish_reason": "stop"}]}
    fake_openai.stream_raw([json.dumps(body)], content_type="application/json")
    chunks = read_all(make_provider().open_stream(REQUEST))
    assert chunks == [StreamChunk("No.", "stop", refusal=True)]


def test_body_ending_without_finish_reason_or_done_raises_unavailable_after_the_text(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_truncated(["Half ", "a reply"])
    got: list[str] = []
    stream = make_provider().open_stream(REQUEST)
    with stream, pytest.raises(ProviderUnavailable) as info:
        got.extend(chunk.text for chunk in stream)
    assert got == ["Half ", "a reply"]
    assert info.value.status is None
    assert "ended before the reply finished" in (info.value.provider_message or "")


@pytest.mark.parametrize("finish", ["stop", "length"])
def test_body_ending_after_a_finish_reason_without_done_is_complete(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, finish: str
):
    fake_openai.stream_truncated(["Whole ", "reply"], finish_reason=finish)
    chunks = read_all(make_provider().open_stream(REQUEST))
    assert chunks == [StreamChunk("Whole "), StreamChunk("reply"), StreamChunk("", finish)]


def test_done_without_a_finish_reason_is_complete(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_raw([sse(delta("a")), "data: [DONE]\n\n"])
    assert read_all(make_provider().open_stream(REQUEST)) == [StreamChunk("a")]


@pytest.mark.parametrize(
    "pieces",
    [[], [sse(delta(None, role="assistant"))], [": keep-alive\n\n"]],
    ids=["empty-body", "role-chunk-only", "comment-only"],
)
def test_body_ending_with_no_reply_at_all_raises_unavailable(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, pieces: list[str]
):
    fake_openai.stream_raw(pieces)
    with pytest.raises(ProviderUnavailable):
        read_all(make_provider().open_stream(REQUEST))


def test_body_cut_inside_the_finish_reason_event_raises_unavailable(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    # An unfinished event is discarded (WHATWG SSE), so its finish_reason never arrived.
    fake_openai.stream_raw([sse(delta("a")), f"data: {json.dumps(delta(None, 'stop'))}\n"])
    with pytest.raises(ProviderUnavailable):
        read_all(make_provider().open_stream(REQUEST))


def test_connection_dropped_mid_stream_raises_unavailable(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_then_disconnect(["a"])
    got: list[str] = []
    stream = make_provider().open_stream(REQUEST)
    with stream, pytest.raises(ProviderUnavailable) as info:
        got.extend(chunk.text for chunk in stream)
    assert got == ["a"]
    assert info.value.status is None


def test_read_timeout_mid_stream_raises_provider_timeout(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_reply(["late"], delay_s=30)
    stream = make_provider(read_timeout=0.2).open_stream(REQUEST)
    with pytest.raises(ProviderTimeout):
        read_all(stream)


def test_server_ignoring_stream_flag_still_gives_the_reply(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    body = {
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"content": "whole"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }
    fake_openai.stream_raw([json.dumps(body)], content_type="application/json")
    chunks = read_all(make_provider().open_stream(REQUEST))
    assert chunks == [StreamChunk("whole", "stop", Usage(2, 1, 3))]


# --- close() and threads ---------------------------------------------------------------


def test_close_from_another_thread_stops_an_iteration_blocked_on_a_read(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_raw([sse(delta("first")), sse(delta("never"))], delay_s=60)
    stream = make_provider(read_timeout=60).open_stream(REQUEST)
    got: list[str] = []
    errors: list[BaseException] = []
    first = threading.Event()

    def consume() -> None:
        try:
            for chunk in stream:
                got.append(chunk.text)
                first.set()
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    assert first.wait(10)
    wait_until(lambda: stream._reading, timeout=10, what="a read blocked on the socket")
    stream.close()
    reader.join(10)
    assert not reader.is_alive()
    assert (got, errors) == (["first"], [])


def test_close_before_iterating_yields_nothing(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    stream = make_provider().open_stream(REQUEST)
    stream.close()
    stream.close()
    assert list(stream) == []


def test_close_inside_the_loop_ends_iteration(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.stream_reply(["a", "b", "c"])
    got = []
    with make_provider().open_stream(REQUEST) as stream:
        for chunk in stream:
            got.append(chunk.text)
            stream.close()
    assert got == ["a"]


def test_one_provider_serves_concurrent_streams_from_threads(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stream_reply(["x", "y", "z"], delay_s=0.01)
    provider = make_provider()
    results: list[str] = []

    def run() -> None:
        results.append(text_of(read_all(provider.open_stream(REQUEST))))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == ["xyz"] * 8


# --- retries ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 408, 409, 429])
def test_retryable_status_is_retried_then_succeeds(
    fake_openai: FakeOpenAI, make_provider: MakeProvider, status: int
):
    fake_openai.respond_error(status, "try again", times=2)
    fake_openai.stream_reply(["ok"])
    stream = make_provider(max_retries=3).open_stream(REQUEST)
    assert stream.attempts == 3
    assert text_of(read_all(stream)) == "ok"
    assert len(fake_openai.requests) == 3


def test_timeout_before_headers_is_retried_then_succeeds(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stall(30)
    fake_openai.stream_reply(["ok"])
    stream = make_provider(read_timeout=0.2).open_stream(REQUEST)
    assert stream.attempts == 2
    assert text_of(read_all(stream)) == "ok"


def test_retry_after_seconds_is_waited(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.respond_error(429, "slow down", headers={"Retry-After": "0.3"})
    start = time.monotonic()
    stream = make_provider().open_stream(REQUEST)
    assert time.monotonic() - start >= 0.3
    assert stream.attempts == 2
    stream.close()


def test_retry_after_http_date_is_waited(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    until = math.floor(time.time()) + 1  # whole seconds, as an HTTP-date has
    date = email.utils.formatdate(until, usegmt=True)
    fake_openai.respond_error(503, "maintenance", headers={"Retry-After": date})
    stream = make_provider().open_stream(REQUEST)
    assert time.time() >= until - 0.01  # float rounding of the two clocks
    assert stream.attempts == 2
    stream.close()


def test_retry_after_ms_header_is_waited(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.respond_error(429, "slow down", headers={"retry-after-ms": "250"})
    start = time.monotonic()
    make_provider().open_stream(REQUEST).close()
    assert time.monotonic() - start >= 0.25


def test_retry_after_above_the_maximum_raises_at_once(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.respond_error(429, "quota", headers={"Retry-After": "120"}, times=5)
    with pytest.raises(ProviderRateLimited) as info:
        make_provider(retry_after_max=60).open_stream(REQUEST)
    assert info.value.retry_after == 120
    assert len(fake_openai.requests) == 1


def test_rate_limited_after_retries_carries_providers_retry_after(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.respond_error(429, "Rate limit reached", headers={"Retry-After": "0.01"}, times=9)
    with pytest.raises(ProviderRateLimited) as info:
        make_provider(max_retries=2).open_stream(REQUEST)
    error = info.value
    assert (error.status, error.provider_message, error.retry_after) == (
        429,
        "Rate limit reached",
        0.01,
    )
    assert error.code == "provider_rate_limited"
    assert len(fake_openai.requests) == 3


def test_rate_limited_without_retry_after_has_none(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.respond_error(429, "busy", times=9)
    with pytest.raises(ProviderRateLimited) as info:
        make_provider(max_retries=1).open_stream(REQUEST)
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    ("status", "error_class", "code"),
    [
        (500, ProviderUnavailable, "provider_unavailable"),
        (502, ProviderUnavailable, "provider_unavailable"),
        (503, ProviderUnavailable, "provider_unavailable"),
        (409, ProviderUnavailable, "provider_unavailable"),
        (408, ProviderTimeout, "provider_timeout"),
    ],
)
def test_exhausted_retries_map_to_error_types(
    fake_openai: FakeOpenAI,
    make_provider: MakeProvider,
    status: int,
    error_class: type[ProviderError],
    code: str,
):
    fake_openai.respond_error(status, f"failure {status}", times=9)
    with pytest.raises(error_class) as info:
        make_provider(max_retries=2).open_stream(REQUEST)
    assert (info.value.code, info.value.status) == (code, status)
    assert info.value.provider_message == f"failure {status}"
    assert len(fake_openai.requests) == 3


@pytest.mark.parametrize(
    ("status", "error_class", "code"),
    [
        (400, ProviderBadRequest, "provider_bad_request"),
        (401, ProviderAuthError, "provider_auth"),
        (403, ProviderAuthError, "provider_auth"),
        (404, ProviderBadRequest, "provider_bad_request"),
        (422, ProviderBadRequest, "provider_bad_request"),
    ],
)
def test_client_errors_are_not_retried_and_keep_the_message(
    fake_openai: FakeOpenAI,
    make_provider: MakeProvider,
    status: int,
    error_class: type[ProviderError],
    code: str,
):
    fake_openai.respond_error(status, "Incorrect API key provided", code="invalid_api_key")
    with pytest.raises(error_class) as info:
        make_provider().open_stream(REQUEST)
    assert (info.value.code, info.value.status) == (code, status)
    assert info.value.provider_message == "Incorrect API key provided"
    assert len(fake_openai.requests) == 1


def test_context_length_code_raises_context_length_exceeded(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.respond_error(400, "Too many tokens.", code="context_length_exceeded")
    with pytest.raises(ContextLengthExceeded) as info:
        make_provider().open_stream(REQUEST)
    assert (info.value.code, info.value.status) == ("context_length_exceeded", 400)
    assert info.value.provider_message == "Too many tokens."


def test_context_length_message_raises_context_length_exceeded(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    message = "This model's maximum context length is 4096 tokens. However, you requested 5000."
    fake_openai.respond_error(400, message)
    with pytest.raises(ContextLengthExceeded) as info:
        make_provider().open_stream(REQUEST)
    assert info.value.provider_message == message


def test_plain_text_error_body_becomes_the_provider_message(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.respond_error(502, "Bad Gateway (nginx)", raw=True)
    with pytest.raises(ProviderUnavailable) as info:
        make_provider(max_retries=0).open_stream(REQUEST)
    assert (info.value.status, info.value.provider_message) == (502, "Bad Gateway (nginx)")


def test_connection_refused_raises_unavailable_after_retries(make_provider: MakeProvider):
    provider = make_provider(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=2)
    with pytest.raises(ProviderUnavailable) as info:
        provider.open_stream(REQUEST)
    assert info.value.status is None
    assert info.value.provider_message


def test_timeout_before_headers_after_retries_raises_provider_timeout(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stall(30, times=2)
    with pytest.raises(ProviderTimeout):
        make_provider(read_timeout=0.2, max_retries=1).open_stream(REQUEST)
    assert len(fake_openai.requests) == 2


# --- complete() ------------------------------------------------------------------------


def test_complete_returns_text_finish_reason_and_usage(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.json_reply("Hello there", finish_reason="length", usage=(9, 2))
    completion = make_provider().complete(REQUEST)
    assert completion.text == "Hello there"
    assert completion.finish_reason == "length"
    assert completion.usage == Usage(9, 2, 11)
    assert completion.model == "test-model"
    body = fake_openai.requests[-1]
    assert body["stream"] is False
    assert "stream_options" not in body


def test_complete_retries_then_succeeds(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.respond_error(503, "overloaded", times=2)
    fake_openai.json_reply("fine")
    assert make_provider().complete(REQUEST).text == "fine"
    assert len(fake_openai.requests) == 3


def test_complete_maps_auth_errors(fake_openai: FakeOpenAI, make_provider: MakeProvider):
    fake_openai.respond_error(401, "bad key")
    with pytest.raises(ProviderAuthError) as info:
        make_provider().complete(REQUEST)
    assert info.value.provider_message == "bad key"


def test_complete_read_timeout_is_retried_then_raises_provider_timeout(
    fake_openai: FakeOpenAI, make_provider: MakeProvider
):
    fake_openai.stall(30, times=9)
    with pytest.raises(ProviderTimeout):
        make_provider(read_timeout=0.2, max_retries=1).complete(REQUEST)
    assert len(fake_openai.requests) == 2


# --- the fake server from another process -----------------------------------------------


def test_fake_server_answers_a_provider_in_another_process(fake_openai: FakeOpenAI):
    fake_openai.stream_reply(["from ", "afar"])
    script = (
        "import sys\n"
        "from mpai.providers.base import ChatRequest\n"
        "from mpai.providers.openai import OpenAIProvider\n"
        "request = ChatRequest(model='m', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "with OpenAIProvider(base_url=sys.argv[1]).open_stream(request) as stream:\n"
        "    print(''.join(chunk.text for chunk in stream))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, fake_openai.base_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.strip() == "from afar"
    assert fake_openai.requests[-1]["messages"] == [{"role": "user", "content": "hi"}]


# --- configuration ---------------------------------------------------------------------


def test_base_url_must_be_http() -> None:
    with pytest.raises(ImproperlyConfigured):
        OpenAIProvider(base_url="localhost:8080/v1")


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(TypeError):
        OpenAIProvider(base_url="http://127.0.0.1:1/v1", retries=3)  # type: ignore[call-arg]


# --- the SSE parser on its own ---------------------------------------------------------


def test_sse_parser_handles_split_bytes_bom_and_bare_cr() -> None:
    parser = SSEParser()
    stream = "\ufeffevent: error\rdata: a\r\ndata:  b\n\nid: 7\ndata\n\n: c\n\ndata: é\n\n"
    events: list[SSEEvent] = []
    for byte in stream.encode():  # one byte at a time: splits lines, CRLFs and UTF-8
        events.extend(parser.feed(bytes([byte])))
    assert events == [
        SSEEvent("a\n b", "error"),
        SSEEvent("", "message", "7"),
        SSEEvent("é", "message", "7"),
    ]


def test_sse_parser_discards_an_unfinished_event_at_the_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n\ndata: 2\n") == [SSEEvent("1")]
