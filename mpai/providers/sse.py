"""Server-Sent Events for the OpenAI-compatible provider: the framing, then the payloads.

Framing (:class:`SSEParser`) follows the WHATWG HTML spec, "Server-sent events",
section "Interpreting an event stream"
(https://html.spec.whatwg.org/multipage/server-sent-events.html): lines end in CRLF, LF
or CR (a CRLF split across two reads counts once); a line starting with ``:`` is a
comment; ``field: value`` loses one space after the colon; several ``data`` lines join
with ``\\n``; an empty line dispatches the event, but only if it had at least one
``data`` line; a leading UTF-8 BOM is dropped; an unfinished event at the end of the
stream is discarded.

Payloads (:func:`parse_chunk`, :func:`parse_completion`) are OpenAI Chat Completions
objects (https://platform.openai.com/docs/api-reference/chat-streaming):
``chat.completion.chunk`` with ``choices[0].delta.content`` (or ``delta.refusal`` when
the model refuses) and ``finish_reason``, a final ``usage`` chunk with empty
``choices``, ``data: [DONE]``; tool calls arrive as ``choices[0].delta.tool_calls``
pieces, ``[{"index", "id"?, "type"?: "function", "function": {"name"?, "arguments"?}}]``
(https://platform.openai.com/docs/guides/function-calling, "Streaming"); errors arrive as
``{"error": {"message", "type", "code"}}``, as ``event: error``, or (vLLM) as
``{"object": "error", "message", "code"}``.

Usage::

    parser = SSEParser()
    for raw in socket_reads:              # bytes, split anywhere
        for event in parser.feed(raw):    # SSEEvent(data, event, id)
            chunk = parse_chunk(event)    # StreamChunk, None (nothing in it) or DONE
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from mpai.exceptions import ProviderStreamError

from .base import Completion, StreamChunk, ToolCallAssembler, Usage

_EOL = re.compile(rb"\r\n|\r|\n")


class SSEError(ValueError):
    """The stream cannot be parsed (a line longer than ``max_line_bytes``)."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event.

    Attributes:
        data: the ``data`` lines joined with ``\\n``.
        event: the ``event`` field, ``"message"`` when the event named none.
        id: the last event id seen so far in the stream, or None.
    """

    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """Turns byte chunks (split at any point) into :class:`SSEEvent` objects.

    Args:
        max_line_bytes: longest line accepted; a longer one raises :class:`SSEError`
            (bounds memory against a peer that never sends a newline). Default 4 MiB.

    Attributes:
        retry: the last valid ``retry`` field (reconnection time in ms), or None.
    """

    def __init__(self, *, max_line_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_line_bytes = max_line_bytes
        self.retry: int | None = None
        self._buf = b""
        self._skip_lf = False
        self._first_line = True
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse ``chunk`` and return the events it completed, in order.

        Raises:
            SSEError: the pending line passed ``max_line_bytes``.
        """
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        if not chunk:
            return []
        buf = self._buf + chunk
        # A final bare CR ends a line; if the next read starts with LF it was a CRLF.
        self._skip_lf = buf.endswith(b"\r")
        lines = _EOL.split(buf)
        self._buf = lines.pop()
        if len(self._buf) > self.max_line_bytes:
            raise SSEError(f"SSE line longer than {self.max_line_bytes} bytes")
        events: list[SSEEvent] = []
        for line in lines:
            event = self._process(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def _process(self, line: str) -> SSEEvent | None:
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SSEEvent("\n".join(data), event or "message", self._last_id)


def iter_events(chunks: Iterable[bytes], **options: int) -> Iterator[SSEEvent]:
    """Yield the events of a byte stream as soon as each one is complete."""
    parser = SSEParser(**options)
    for chunk in chunks:
        yield from parser.feed(chunk)


# --- OpenAI payloads -------------------------------------------------------------------

DONE: Final = object()
"""Returned by :func:`parse_chunk` for ``data: [DONE]``."""

_FINISH_REASONS = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls",
    "content_filter": "content_filter", "function_call": "tool_calls",
    "eos": "stop", "eos_token": "stop", "stop_sequence": "stop", "max_tokens": "length",
}  # fmt: skip


def parse_chunk(event: SSEEvent) -> StreamChunk | object | None:
    """Turn one event into a :class:`StreamChunk`, :data:`DONE`, or None when it carries
    no text, finish reason, usage or tool call piece (role-only first chunks, empty
    deltas).

    A non-empty ``delta.refusal`` is the chunk's text (after any ``delta.content``) and
    sets ``refusal``. ``delta.tool_calls`` pieces become ``tool_call_deltas``
    (``{"index", "id"?, "name"?, "arguments"?}``; assembling them is the stream's work,
    :class:`~mpai.providers.base.ToolCallAssembler`).

    ``finish_reason`` is normalised to stop/length/tool_calls/content_filter (legacy
    ``function_call`` is tool_calls, unknown values are stop). Only choice index 0 counts.

    Raises:
        ProviderStreamError: ``event: error``, an error object, or data that is not a JSON
            object; ``status`` is the error's numeric ``code`` when it has one.
    """
    if event.data.strip() == "[DONE]":
        return DONE
    payload = loads(event.data)
    raise_error_object(payload, event.data, always=event.event == "error")
    choices = [c for c in payload.get("choices") or [] if isinstance(c, dict)]
    choice = next((c for c in choices if c.get("index", 0) == 0), {})
    delta = choice.get("delta")
    content, refusal = _text(delta, "content"), _text(delta, "refusal")
    finish_reason = _finish_reason(choice.get("finish_reason"))
    usage = _usage(payload.get("usage"))
    pieces = _tool_call_pieces(delta)
    if not content and not refusal and finish_reason is None and usage is None and not pieces:
        return None
    return StreamChunk(
        content + refusal, finish_reason, usage, refusal=bool(refusal), tool_call_deltas=pieces
    )


