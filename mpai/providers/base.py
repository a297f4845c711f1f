"""The provider interface: what the chat pipeline needs from a model provider.

The shapes follow the OpenAI Chat Completions API (``messages`` of ``role`` and
``content``, ``finish_reason``, ``usage``, and for function calling the request's
``tools`` and the reply's ``tool_calls``: https://platform.openai.com/docs/api-reference/chat
and https://platform.openai.com/docs/guides/function-calling), which every supported
provider speaks.

A provider opens a stream in two steps so the pipeline can measure both points
named in README ("Signals"): :meth:`ChatProvider.open_stream` returns once the status line
and headers have arrived (``api_response_received``); iterating the returned
:class:`ChatStream` reads the body.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]

#: An assembled tool call of a reply: ``{"id": str, "name": str, "arguments": str}``,
#: ``arguments`` the JSON text the model wrote (not parsed, maybe not even valid JSON).
ToolCall = dict[str, str]
FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One Chat Completions request.

    Attributes:
        model: the model name sent to the provider.
        messages: ``[{"role": ..., "content": ...}, ...]`` in conversation order; in a
            tool loop also the assistant message with its calls, ``{"role":
            "assistant", "content": str | None, "tool_calls": [{"id", "type":
            "function", "function": {"name", "arguments"}}]}``, and one ``{"role":
            "tool", "tool_call_id", "content"}`` per call (OpenAI Chat Completions).
        max_tokens: most tokens to generate, or None for the provider's default.
        temperature: sampling temperature, or None for the provider's default.
        extra: other request body fields, sent as they are.
        tools: the functions the model may call, each ``{"type": "function",
            "function": {"name", "description", "parameters"}}``
            (:meth:`mpai.tools.Tool.openai_schema`); sent as ``tools`` with
            ``tool_choice: "auto"``. None or empty: no tools offered.
    """

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the provider reported them (``usage`` in Chat Completions)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One parsed piece of a stream.

    Attributes:
        text: the reply delta (may be empty, e.g. a role-only first chunk): the content
            delta, or the refusal delta when ``refusal`` is set.
        finish_reason: set on the chunk that ends the choice.
        usage: set on the usage chunk (often a final chunk with empty ``choices``).
        refusal: ``text`` is refusal text (Chat Completions ``delta.refusal``, sent instead
            of ``delta.content`` when the model refuses). The reply is a refusal when any
            of its chunks has this set; the refusal text is the reply all the same.
        tool_calls: the reply's assembled tool calls (:data:`ToolCall`), set once, on
            the chunk that ends the reply (usually with ``finish_reason``
            ``"tool_calls"``); empty on every other chunk.
        tool_call_deltas: the pieces of ``delta.tool_calls`` in this chunk, each
            ``{"index": int, "id"?: str, "name"?: str, "arguments"?: str}`` (what
            :func:`mpai.providers.sse.parse_chunk` read; a stream assembles them with
            :class:`ToolCallAssembler` and need not pass them on).
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    refusal: bool = False
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_deltas: tuple[dict[str, Any], ...] = ()


class ToolCallAssembler:
    """Joins streamed ``delta.tool_calls`` pieces into whole calls.

    OpenAI streams a call's ``id``, ``type`` and ``function.name`` in its first piece
    and ``function.arguments`` in pieces after it; parallel calls are told apart by
    ``index`` (https://platform.openai.com/docs/guides/function-calling, "Streaming").
    Pieces are :attr:`StreamChunk.tool_call_deltas` dicts. A name or id sent again is
    kept as the last one seen (some servers repeat it); argument pieces are appended.
    """

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, pieces: Iterable[Mapping[str, Any]]) -> None:
        """Take the pieces of one chunk, in order."""
        for piece in pieces:
            index = piece.get("index")
            if not isinstance(index, int) or isinstance(index, bool):
                index = len(self._calls) if piece.get("id") else max(self._calls, default=0)
            call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            if piece.get("id"):
                call["id"] = str(piece["id"])
            if piece.get("name"):
                call["name"] = str(piece["name"])
            if piece.get("arguments"):
                call["arguments"] += str(piece["arguments"])

    def calls(self) -> tuple[ToolCall, ...]:
        """The calls so far (:data:`ToolCall` dicts, new ones), by ``index``; a call with
        no id gets ``call_<index>``."""
        return tuple(
            {**call, "id": call["id"] or f"call_{index}"}
            for index, call in sorted(self._calls.items())
        )

    def __bool__(self) -> bool:
        return bool(self._calls)


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole non-streamed reply.

    Attributes:
        text: the reply (``message.content``, or ``message.refusal`` for a refusal).
        refusal: the model refused; ``text`` is its refusal.
        tool_calls: the calls the model asks for (``message.tool_calls`` as
            :data:`ToolCall` dicts), empty when it answered in text.
    """

    text: str
    finish_reason: str | None
    usage: Usage | None
    model: str
    refusal: bool = False
    tool_calls: tuple[ToolCall, ...] = ()


class ChatStream(abc.ABC):
    """An open streamed reply: headers received, body not read yet.

    Iterate it for :class:`StreamChunk` objects; :meth:`close` stops reading and
    releases the connection (the stop button). Usable as a context manager. A stream
    whose body ends before the reply finished (no ``finish_reason`` and no end marker)
    raises :class:`mpai.exceptions.ProviderUnavailable` after its last chunk, as a broken
    connection does; one ended by :meth:`close` just stops. A reply that asks for tool
    calls hands them out assembled as :attr:`StreamChunk.tool_calls` of its last
    chunk (finish_reason ``"tool_calls"``); its text deltas stream as usual.

    Attributes:
        attempts: HTTP requests made to open it (1 + retries).
        headers: the response headers (empty for offline providers).
    """

    attempts: int = 1
    headers: Mapping[str, str] = {}

    @abc.abstractmethod
    def __iter__(self) -> Iterator[StreamChunk]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ChatProvider(abc.ABC):
    """A model provider, built from ``MPAI["PROVIDER"]`` = ``{"BACKEND", "OPTIONS"}``.

    Subclasses take their ``OPTIONS`` as keyword arguments.
    """

    #: ``gen_ai.provider.name`` of the OpenTelemetry GenAI semantic conventions
    #: (https://opentelemetry.io/docs/specs/semconv/registry/attributes/gen-ai/): a
    #: well-known value such as ``"openai"`` where one applies.
    provider_name: str = "unknown"

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abc.abstractmethod
    def open_stream(self, request: ChatRequest) -> ChatStream:
        """Send ``request`` with ``stream: true`` and return once headers arrive.

        Raises:
            mpai.exceptions.ProviderError: a subclass naming the failure, after retries.
        """

    def complete(self, request: ChatRequest) -> Completion:
        """Return the whole reply to ``request`` (default: read a stream to its end).

        Raises:
            mpai.exceptions.ProviderError: as :meth:`open_stream`, or from inside the stream.
        """
        parts: list[str] = []
        finish_reason: str | None = None
        usage: Usage | None = None
        refusal = False
        tool_calls: tuple[ToolCall, ...] = ()
        with self.open_stream(request) as stream:
            for chunk in stream:
                parts.append(chunk.text)
                finish_reason = chunk.finish_reason or finish_reason
                usage = chunk.usage or usage
                refusal = refusal or chunk.refusal
                tool_calls = chunk.tool_calls or tool_calls
        return Completion("".join(parts), finish_reason, usage, request.model, refusal, tool_calls)
