"""The offline provider's deterministic tool use, over the demo's membership adapter."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from config.membership import PLANS
from mpai.chat.pipeline import ChatPipeline
from mpai.chat.tool_loop import assistant_tool_message
from mpai.models import Message
from mpai.providers import ChatRequest
from mpai.providers.offline import OfflineProvider, tool_calls_for, tool_results_reply

pytestmark = pytest.mark.django_db

DEMO_TOOLS = [
    "mpai.tools.membership.get_my_memberships",
    "mpai.tools.membership.list_plans",
    "mpai.tools.membership.search_help_articles",
]


@pytest.fixture
def demo_tools(configure: Callable[..., None]) -> None:
    configure(
        DEMO_TOOLS,
        MEMBERSHIP_ADAPTER="config.tools.DemoMembershipAdapter",
        RESPONSE_CACHE_ENABLED=False,
    )


def ask(user: Any, content: str) -> Message:
    pipeline = ChatPipeline(OfflineProvider(first_token_ms=0, tokens_per_second=0))
    result = pipeline.complete(user=user, content=content)
    assert result.status == "complete"
    return Message.objects.get(pk=result.message.pk)


def schema(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": "d", "parameters": {}}}


def test_a_question_about_my_plan_calls_get_my_memberships(demo_tools, make_user):
    user = make_user("annual")
    reply = ask(user, "When does my membership renew?")
    assert [r["name"] for r in reply.tool_calls] == ["get_my_memberships"]
    assert reply.tool_calls[0]["status"] == "ok"
    assert reply.tool_calls[0]["arguments"] == "{}"
    assert reply.content.startswith(f"You're on the **Annual** plan ({PLANS['Annual'].price}).")
    assert "renews on" in reply.content


def test_a_how_to_question_searches_the_help_centre_with_the_question(demo_tools, user):
    question = "How do I upgrade to the annual plan?"
    reply = ask(user, question)
    names = [r["name"] for r in reply.tool_calls]
    assert names == ["list_plans", "search_help_articles"]
    search = reply.tool_calls[1]
    assert json.loads(search["arguments"]) == {"query": question}
    assert "From the help article **Upgrading to the annual plan**" in reply.content
    assert "**Annual**" in reply.content  # from list_plans


def test_the_same_question_gets_the_same_calls_and_answer(demo_tools, user):
    first = ask(user, "What plans do you have?")
    again = ask(user, "What plans do you have?")
    assert [r["name"] for r in first.tool_calls] == ["list_plans"]
    assert [r["id"] for r in first.tool_calls] == [r["id"] for r in again.tool_calls]
    assert first.content == again.content
    assert first.content.startswith("The plans on offer:")


def test_a_question_no_trigger_matches_gets_the_reply_it_had_without_tools(
    demo_tools, user, configure
):
    question = "Recommend a haiku about autumn leaves"
    with_tools = ask(user, question)
    assert with_tools.tool_calls is None
    configure([])
    assert ask(user, question).content == with_tools.content


def test_only_offered_tools_are_called():
    question = [{"role": "user", "content": "How do I cancel my plan? What plans are there?"}]
    request = ChatRequest(model="m", messages=question, tools=[schema("list_plans")])
    assert [c["name"] for c in tool_calls_for(request)] == ["list_plans"]
    assert tool_calls_for(ChatRequest(model="m", messages=question)) == ()


def test_the_follow_up_with_results_is_answered_from_them():
    calls = [
        {"id": "c1", "name": "get_my_memberships", "arguments": "{}"},
        {"id": "c2", "name": "search_help_articles", "arguments": '{"query": "x"}'},
    ]
    membership = {
        "memberships": [
            {"plan": "Gold", "price": "$9", "status": "active", "renews_at": "2027-01-01"}
        ]
    }
    failed = {"error": {"code": "timeout", "message": "The tool did not answer within 5 s."}}
    messages = [
        {"role": "user", "content": "When does my plan renew, and how do I pay?"},
        assistant_tool_message("", calls),
        {"role": "tool", "tool_call_id": "c1", "content": json.dumps(membership)},
        {"role": "tool", "tool_call_id": "c2", "content": json.dumps(failed)},
    ]
    request = ChatRequest(model="m", messages=messages, tools=[schema(c["name"]) for c in calls])
    assert tool_calls_for(request) == ()  # answered, not asked again
    text = OfflineProvider(first_token_ms=0, tokens_per_second=0).reply_for(request)
    assert text == tool_results_reply(messages)
    assert text.startswith(
        "You're on the **Gold** plan ($9). Its status is active and it renews on 1 January 2027."
    )
    assert "I could not look that up with search_help_articles: The tool did not answer" in text


def test_an_offline_stream_of_calls_ends_with_finish_reason_tool_calls(demo_tools):
    provider = OfflineProvider(first_token_ms=0, tokens_per_second=0)
    request = ChatRequest(
        model="m",
        messages=[{"role": "user", "content": "Show me the plans"}],
        tools=[schema("list_plans")],
    )
    with provider.open_stream(request) as stream:
        chunks = list(stream)
    assert "".join(c.text for c in chunks) == ""
    assert chunks[-1].finish_reason == "tool_calls"
    (call,) = chunks[-1].tool_calls
    assert call["name"] == "list_plans"
    assert call["id"].startswith("call_")


def test_the_demo_settings_enable_the_membership_tools():
    from config import settings as demo_settings

    assert demo_settings.MPAI["TOOLS"] == DEMO_TOOLS
    assert demo_settings.MPAI["MEMBERSHIP_ADAPTER"] == "config.tools.DemoMembershipAdapter"