def parse_completion(payload: dict[str, Any], model: str) -> Completion:
    """A ``chat.completion`` object as a :class:`Completion` (``model`` if it names none).

    A non-empty ``message.refusal`` is the text (after any ``content``) and sets ``refusal``;
    ``message.tool_calls`` (``[{"id", "type": "function", "function": {"name",
    "arguments"}}]``) become ``tool_calls`` (``{"id", "name", "arguments"}``).

    Raises:
        ProviderStreamError: the payload is an error object.
    """
    raise_error_object(payload, json.dumps(payload))
    choices = payload.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    reply = choice.get("message")
    content, refusal = _text(reply, "content"), _text(reply, "refusal")
    assembler = ToolCallAssembler()
    calls = reply.get("tool_calls") if isinstance(reply, dict) else None
    if isinstance(calls, list):
        assembler.add(
            _piece(call, position) for position, call in enumerate(calls) if isinstance(call, dict)
        )
    return Completion(
        content + refusal,
        _finish_reason(choice.get("finish_reason")),
        _usage(payload.get("usage")),
        str(payload.get("model") or model),
        refusal=bool(refusal),
        tool_calls=assembler.calls(),
    )


def loads(data: str) -> dict[str, Any]:
    """Parse a JSON object, or raise :class:`ProviderStreamError` quoting the data."""
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise ProviderStreamError(provider_message=f"unparseable data: {data[:500]}") from exc
    if not isinstance(payload, dict):
        raise ProviderStreamError(provider_message=f"unexpected data: {data[:500]}")
    return payload


def raise_error_object(payload: dict[str, Any], raw: str, *, always: bool = False) -> None:
    """Raise :class:`ProviderStreamError` if ``payload`` is an error object (or ``always``)."""
    if always or "error" in payload or payload.get("object") == "error":
        message, code = error_fields(payload, raw)
        status = code if isinstance(code, int) else None
        raise ProviderStreamError(status=status, provider_message=message)


def error_fields(payload: Any, raw: str) -> tuple[str, Any]:
    """``(message, code or type)`` of an OpenAI error body and its common variants
    (``{"error": "text"}``, ``{"detail": ...}``, ``{"message": ...}``); else ``raw``."""
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, str):
        return error, None
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or payload.get("message")
        return str(message or raw[:500]), error.get("code") or error.get("type")
    return raw[:500], None


def _text(message: Any, name: str) -> str:
    """``message[name]`` when ``message`` is a dict and that is a string, else ""."""
    value = message.get(name) if isinstance(message, dict) else None
    return value if isinstance(value, str) else ""


def _tool_call_pieces(delta: Any) -> tuple[dict[str, Any], ...]:
    """The ``delta.tool_calls`` of a chunk as flat pieces (see :func:`parse_chunk`)."""
    calls = delta.get("tool_calls") if isinstance(delta, dict) else None
    if not isinstance(calls, list):
        return ()
    return tuple(
        _piece(call, position) for position, call in enumerate(calls) if isinstance(call, dict)
    )


def _piece(call: dict[str, Any], position: int) -> dict[str, Any]:
    """One OpenAI tool call (or piece of one) as ``{"index", "id"?, "name"?, "arguments"?}``."""
    found = call.get("function")
    function: dict[str, Any] = found if isinstance(found, dict) else {}
    index = call.get("index")
    piece: dict[str, Any] = {
        "index": index if isinstance(index, int) and not isinstance(index, bool) else position
    }
    if isinstance(call.get("id"), str) and call["id"]:
        piece["id"] = call["id"]
    if isinstance(function.get("name"), str) and function["name"]:
        piece["name"] = function["name"]
    arguments = function.get("arguments")
    if isinstance(arguments, dict):  # a few servers send the object itself
        arguments = json.dumps(arguments)
    if isinstance(arguments, str) and arguments:
        piece["arguments"] = arguments
    return piece


def _finish_reason(value: Any) -> str | None:
    return _FINISH_REASONS.get(value, "stop") if value else None


def _usage(value: Any) -> Usage | None:
    if not isinstance(value, dict):
        return None
    prompt = int(value.get("prompt_tokens") or 0)
    completion = int(value.get("completion_tokens") or 0)
    return Usage(prompt, completion, int(value.get("total_tokens") or prompt + completion))
