"""A tool loop's follow-up request fitted to the token budget
(mpai.chat.tool_loop.fit_follow_up): history goes first, tool results are cut rather
than dropped, and an assistant message with tool calls keeps every call's result."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from mpai.chat.context import ContextBuilder, budget_tokens
from mpai.chat.tokens import MESSAGE_OVERHEAD
from mpai.chat.tool_loop import (
    TRUNCATION_MARKER,
    _cost,
    assistant_tool_message,
    fit_follow_up,
)


def chars(text: str) -> int:
    """One token per character: easy to count by hand."""
    return len(text)


def tokens(messages: list[dict[str, Any]]) -> int:
    return sum(_cost(message, chars) for message in messages)


def system(text: str = "You are helpful.") -> dict[str, Any]:
    return {"role": "system", "content": text}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def round_of(*results: tuple[str, str], text: str = "") -> list[dict[str, Any]]:
    """An assistant message calling one tool per ``(call id, result content)``, then
    the tool messages."""
    calls = [{"id": cid, "name": "lookup", "arguments": '{"q": "x"}'} for cid, _ in results]
    return [
        assistant_tool_message(text, calls),
        *({"role": "tool", "tool_call_id": cid, "content": content} for cid, content in results),
    ]


def assert_paired(messages: list[dict[str, Any]]) -> None:
    """OpenAI's rule: an assistant message with tool_calls is followed by the tool
    message of each of its call ids, and every tool message answers such a call."""
    index = 0
    while index < len(messages):
        message = messages[index]
        assert message["role"] != "tool", f"orphan tool message at {index}: {messages}"
        ids = [call["id"] for call in message.get("tool_calls") or ()]
        following = messages[index + 1 : index + 1 + len(ids)]
        assert [m.get("tool_call_id") for m in following] == ids, messages
        assert all(m["role"] == "tool" for m in following)
        index += 1 + len(ids)


HISTORY = [user("old question " * 5), assistant("old answer " * 5)] * 3  # 6 messages
QUERY = user("What is the refund policy?")


def conversation(*rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [system(), *copy.deepcopy(HISTORY), QUERY, *(m for r in rounds for m in r)]


def test_messages_that_fit_are_returned_unchanged_as_copies() -> None:
    messages = conversation(round_of(("c1", '{"ok": true}')))
    fitted = fit_follow_up(messages, budget=tokens(messages), estimate=chars)
    assert fitted == messages
    assert all(a is not b for a, b in zip(fitted, messages, strict=True))


def test_older_history_goes_first_oldest_first() -> None:
    messages = conversation(round_of(("c1", '{"plans": ["basic", "pro"]}')))
    over = _cost(HISTORY[0], chars) + _cost(HISTORY[1], chars)  # the two oldest
    fitted = fit_follow_up(messages, budget=tokens(messages) - over, estimate=chars)
    assert fitted == [messages[0], *messages[3:]]
    assert tokens(fitted) <= tokens(messages) - over
    # One token short of that drops the next oldest too.
    fitted = fit_follow_up(messages, budget=tokens(messages) - over - 1, estimate=chars)
    assert fitted == [messages[0], *messages[4:]]


def test_every_history_message_may_go_but_not_the_system_message_query_or_round() -> None:
    last = round_of(("c1", "{}"), ("c2", "[]"))
    messages = conversation(last)
    floor = tokens([system(), QUERY, *last])
    fitted = fit_follow_up(messages, budget=floor, estimate=chars)
    assert fitted == [system(), QUERY, *last]


def test_a_history_round_of_tool_calls_goes_as_a_whole() -> None:
    old_round = round_of(("h1", "x" * 40), ("h2", "y" * 40))
    messages = [
        system(),
        user("first"),
        *old_round,
        assistant("done"),
        QUERY,
        *round_of(("c1", "{}")),
    ]
    # Enough room for one of the two old tool messages, not for the round: it all goes.
    budget = tokens(messages) - _cost(old_round[2], chars)
    fitted = fit_follow_up(messages, budget=budget, estimate=chars)
    assert_paired(fitted)
    assert not any(m.get("tool_call_id") in {"h1", "h2"} for m in fitted)
    assert all(m["content"] != "first" for m in fitted)  # older still: gone first
    assert fitted[-3:] == messages[-3:]


def test_tool_results_too_large_are_cut_not_dropped_the_largest_first() -> None:
    small, large = '{"n": 1}', json.dumps({"rows": ["r" * 50] * 40})
    last = round_of(("c1", small), ("c2", large))
    messages = conversation(last)
    budget = tokens([system(), QUERY, *last]) - len(large) // 2
    fitted = fit_follow_up(messages, budget=budget, estimate=chars)
    assert tokens(fitted) <= budget
    assert [m["role"] for m in fitted] == ["system", "user", "assistant", "tool", "tool"]
    assert_paired(fitted)
    one, two = fitted[-2:]
    assert one["content"] == small  # small enough to stay whole
    assert two["content"].endswith(TRUNCATION_MARKER)
    assert large.startswith(two["content"][: -len(TRUNCATION_MARKER)])
    # As much as fits is kept: one more character would be over the budget.
    assert tokens(fitted) > budget - 1 - len(TRUNCATION_MARKER)


def test_equal_large_results_are_cut_to_equal_shares() -> None:
    last = round_of(("c1", "a" * 900), ("c2", "b" * 900), ("c3", "c" * 900))
    messages = conversation(last)
    budget = tokens([system(), QUERY, last[0]]) + 3 * (MESSAGE_OVERHEAD + 100)
    fitted = fit_follow_up(messages, budget=budget, estimate=chars)
    assert tokens(fitted) <= budget
    lengths = [len(m["content"]) for m in fitted[-3:]]
    assert lengths == [100, 100, 100]
    assert [m["content"][0] for m in fitted[-3:]] == ["a", "b", "c"]


def test_earlier_rounds_of_the_turn_go_only_when_cutting_is_not_enough() -> None:
    first = round_of(("r1", "1" * 300), text="Let me look.")
    second = round_of(("r2", "2" * 300))
    messages = [system(), QUERY, *first, *second]
    # Room for both rounds with their results cut: both stay.
    budget = tokens([system(), QUERY, first[0], second[0]]) + 2 * (MESSAGE_OVERHEAD + 50)
    fitted = fit_follow_up(messages, budget=budget, estimate=chars)
    assert [m.get("tool_call_id") for m in fitted if m["role"] == "tool"] == ["r1", "r2"]
    assert tokens(fitted) <= budget
    # Room for the last round only (its result cut to a few characters): the first goes.
    budget = tokens([system(), QUERY, second[0]]) + MESSAGE_OVERHEAD + 20
    fitted = fit_follow_up(messages, budget=budget, estimate=chars)
    assert fitted[:3] == [system(), QUERY, second[0]]
    assert fitted[3]["tool_call_id"] == "r2"
    assert fitted[3]["content"].endswith(TRUNCATION_MARKER)
    assert tokens(fitted) <= budget
    assert_paired(fitted)


def test_a_budget_the_kept_messages_alone_exceed_keeps_them_with_results_as_markers() -> None:
    last = round_of(("c1", "x" * 500), ("c2", "{}"))
    messages = conversation(last)
    fitted = fit_follow_up(messages, budget=10, estimate=chars)
    assert fitted[:3] == [system(), QUERY, last[0]]  # never cut: system, query, calls
    assert [m["content"] for m in fitted[3:]] == [TRUNCATION_MARKER, "{}"]
    assert_paired(fitted)


def test_the_callers_messages_are_not_changed() -> None:
    messages = conversation(round_of(("c1", "z" * 1000)))
    before = copy.deepcopy(messages)
    fit_follow_up(messages, budget=50, estimate=chars)
    assert messages == before


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_any_budget_gives_paired_messages_within_it_when_possible(rounds: int) -> None:
    turn = [
        round_of((f"r{n}a", "a" * (40 * n)), (f"r{n}b", "b" * (70 * n)), text=f"round {n}")
        for n in range(1, rounds + 1)
    ]
    messages = conversation(*turn)
    # The least a request can be: system, query, last round with its results as markers.
    least = tokens([system(), QUERY, turn[-1][0]]) + sum(
        _cost({"role": "tool", "content": TRUNCATION_MARKER}, chars) for _ in turn[-1][1:]
    )
    for budget in range(0, tokens(messages) + 2, 7):
        fitted = fit_follow_up(messages, budget=budget, estimate=chars)
        assert_paired(fitted)
        assert fitted[0] == system()
        assert QUERY in fitted
        assert fitted[-len(turn[-1]) :][0] == turn[-1][0]  # the last round stays
        if budget >= least:
            assert tokens(fitted) <= budget, budget
        if budget >= tokens(messages):
            assert fitted == messages


def test_with_the_real_estimator_and_budget() -> None:
    builder = ContextBuilder()
    huge = json.dumps(
        {"articles": [{"title": f"Article {i}", "body": "word " * 200} for i in range(400)]}
    )
    messages = conversation(round_of(("c1", huge)))
    budget = budget_tokens()
    assert sum(_cost(m, builder.estimate) for m in messages) > budget  # the case at hand
    fitted = fit_follow_up(messages, budget=budget, estimate=builder.estimate)
    assert sum(_cost(m, builder.estimate) for m in fitted) <= budget
    assert fitted[-1]["tool_call_id"] == "c1"
    assert fitted[-1]["content"].endswith(TRUNCATION_MARKER)
    assert_paired(fitted)
