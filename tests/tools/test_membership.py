"""The built-in membership tools over the demo's adapter, with real users: each user
sees only their own memberships."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser

from config.tools import DemoMembershipAdapter
from mpai.tools import enabled_tools, run_tool_calls
from mpai.tools.membership import (
    MembershipAdapter,
    NullMembershipAdapter,
    get_membership_adapter,
)

BUILT_IN = [
    "mpai.tools.membership.get_my_memberships",
    "mpai.tools.membership.list_plans",
    "mpai.tools.membership.search_help_articles",
]
DEMO = "config.tools.DemoMembershipAdapter"


def call(name: str, arguments: str = "{}", call_id: str = "call") -> dict[str, Any]:
    return {"id": call_id, "name": name, "arguments": arguments}


def content(result: Any) -> Any:
    assert result.status == "ok", result
    return json.loads(result.content)


@pytest.fixture
def demo(configure) -> None:
    configure(BUILT_IN, MEMBERSHIP_ADAPTER=DEMO)


@pytest.fixture
def members(make_user) -> tuple[Any, Any]:
    return make_user("annual"), make_user("free")


def test_the_null_adapter_is_the_default_and_knows_nothing(configure, user) -> None:
    configure(BUILT_IN)
    assert isinstance(get_membership_adapter(), NullMembershipAdapter)
    results = run_tool_calls(
        user,
        [
            call("get_my_memberships", call_id="1"),
            call("list_plans", call_id="2"),
            call("search_help_articles", '{"query": "refund"}', "3"),
        ],
    )
    assert [content(r) for r in results] == [{"memberships": []}, {"plans": []}, {"articles": []}]


def test_the_adapter_is_built_once_per_configured_class(configure) -> None:
    configure([], MEMBERSHIP_ADAPTER=DEMO)
    adapter = get_membership_adapter()
    assert isinstance(adapter, DemoMembershipAdapter)
    assert get_membership_adapter() is adapter
    configure([], MEMBERSHIP_ADAPTER=NullMembershipAdapter)
    assert type(get_membership_adapter()) is NullMembershipAdapter
    instance = DemoMembershipAdapter()
    configure([], MEMBERSHIP_ADAPTER=instance)
    assert get_membership_adapter() is instance


def test_the_base_adapter_must_be_implemented() -> None:
    with pytest.raises(NotImplementedError):
        MembershipAdapter().plans()


@pytest.mark.usefixtures("demo")
def test_each_user_gets_only_their_own_memberships(members) -> None:
    annual, free = members
    [mine] = content(run_tool_calls(annual, [call("get_my_memberships")])[0])["memberships"]
    [theirs] = content(run_tool_calls(free, [call("get_my_memberships")])[0])["memberships"]
    assert (mine["plan"], mine["status"]) == ("Annual", "active")
    assert mine["member_since"] == annual.date_joined.date().isoformat()
    assert mine["renews_at"] > mine["member_since"]
    assert (theirs["plan"], theirs["renews_at"]) == ("Free", None)


@pytest.mark.usefixtures("demo")
def test_concurrent_calls_of_two_users_never_mix(members) -> None:
    annual, free = members
    seen: dict[str, list[str]] = {"annual": [], "free": []}
    go = threading.Barrier(2, timeout=10)

    def ask(user: Any) -> None:
        go.wait()
        for _ in range(5):
            calls = [call("get_my_memberships", call_id=f"c{i}") for i in range(10)]
            for result in run_tool_calls(user, calls, max_concurrency=10):
                seen[user.username] += [m["plan"] for m in content(result)["memberships"]]

    threads = [threading.Thread(target=ask, args=(u,)) for u in (annual, free)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"annual": ["Annual"] * 50, "free": ["Free"] * 50}


@pytest.mark.usefixtures("demo")
@pytest.mark.parametrize("arguments", ['{"user": "annual"}', '{"username": "annual"}'])
def test_the_model_cannot_name_another_user(members, arguments) -> None:
    _, free = members
    [result] = run_tool_calls(free, [call("get_my_memberships", arguments)])
    assert result.error_code == "invalid_arguments"
    assert "Annual" not in result.content


@pytest.mark.usefixtures("demo")
def test_anonymous_users_are_not_offered_their_memberships() -> None:
    anonymous = AnonymousUser()
    assert [t.name for t in enabled_tools(anonymous)] == ["list_plans", "search_help_articles"]
    [result] = run_tool_calls(anonymous, [call("get_my_memberships")])
    assert result.error_code == "unknown_tool"


@pytest.mark.usefixtures("demo")
def test_plans_and_articles_are_the_same_for_every_user(members) -> None:
    annual, free = members
    calls = [
        call("list_plans", call_id="1"),
        call("search_help_articles", '{"query": "How do I get a refund?"}', "2"),
    ]
    for_annual = [r.content for r in run_tool_calls(annual, calls)]
    for_free = [r.content for r in run_tool_calls(free, calls)]
    assert for_annual == for_free  # nothing of the caller in them
    plans = json.loads(for_annual[0])["plans"]
    assert [p["name"] for p in plans] == ["Free", "Monthly", "Annual"]
    assert plans[1]["period_months"] == 1


@pytest.mark.usefixtures("demo")
def test_search_help_articles_ranks_with_the_demos_bm25_search(user) -> None:
    [found] = run_tool_calls(user, [call("search_help_articles", '{"query": "refund my money"}')])
    articles = content(found)["articles"]
    assert articles[0]["title"] == "Refunds"
    assert set(articles[0]) == {"title", "url", "excerpt"}
    assert len(articles) <= 3
    [one] = run_tool_calls(user, [call("search_help_articles", '{"query": "cancel", "limit": 1}')])
    assert [a["title"] for a in content(one)["articles"]] == ["Cancelling your membership"]
    [none] = run_tool_calls(user, [call("search_help_articles", '{"query": "zebra"}')])
    assert content(none) == {"articles": []}


@pytest.mark.usefixtures("demo")
@pytest.mark.parametrize("limit", [0, 11, "2"])
def test_search_limits_outside_1_to_10_are_invalid_arguments(user, limit) -> None:
    arguments = json.dumps({"query": "refund", "limit": limit})
    [result] = run_tool_calls(user, [call("search_help_articles", arguments)])
    assert result.error_code == "invalid_arguments"
