"""OpenAIProvider and function calling, over real HTTP against the fake server.

Shapes: OpenAI Chat Completions, function calling
(https://platform.openai.com/docs/guides/function-calling), streamed and not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from mpai.chat.tool_loop import assistant_tool_message
from mpai.providers import ToolCallAssembler
from mpai.providers.base import ChatRequest, StreamChunk
from mpai.providers.openai import OpenAIProvider
from mpai.providers.sse import SSEEvent, parse_chunk, parse_completion

if TYPE_CHECKING:
    from tests.fake_openai import FakeOpenAI

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "list_plans",
            "description": "The plans on offer.",
            "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_help_articles",
            "description": "Search the help centre.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
                "additionalProperties": False,
            },
        },
    },
]
QUESTION = [{"role": "user", "content": "How do I upgrade?"}]
REQUEST = ChatRequest(model="test-model", messages=QUESTION, tools=TOOLS)


@pytest.fixture
def provider(fake_openai: FakeOpenAI) -> Iterator[OpenAIProvider]:
    made = OpenAIProvider(
        base_url=fake_openai.base_url, api_key="sk-test", backoff_initial=0.001, read_timeout=10
    )
    yield made
    made.close()


def read(provider: OpenAIProvider, request: ChatRequest) -> list[StreamChunk]:
    with provider.open_stream(request) as stream:
        return list(stream)


def test_offered_tools_are_sent_with_tool_choice_auto(provider, fake_openai):
    read(provider, REQUEST)
    body = fake_openai.requests[-1]
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == "auto"
    assert body["stream"] is True


def test_a_request_without_tools_sends_neither_field(provider, fake_openai):
    read(provider, ChatRequest(model="m", messages=QUESTION))
    assert "tools" not in fake_openai.requests[-1]
    assert "tool_choice" not in fake_openai.requests[-1]
    read(provider, ChatRequest(model="m", messages=QUESTION, tools=[]))
    assert "tools" not in fake_openai.requests[-1]


def test_one_call_with_arguments_in_pieces_is_assembled(provider, fake_openai):
    arguments = json.dumps({"query": "upgrade to the annual plan"})
    fake_openai.stream_tool_calls(
        [{"id": "call_a", "name": "search_help_articles", "arguments": arguments}], pieces=5
    )
    chunks = read(provider, REQUEST)
    assert [c.text for c in chunks if c.text] == []
    ending = [c for c in chunks if c.finish_reason]
    assert len(ending) == 1
    assert ending[0].finish_reason == "tool_calls"
    assert ending[0].tool_calls == (
        {"id": "call_a", "name": "search_help_articles", "arguments": arguments},
    )
    assert sum(bool(c.tool_calls) for c in chunks) == 1  # handed out once
    assert all(not c.tool_call_deltas for c in chunks)  # the stream consumed the pieces


def test_two_parallel_calls_are_told_apart_by_index(provider, fake_openai):
    first = json.dumps({"query": "cancel my membership"})
    fake_openai.stream_tool_calls(
        [
            {"id": "call_1", "name": "search_help_articles", "arguments": first},
            {"id": "call_2", "name": "list_plans", "arguments": "{}"},
        ],
        pieces=4,
    )
    with provider.open_stream(REQUEST) as stream:
        chunks = list(stream)
        assert stream.tool_calls == (
            {"id": "call_1", "name": "search_help_articles", "arguments": first},
            {"id": "call_2", "name": "list_plans", "arguments": "{}"},
        )
    (ending,) = [c for c in chunks if c.tool_calls]
    assert [call["name"] for call in ending.tool_calls] == ["search_help_articles", "list_plans"]
    assert json.loads(ending.tool_calls[0]["arguments"]) == {"query": "cancel my membership"}


def test_text_beside_the_calls_still_streams_as_text(provider, fake_openai):
    fake_openai.stream_tool_calls(
        [{"id": "c", "name": "list_plans", "arguments": "{}"}], parts=["Let me ", "check."]
    )
    chunks = read(provider, REQUEST)
    assert "".join(c.text for c in chunks) == "Let me check."
    assert [c.tool_calls for c in chunks if c.tool_calls] == [
        ({"id": "c", "name": "list_plans", "arguments": "{}"},)
    ]


def test_complete_returns_the_calls_of_a_non_streamed_reply(provider, fake_openai):
    fake_openai.stream_tool_calls([{"id": "c9", "name": "list_plans", "arguments": "{}"}])
    reply = provider.complete(REQUEST)
    assert fake_openai.requests[-1]["stream"] is False
    assert reply.finish_reason == "tool_calls"
    assert reply.text == ""
    assert reply.tool_calls == ({"id": "c9", "name": "list_plans", "arguments": "{}"},)


def test_the_follow_up_carries_the_calls_and_results_in_openais_format(provider, fake_openai):
    calls = [{"id": "call_7", "name": "list_plans", "arguments": "{}"}]
    results = [{"role": "tool", "tool_call_id": "call_7", "content": '{"plans": []}'}]
    messages = [*QUESTION, assistant_tool_message("", calls), *results]
    fake_openai.stream_reply(["No plans yet."])
    chunks = read(provider, ChatRequest(model="m", messages=messages, tools=TOOLS))
    assert "".join(c.text for c in chunks) == "No plans yet."
    assert fake_openai.requests[-1]["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "list_plans", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": '{"plans": []}'},
    ]


def _event(delta: dict[str, Any], finish: str | None = None) -> SSEEvent:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return SSEEvent(json.dumps({"object": "chat.completion.chunk", "choices": [choice]}))


def test_parse_chunk_reads_tool_call_pieces():
    head = {"index": 1, "id": "x", "type": "function", "function": {"name": "f", "arguments": ""}}
    chunk = parse_chunk(_event({"tool_calls": [head]}))
    assert isinstance(chunk, StreamChunk)
    assert chunk.tool_call_deltas == ({"index": 1, "id": "x", "name": "f"},)
    piece = parse_chunk(_event({"tool_calls": [{"index": 1, "function": {"arguments": '{"a'}}]}))
    assert isinstance(piece, StreamChunk)
    assert piece.tool_call_deltas == ({"index": 1, "arguments": '{"a'},)
    assert parse_chunk(_event({"tool_calls": []})) is None


def test_the_assembler_names_calls_without_an_id_and_keeps_index_order():
    assembler = ToolCallAssembler()
    assembler.add([{"index": 1, "name": "b"}, {"index": 0, "id": "a0", "name": "a"}])
    assembler.add([{"index": 1, "arguments": "{}"}, {"index": 0, "arguments": '{"q"'}])
    assembler.add([{"index": 0, "arguments": ': "x"}'}])
    assert assembler.calls() == (
        {"id": "a0", "name": "a", "arguments": '{"q": "x"}'},
        {"id": "call_1", "name": "b", "arguments": "{}"},
    )


def test_parse_completion_reads_message_tool_calls():
    payload = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
            }
        ],
    }
    reply = parse_completion(payload, "m")
    assert reply.tool_calls == ({"id": "c", "name": "f", "arguments": "{}"},)
    assert reply.finish_reason == "tool_calls"
