"""The provider interface: what the chat pipeline needs from a model provider.

The shapes follow the OpenAI Chat Completions API (``messages`` of ``role`` and
``content``, ``finish_reason``, ``usage``), which every supported provider speaks.

A provider opens a stream in two steps so the pipeline can measure both points
named in README ("Signals"): :meth:`ChatProvider.open_stream` returns once the status line
and headers have arrived (``api_response_received``); iterating the returned
:class:`ChatStream` reads the body.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "content_filter", "tool_calls"]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One Chat Completions request.

    Attributes:
        model: the model name sent to the provider.
        messages: ``[{"role": ..., "content": ...}, ...]`` in conversation order.
        max_tokens: most tokens to generate, or None for the provider's default.
        temperature: sampling temperature, or None for the provider's default.
        extra: other request body fields, sent as they are.
    """

    model: str
    messages: list[dict[str, str]]
    max_tokens: int | None = None
    temperature: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    refusal: bool = False


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole non-streamed reply.

    Attributes:
        text: the reply (``message.content``, or ``message.refusal`` for a refusal).
        refusal: the model refused; ``text`` is its refusal.
    """

    text: str
    finish_reason: str | None
    usage: Usage | None
    model: str
    refusal: bool = False


class ChatStream(abc.ABC):
    """An open streamed reply: headers received, body not read yet.

    Iterate it for :class:`StreamChunk` objects; :meth:`close` stops reading and
    releases the connection (the stop button). Usable as a context manager. A stream
    whose body ends before the reply finished (no ``finish_reason`` and no end marker)
    raises :class:`mpai.exceptions.ProviderUnavailable` after its last chunk, as a broken
    connection does; one ended by :meth:`close` just stops.

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
        with self.open_stream(request) as stream:
            for chunk in stream:
                parts.append(chunk.text)
                finish_reason = chunk.finish_reason or finish_reason
                usage = chunk.usage or usage
                refusal = refusal or chunk.refusal
        return Completion("".join(parts), finish_reason, usage, request.model, refusal)
