"""The pieces of a turn's tool loop (the loop itself is :meth:`ChatPipeline._converse`).

When the user may use tools (:func:`mpai.tools.enabled_tools`), every provider
request of the turn offers them; a reply that asks for tool calls gets them run
(:func:`mpai.tools.run_tool_calls`) and the conversation is sent again with the
assistant message holding the calls and one ``tool`` message per result, in OpenAI
Chat Completions' format (https://platform.openai.com/docs/guides/function-calling)::

    {"role": "assistant", "content": "<text or null>",
     "tool_calls": [{"id": "call_1", "type": "function",
                     "function": {"name": "list_plans", "arguments": "{}"}}]}
    {"role": "tool", "tool_call_id": "call_1", "content": "{\\"plans\\": [...]}"}

until the model answers in text, or ``MPAI["TOOL_MAX_ITERATIONS"]`` rounds of calls
have run (then :class:`~mpai.exceptions.ToolIterationsExceeded`).

Text the model writes beside its tool calls is part of the reply: it streams as
deltas when it comes and is saved with the rest; the text of a later round is set
apart from the text before it by a blank line (:data:`ROUND_SEPARATOR`, a delta too).

The saved reply records its calls in ``Message.tool_calls`` (:func:`tool_record`); the
next turns' context shows them as a short note before the reply's text
(:func:`with_tool_note`), so they count against the token budget like the text.

Each follow-up request is fitted to the input budget again (:func:`fit_follow_up`):
older history goes first, then, when the tool results alone are too large, their
contents are cut (ending in :data:`TRUNCATION_MARKER`); an assistant message with
``tool_calls`` always keeps the ``tool`` message of every call id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from mpai.chat.tokens import MESSAGE_OVERHEAD
from mpai.providers import Usage
from mpai.tools import ToolResult

#: Put between the text of two rounds of a reply (both non-empty).
ROUND_SEPARATOR = "\n\n"
#: The most characters of one call's arguments, and of its result, in the context note.
NOTE_VALUE_CHARS = 400
#: The most characters of a whole context note (past it, the note is cut).
NOTE_MAX_CHARS = 2000
#: Ends a tool result's content cut to fit the budget (:func:`fit_follow_up`).
TRUNCATION_MARKER = "…[truncated]"


def assistant_tool_message(text: str, calls: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """The assistant message of a round that asked for ``calls`` (OpenAI's format).

    Args:
        text: what the model wrote beside the calls ("" gives ``content: null``).
        calls: ``{"id", "name", "arguments"}`` dicts (``arguments`` the JSON text).

    Returns:
        ``{"role": "assistant", "content": str | None, "tool_calls": [{"id", "type":
        "function", "function": {"name", "arguments"}}]}``.
    """
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call.get("arguments") or ""},
            }
            for call in calls
        ],
    }


def tool_record(call: Mapping[str, str], result: ToolResult) -> dict[str, Any]:
    """One entry of ``Message.tool_calls``: ``{"id", "name", "arguments", "status",
    "content", "duration_ms", "error_code"}`` (``arguments`` and ``content`` JSON
    text, ``duration_ms`` a float in ms, ``error_code`` None unless status ``error``
    or ``cancelled``)."""
    return {
        "id": result.call_id,
        "name": result.name,
        "arguments": call.get("arguments") or "",
        "status": result.status,
        "content": result.content,
        "duration_ms": round(float(result.duration_ms), 3),
        "error_code": result.error_code,
    }


def summed_usage(total: Usage | None, more: Usage | None) -> Usage | None:
    """The usage of two requests together (None when neither reported any)."""
    if total is None or more is None:
        return total or more
    return Usage(
        total.prompt_tokens + more.prompt_tokens,
        total.completion_tokens + more.completion_tokens,
        total.total_tokens + more.total_tokens,
    )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def with_tool_note(content: str, records: Iterable[Mapping[str, Any]] | None) -> str:
    """A saved reply as the next turns' context shows it: ``content`` after a note of
    its tool calls, or ``content`` itself when it made none.

    The note is one line per call, ``name(arguments) -> result`` (each cut to
    :data:`NOTE_VALUE_CHARS`; an error as ``error <code>``), inside ``[Tools used
    for this answer: ...]``, at most :data:`NOTE_MAX_CHARS` in all.
    """
    lines = []
    for record in records or ():
        if not isinstance(record, Mapping):
            continue
        arguments = str(record.get("arguments") or "{}")
        if record.get("status") == "ok":
            outcome = _cut(str(record.get("content") or ""), NOTE_VALUE_CHARS)
        else:
            outcome = f"{record.get('status') or 'error'} {record.get('error_code') or ''}".strip()
        call = f"{record.get('name')}({_cut(arguments, NOTE_VALUE_CHARS)})"
        lines.append(f"- {call} -> {outcome}")
    if not lines:
        return content
    note = _cut("\n".join(lines), NOTE_MAX_CHARS)
    return f"[Tools used for this answer:\n{note}]\n\n{content}"


def fit_follow_up(
    messages: Sequence[Mapping[str, Any]], *, budget: int, estimate: Callable[[str], int]
) -> list[dict[str, Any]]:
    """The messages of a tool loop's follow-up request, fitted to ``budget`` tokens.

    Args:
        messages: the request's messages (system message(s), history, the user's query
            as the last ``user`` message, then this turn's rounds: an assistant message
            with ``tool_calls`` and its ``tool`` messages, in OpenAI's format).
        budget: the input budget in tokens (:func:`mpai.chat.context.budget_tokens`).
        estimate: tokens of a text (``ContextBuilder().estimate``); a message costs its
            content plus ``MESSAGE_OVERHEAD``, plus its calls' names and arguments.

    Returns:
        New message dicts, in order, within ``budget`` when possible: the system
        message(s) and the user's query are always kept, whole. Over the budget, whole
        units (a message, or an assistant message with its calls' ``tool`` messages)
        are dropped, oldest first: the history before the query first; then tool
        result contents of this turn are cut (the largest first, each ending in
        :data:`TRUNCATION_MARKER`); only when they would be cut to the marker alone
        are this turn's earlier rounds dropped, oldest first. The last round is never
        dropped, so a request may stay over the budget when the kept messages alone
        exceed it (their contents then cut to the marker). Nothing is changed when
        everything fits. Never raises for an odd message (a missing role or content
        counts as empty).
    """
    copied = [dict(message) for message in messages]
    query = max(
        (i for i, message in enumerate(copied) if message.get("role") == "user"), default=-1
    )
    units = _units(copied)
    costs = [sum(_cost(copied[i], estimate) for i in unit) for unit in units]
    total = sum(costs)
    if total <= budget:
        return copied
    kept = [True] * len(units)

    def droppable(after_query: bool) -> list[int]:
        return [
            n
            for n, unit in enumerate(units)
            if kept[n]
            and (unit[0] > query if after_query else unit[0] < query)
            and all(copied[i].get("role") != "system" for i in unit)
        ]

    for n in droppable(after_query=False):  # older history, oldest first
        if total <= budget:
            break
        kept[n] = False
        total -= costs[n]
    later = droppable(after_query=True)[:-1]  # this turn's earlier rounds (not the last)
    originals = {
        i: str(message.get("content") or "")
        for i, message in enumerate(copied)
        if i > query and message.get("role") == "tool"
    }
    while True:
        chosen = [i for n, unit in enumerate(units) if kept[n] for i in unit]
        tools = [i for i in chosen if copied[i].get("role") == "tool" and i > query]
        fixed = sum(_cost(copied[i], estimate) for i in set(chosen).difference(tools))
        if _cut_tool_results(copied, originals, tools, budget - fixed, estimate) or not later:
            return [copied[i] for i in chosen]
        kept[later.pop(0)] = False


def _cost(message: Mapping[str, Any], estimate: Callable[[str], int]) -> int:
    """Estimated tokens of one message: content, calls' names and arguments, overhead."""
    content = message.get("content")
    tokens = MESSAGE_OVERHEAD + (estimate(content) if isinstance(content, str) else 0)
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            tokens += estimate(str(function.get("name") or ""))
            tokens += estimate(str(function.get("arguments") or ""))
    return tokens


def _units(messages: list[dict[str, Any]]) -> list[list[int]]:
    """Indexes of ``messages`` grouped into what is kept or dropped together: an
    assistant message with ``tool_calls`` and the ``tool`` messages after it answering
    its call ids; every other message alone."""
    units: list[list[int]] = []
    index = 0
    while index < len(messages):
        unit = [index]
        calls = (
            messages[index].get("tool_calls")
            if messages[index].get("role") == "assistant"
            else None
        )
        if calls:
            ids = {call.get("id") for call in calls if isinstance(call, Mapping)}
            while (
                index + 1 < len(messages)
                and messages[index + 1].get("role") == "tool"
                and messages[index + 1].get("tool_call_id") in ids
            ):
                index += 1
                unit.append(index)
        units.append(unit)
        index += 1
    return units


def _cut_tool_results(
    messages: list[dict[str, Any]],
    original: Mapping[int, str],
    tools: list[int],
    room: int,
    estimate: Callable[[str], int],
) -> bool:
    """Cut the ``original`` contents of ``messages[i]`` for ``i`` in ``tools`` so that
    these tool messages cost at most ``room`` tokens, the largest cut first, each to an
    equal share; return whether they fit (else each is left as the marker alone)."""
    for i in tools:
        messages[i]["content"] = original[i]
    floor = MESSAGE_OVERHEAD + estimate(TRUNCATION_MARKER)
    for _ in range(4):  # estimates are not additive: tighten a little and try again
        costs = {i: _cost(messages[i], estimate) for i in tools}
        if sum(costs.values()) <= room:
            return True
        share = _fair_share(list(costs.values()), room)
        if share < floor:
            break
        for i in tools:
            if costs[i] > share:
                messages[i]["content"] = _cut_to_tokens(
                    original[i], share - MESSAGE_OVERHEAD, estimate
                )
        room -= max(sum(_cost(messages[i], estimate) for i in tools) - room, 0)
    for i in tools:
        if _cost(messages[i], estimate) > floor:
            messages[i]["content"] = TRUNCATION_MARKER
    return sum(_cost(messages[i], estimate) for i in tools) <= room


def _fair_share(costs: list[int], room: int) -> int:
    """The largest cap such that ``sum(min(cost, cap)) <= room`` (water-filling)."""
    remaining, left = room, len(costs)
    for cost in sorted(costs):
        if cost * left > remaining:
            return remaining // left
        remaining -= cost
        left -= 1
    return max(costs, default=0)


def _cut_to_tokens(text: str, tokens: int, estimate: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` that, with the marker, costs at most ``tokens``."""
    low, high = 0, len(text)
    while low < high:  # the largest length whose cut fits
        middle = (low + high + 1) // 2
        if estimate(text[:middle] + TRUNCATION_MARKER) <= tokens:
            low = middle
        else:
            high = middle - 1
    return text[:low] + TRUNCATION_MARKER
