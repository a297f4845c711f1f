"""The pipeline's tool loop over real HTTP: OpenAIProvider against the fake server.

The fake scripts the model (tests/fake_openai.py): first a reply asking for tool
calls, then the answer; the tools are tests/tools/loop_tools.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import REGISTRY

from mpai import signals
from mpai.chat.history import load_history
from mpai.chat.pipeline import ChatPipeline
from mpai.chat.turns import Delta, Event, Finished, Started, ToolEvent
from mpai.models import Message
from mpai.providers.openai import OpenAIProvider
from tests.tools import loop_tools
from tests.waiting import wait_until

if TYPE_CHECKING:
    from tests.fake_openai import FakeOpenAI

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def tools(configure: Callable[..., None]) -> Iterator[None]:
    loop_tools.reset()
    configure(loop_tools.ALL, RESPONSE_CACHE_ENABLED=False)
    yield
    loop_tools.reset()  # opens the old gate: no tool thread outlives the test


@pytest.fixture
def pipeline(fake_openai: FakeOpenAI) -> Iterator[ChatPipeline]:
    provider = OpenAIProvider(
        base_url=fake_openai.base_url, api_key="sk-test", backoff_initial=0.001, read_timeout=10
    )
    yield ChatPipeline(provider)
    provider.close()


def events_of(pipeline: ChatPipeline, user: Any, content: str, **kwargs: Any) -> list[Event]:
    with pipeline.stream(user=user, content=content, **kwargs) as stream:
        return list(stream)


def result_of(events: list[Event]) -> Any:
    assert isinstance(events[-1], Finished)
    return events[-1].result


def kinds(events: list[Event]) -> list[str]:
    """Event kinds with consecutive deltas merged: e.g. started, tool:started, ..."""
    out: list[str] = []
    for event in events:
        kind = (
            "started"
            if isinstance(event, Started)
            else "delta"
            if isinstance(event, Delta)
            else f"tool:{event.status}"
            if isinstance(event, ToolEvent)
            else "finished"
        )
        if not (out and kind == "delta" and out[-1] == "delta"):
            out.append(kind)
    return out


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta))


def test_one_call_runs_and_its_result_reaches_the_second_request(pipeline, fake_openai, user):
    arguments = json.dumps({"text": "hello"})
    fake_openai.stream_tool_calls(
        [{"id": "call_echo", "name": "echo", "arguments": arguments}], pieces=4, usage=(10, 3)
    )
    fake_openai.stream_reply(["It says ", "hello."], usage=(20, 4))

    events = events_of(pipeline, user, "Echo hello please")
    result = result_of(events)

    assert kinds(events) == ["started", "tool:started", "tool:ok", "delta", "finished"]
    assert result.status == "complete"
    assert result.error is None
    assert text_of(events) == result.message.content == "It says hello."
    first, second = fake_openai.requests
    assert [t["function"]["name"] for t in first["tools"]] == [
        "echo",
        "refuse",
        "slow",
        "wait_for_gate",
        "meet",
    ]
    assert first["tool_choice"] == second["tool_choice"] == "auto"
    assert second["tools"] == first["tools"]
    assert second["messages"][: len(first["messages"])] == first["messages"]
    content = json.dumps({"text": "hello", "user": user.username})
    assert second["messages"][len(first["messages"]) :] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_echo",
                    "type": "function",
                    "function": {"name": "echo", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_echo", "content": content},
    ]
    saved = Message.objects.get(pk=result.message.pk)
    assert saved.content == "It says hello."
    assert saved.finish_reason == "stop"
    assert (saved.prompt_tokens, saved.completion_tokens) == (30, 7)  # both requests
    (record,) = saved.tool_calls
    assert record["id"] == "call_echo"
    assert record["name"] == "echo"
    assert record["arguments"] == arguments
    assert record["status"] == "ok"
    assert record["content"] == content
    assert record["error_code"] is None
    assert record["duration_ms"] >= 0
    started, ended = [e for e in events if isinstance(e, ToolEvent)]
    assert (started.name, started.call_id, started.status) == ("echo", "call_echo", "started")
    assert started.duration_ms is None
    assert (ended.call_id, ended.status) == ("call_echo", "ok")
    assert ended.duration_ms == pytest.approx(record["duration_ms"], abs=0.001)


def test_two_parallel_calls_run_at_once_and_both_results_follow(pipeline, fake_openai, user):
    fake_openai.stream_tool_calls(
        [
            {"id": "call_a", "name": "meet", "arguments": '{"who": "a"}'},
            {"id": "call_b", "name": "meet", "arguments": '{"who": "b"}'},
        ],
        pieces=3,
    )
    fake_openai.stream_reply(["Both met."])
    events = events_of(pipeline, user, "Meet twice")
    result = result_of(events)
    assert result.status == "complete"
    assert kinds(events) == [
        "started",
        "tool:started",
        "tool:started",
        "tool:ok",
        "tool:ok",
        "delta",
        "finished",
    ]
    tail = fake_openai.requests[1]["messages"][-3:]
    assert [call["id"] for call in tail[0]["tool_calls"]] == ["call_a", "call_b"]
    assert tail[1:] == [
        {"role": "tool", "tool_call_id": "call_a", "content": '{"met": "a"}'},
        {"role": "tool", "tool_call_id": "call_b", "content": '{"met": "b"}'},
    ]
    saved = Message.objects.get(pk=result.message.pk)
    assert [r["status"] for r in saved.tool_calls] == ["ok", "ok"]


@pytest.mark.parametrize(
    ("name", "arguments", "code"),
    [
        ("refuse", '{"what": "order 7"}', "not_found"),  # the tool's own ToolError
        ("echo", '{"text": 5}', "invalid_arguments"),
        ("echo", '{"text": "x"', "invalid_json"),
        ("no_such_tool", "{}", "unknown_tool"),
    ],
)
def test_a_failed_call_is_an_error_result_the_model_sees(
    pipeline, fake_openai, user, name, arguments, code
):
    fake_openai.stream_tool_calls([{"id": "call_x", "name": name, "arguments": arguments}])
    fake_openai.stream_reply(["Sorry, that failed."])
    events = events_of(pipeline, user, "Try it")
    result = result_of(events)
    assert result.status == "complete"
    assert result.message.content == "Sorry, that failed."
    (ended,) = [e for e in events if isinstance(e, ToolEvent) and e.status != "started"]
    assert (ended.name, ended.status, ended.error_code) == (name, "error", code)
    tool_message = fake_openai.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["tool_call_id"] == "call_x"
    assert json.loads(tool_message["content"])["error"]["code"] == code
    (record,) = Message.objects.get(pk=result.message.pk).tool_calls
    assert (record["status"], record["error_code"]) == ("error", code)


def test_a_call_past_its_timeout_is_a_timeout_error(pipeline, fake_openai, user):
    fake_openai.stream_tool_calls([{"id": "call_s", "name": "slow", "arguments": "{}"}])
    fake_openai.stream_reply(["It took too long."])
    result = result_of(events_of(pipeline, user, "Be slow"))
    assert result.status == "complete"
    (record,) = result.message.tool_calls
    assert (record["status"], record["error_code"]) == ("error", "timeout")
    assert 150 <= record["duration_ms"] < 5000
    assert json.loads(fake_openai.requests[1]["messages"][-1]["content"])["error"]["code"] == (
        "timeout"
    )


def test_the_iteration_limit_ends_the_turn_with_an_error(pipeline, fake_openai, user, configure):
    configure(loop_tools.ALL, TOOL_MAX_ITERATIONS=2)
    fake_openai.stream_tool_calls(
        [{"id": "again", "name": "echo", "arguments": '{"text": "x"}'}], times=None
    )
    events = events_of(pipeline, user, "Loop forever")
    result = result_of(events)
    assert len(fake_openai.requests) == 3  # two rounds of calls, then one more ask
    assert result.status == "error"
    assert result.error is not None
    assert result.error.code == "tool_iterations_exceeded"
    assert result.error.detail
    assert kinds(events) == ["started", *["tool:started", "tool:ok"] * 2, "finished"]
    saved = Message.objects.get(pk=result.message.pk)
    assert saved.status == "error"
    assert saved.error_code == "tool_iterations_exceeded"
    assert len(saved.tool_calls) == 2
    # The follow-ups hold every earlier round: assistant + tool message per round.
    assert [m["role"] for m in fake_openai.requests[2]["messages"][-4:]] == [
        "assistant",
        "tool",
        "assistant",
        "tool",
    ]


def test_text_beside_the_calls_is_part_of_the_reply(pipeline, fake_openai, user):
    fake_openai.stream_tool_calls(
        [{"id": "c1", "name": "echo", "arguments": '{"text": "x"}'}], parts=["Let me check."]
    )
    fake_openai.stream_reply(["Done."])
    events = events_of(pipeline, user, "Check")
    result = result_of(events)
    assert kinds(events) == ["started", "delta", "tool:started", "tool:ok", "delta", "finished"]
    assert text_of(events) == result.message.content == "Let me check.\n\nDone."
    assert Message.objects.get(pk=result.message.pk).content == "Let me check.\n\nDone."
    assert fake_openai.requests[1]["messages"][-2]["content"] == "Let me check."


def test_cancel_during_a_tool_call_stops_the_loop(pipeline, fake_openai, user):
    fake_openai.stream_tool_calls([{"id": "g", "name": "wait_for_gate", "arguments": "{}"}])
    fake_openai.stream_reply(["never asked"])
    stream = pipeline.stream(user=user, content="Wait for the gate")

    def cancel_once_running() -> None:  # the stop button, pressed from another thread
        if loop_tools.entered.wait(10):
            stream.cancel()

    canceller = threading.Thread(target=cancel_once_running)
    canceller.start()
    with stream:
        events = list(stream)
    canceller.join(10)
    assert loop_tools.entered.is_set()
    result = result_of(events)
    assert result.status == "cancelled"
    assert len(fake_openai.requests) == 1  # no follow-up request
    assert kinds(events) == ["started", "tool:started", "tool:cancelled", "finished"]
    saved = Message.objects.get(pk=result.message.pk)
    assert saved.status == "cancelled"
    assert [r["status"] for r in saved.tool_calls] == ["cancelled"]


def test_cancel_between_tool_calls_and_the_next_request_stops_the_loop(pipeline, fake_openai, user):
    fake_openai.stream_tool_calls([{"id": "e", "name": "echo", "arguments": '{"text": "x"}'}])
    fake_openai.stream_reply(["never asked"])
    holder: dict[str, Any] = {}

    def cancel_turn(**kwargs: Any) -> None:
        holder["stream"].cancel()

    signals.tool_called.connect(cancel_turn, dispatch_uid="test-cancel-between")
    try:
        stream = holder["stream"] = pipeline.stream(user=user, content="Echo then stop")
        with stream:
            events = list(stream)
    finally:
        signals.tool_called.disconnect(dispatch_uid="test-cancel-between")
    assert result_of(events).status == "cancelled"
    assert len(fake_openai.requests) == 1


@pytest.mark.django_db(transaction=True)  # the turn ends on a background thread
def test_a_client_that_goes_away_does_not_cancel_the_loop(pipeline, fake_openai, user):
    fake_openai.stream_tool_calls([{"id": "g", "name": "wait_for_gate", "arguments": "{}"}])
    fake_openai.stream_reply(["Opened."])
    stream = pipeline.stream(user=user, content="Wait, then answer")
    message_id = stream.turn.assistant_message.pk
    for event in stream:
        if isinstance(event, ToolEvent):
            break
    stream.close()  # the reader leaves mid-tool: the turn goes on in the background
    loop_tools.gate.set()
    saved = wait_until(
        lambda: Message.objects.filter(pk=message_id, status="complete").first(), what="saved"
    )
    assert saved.content == "Opened."
    assert saved.tool_calls[0]["status"] == "ok"
    assert len(fake_openai.requests) == 2


def test_turns_that_called_tools_skip_the_response_cache(pipeline, fake_openai, user, configure):
    configure(loop_tools.ALL, RESPONSE_CACHE_ENABLED=True)
    for _ in range(2):
        fake_openai.stream_tool_calls([{"id": "e", "name": "echo", "arguments": '{"text": "x"}'}])
        fake_openai.queue_reply(["Live answer."])
        result = pipeline.complete(user=user, content="A question needing live data")
        assert result.status == "complete"
        assert not result.cached
    assert len(fake_openai.requests) == 4  # asked again: nothing was cached

    # A turn that offered tools but called none is cached as before.
    fake_openai.stream_reply(["Plain answer."])
    first = pipeline.complete(user=user, content="A question the model just answers")
    again = pipeline.complete(user=user, content="A question the model just answers")
    assert (first.cached, again.cached) == (False, True)
    assert again.message.content == "Plain answer."
    assert len(fake_openai.requests) == 5


def test_the_next_turn_sees_the_earlier_calls_and_results(pipeline, fake_openai, user):
    fake_openai.stream_tool_calls([{"id": "e", "name": "echo", "arguments": '{"text": "42"}'}])
    fake_openai.queue_reply(["The answer is 42."])
    first = pipeline.complete(user=user, content="What is the answer?")
    fake_openai.stream_reply(["Yes."])
    pipeline.complete(
        user=user, content="Are you sure?", conversation_id=first.message.conversation_id
    )
    earlier = fake_openai.requests[-1]["messages"][-2]
    assert earlier["role"] == "assistant"
    assert earlier["content"].endswith("The answer is 42.")
    assert "echo(" in earlier["content"]
    assert '"42"' in earlier["content"]

    # Read back from the database (another process, or after the cache expired).
    rows = load_history(first.message.conversation, limit=10, before=10**12)
    reply = next(r for r in rows if r["content"].endswith("The answer is 42."))
    assert reply["content"].startswith("[Tools used for this answer:")


def test_the_chat_history_api_rows_keep_their_shape(pipeline, fake_openai, user):
    from rest_framework.test import APIClient

    fake_openai.stream_tool_calls([{"id": "e", "name": "echo", "arguments": '{"text": "x"}'}])
    fake_openai.queue_reply(["Done."])
    pipeline.complete(user=user, content="Echo x")
    client = APIClient()
    client.force_authenticate(user)
    rows = client.get("/api/mpai/v1/chat-history/").json()["results"]
    assert rows[0]["content"] == "Done."
    assert set(rows[0]) == {
        "id",
        "conversation",
        "role",
        "content",
        "status",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "created_at",
    }


def test_the_admin_shows_the_tool_calls(pipeline, fake_openai, user, make_user):
    from django.test import Client

    fake_openai.stream_tool_calls(
        [{"id": "e", "name": "echo", "arguments": '{"text": "admin-visible"}'}]
    )
    fake_openai.queue_reply(["Done."])
    result = pipeline.complete(user=user, content="Echo for the admin")
    client = Client()
    client.force_login(make_user(is_staff=True, is_superuser=True))
    page = client.get(f"/admin/mpai/message/{result.message.pk}/change/").content.decode()
    assert "Tool calls" in page
    assert "echo [ok]" in page
    assert "admin-visible" in page
    assert 'name="tool_calls"' not in page


def test_tool_calls_are_counted_in_the_prometheus_metrics(pipeline, fake_openai, user, configure):
    configure(loop_tools.ALL, METRICS_ENABLED=True, RESPONSE_CACHE_ENABLED=False)

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    ok_before = sample("mpai_tool_calls_total", tool="echo", outcome="ok")
    failed_before = sample("mpai_tool_calls_total", tool="refuse", outcome="not_found")
    unknown_before = sample("mpai_tool_calls_total", tool="other", outcome="unknown_tool")
    count_before = sample("mpai_tool_call_duration_seconds_count", tool="echo")
    fake_openai.stream_tool_calls(
        [
            {"id": "a", "name": "echo", "arguments": '{"text": "x"}'},
            {"id": "b", "name": "refuse", "arguments": "{}"},
            {"id": "c", "name": "made_up_name", "arguments": "{}"},
        ]
    )
    fake_openai.queue_reply(["Counted."])
    pipeline.complete(user=user, content="Count the calls")
    assert sample("mpai_tool_calls_total", tool="echo", outcome="ok") == ok_before + 1
    assert sample("mpai_tool_calls_total", tool="refuse", outcome="not_found") == failed_before + 1
    assert sample("mpai_tool_calls_total", tool="other", outcome="unknown_tool") == (
        unknown_before + 1
    )
    assert sample("mpai_tool_call_duration_seconds_count", tool="echo") == count_before + 1


def test_the_tool_called_signal_carries_each_result(pipeline, fake_openai, user):
    seen: list[dict[str, Any]] = []

    def receiver(**kwargs: Any) -> None:
        seen.append(kwargs)

    signals.tool_called.connect(receiver, dispatch_uid="test-tool-called")
    try:
        fake_openai.stream_tool_calls([{"id": "e", "name": "echo", "arguments": '{"text": "x"}'}])
        fake_openai.queue_reply(["Done."])
        result = pipeline.complete(user=user, content="Signal it")
    finally:
        signals.tool_called.disconnect(dispatch_uid="test-tool-called")
    (sent,) = seen
    assert sent["name"] == "echo"
    assert sent["call_id"] == "e"
    assert sent["status"] == "ok"
    assert sent["error_code"] is None
    assert sent["duration_ms"] >= 0
    assert sent["user"] == user
    assert sent["conversation"].pk == result.message.conversation_id
    assert sent["trace"].request_id


def test_without_tools_configured_nothing_changes(pipeline, fake_openai, user, configure):
    configure([])
    fake_openai.stream_reply(["Plain."])
    events = events_of(pipeline, user, "Hello")
    assert kinds(events) == ["started", "delta", "finished"]
    assert "tools" not in fake_openai.requests[0]
    assert Message.objects.get(pk=result_of(events).message.pk).tool_calls is None


def test_the_context_note_is_bounded_and_absent_without_calls():
    from mpai.chat.tool_loop import NOTE_MAX_CHARS, with_tool_note

    assert with_tool_note("Plain.", None) == "Plain."
    assert with_tool_note("Plain.", []) == "Plain."
    huge = {"name": "echo", "arguments": "{}", "status": "ok", "content": "x" * 10_000}
    failed = {"name": "refuse", "arguments": "{}", "status": "error", "error_code": "not_found"}
    note = with_tool_note("Answer.", [huge] * 20 + [failed])
    assert note.startswith("[Tools used for this answer:\n- echo({}) -> xxx")
    assert note.endswith("]\n\nAnswer.")
    assert len(note) < NOTE_MAX_CHARS + 100
    assert "refuse({}) -> error not_found" in with_tool_note("A.", [failed])


def test_a_follow_up_request_is_fitted_to_the_token_budget(pipeline, fake_openai, user, configure):
    from mpai.chat.context import ContextBuilder, budget_tokens
    from mpai.chat.tool_loop import MESSAGE_OVERHEAD, TRUNCATION_MARKER

    # A budget of 1,000 tokens and a tool result of about 3,000: the follow-up must cut
    # the result rather than send more than the model takes.
    configure(
        [*loop_tools.ALL, "tests.tools.loop_tools.repeat"],
        RESPONSE_CACHE_ENABLED=False,
        MAX_INPUT_TOKENS=1500,
        REPLY_RESERVE_TOKENS=500,
        TOOL_RESULT_MAX_BYTES=64 * 1024,
    )
    arguments = json.dumps({"word": "membership", "times": 3000})
    fake_openai.stream_tool_calls([{"id": "call_big", "name": "repeat", "arguments": arguments}])
    fake_openai.stream_reply(["Done."])

    result = result_of(events_of(pipeline, user, "Repeat a word many times"))

    assert result.status == "complete"
    first, second = fake_openai.requests
    estimate = ContextBuilder().estimate
    sent = sum(
        MESSAGE_OVERHEAD
        + estimate(m.get("content") or "")
        + sum(
            estimate(c["function"]["arguments"]) + estimate(c["function"]["name"])
            for c in m.get("tool_calls") or ()
        )
        for m in second["messages"]
    )
    assert sent <= budget_tokens()
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["tool_call_id"] == "call_big"
    assert tool_message["content"].endswith(TRUNCATION_MARKER)
    assert second["messages"][-2]["tool_calls"][0]["id"] == "call_big"
    assert second["messages"][-3] == first["messages"][-1]  # the user's question kept
