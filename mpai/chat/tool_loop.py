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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mpai.providers import Usage
from mpai.tools import ToolResult

#: Put between the text of two rounds of a reply (both non-empty).
ROUND_SEPARATOR = "\n\n"
#: The most characters of one call's arguments, and of its result, in the context note.
NOTE_VALUE_CHARS = 400
#: The most characters of a whole context note (past it, the note is cut).
NOTE_MAX_CHARS = 2000


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
