"""An OpenAI-compatible Chat Completions provider over HTTP (``requests`` + ``tenacity``).

Speaks ``POST {base_url}/chat/completions`` of the OpenAI Chat Completions API
(https://platform.openai.com/docs/api-reference/chat), streamed as Server-Sent Events
(``data: {"object": "chat.completion.chunk", ...}`` lines ending with ``data: [DONE]``),
the dialect that OpenAI, vLLM, llama.cpp, Ollama and LiteLLM serve. Error bodies are
``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import math
import random
import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import requests
from django.core.exceptions import ImproperlyConfigured
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from urllib3.exceptions import ReadTimeoutError

from mpai.exceptions import (
    ContextLengthExceeded,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderStreamError,
    ProviderTimeout,
    ProviderUnavailable,
)

from .base import (
    ChatProvider,
    ChatRequest,
    ChatStream,
    Completion,
    StreamChunk,
    ToolCall,
    ToolCallAssembler,
)
from .sse import DONE, SSEError, SSEParser, error_fields, loads, parse_chunk, parse_completion

logger = logging.getLogger(__name__)

_CONTEXT_RE = re.compile(
    r"maximum context length|context[_ ]length[_ ]exceeded|context window"
    r"|exceeds the available context",
    re.IGNORECASE,
)


class _Retryable(Exception):
    """Internal: ``error`` may be retried, after ``wait`` seconds if the provider said."""

    def __init__(self, error: ProviderError, wait: float | None = None) -> None:
        super().__init__(str(error))
        self.error, self.wait = error, wait


class OpenAIProvider(ChatProvider):
    """OpenAI Chat Completions over HTTP; one pooled ``requests.Session``, safe across threads.

    Options (``MPAI["PROVIDER"]["OPTIONS"]``; times in seconds, floats allowed):
        base_url: API root, e.g. ``http://host:port/v1`` (default ``https://api.openai.com/v1``).
        api_key: sent as ``Authorization: Bearer <key>``; empty sends no header (default "").
        connect_timeout: TCP/TLS connect timeout (5.0).
        read_timeout: longest wait for any read, so also the longest gap between stream
            chunks (60.0).
        max_retries: retries after the first attempt (3).
        backoff_initial, backoff_max, backoff_jitter: retry waits are
            ``min(backoff_max, backoff_initial * 2**n + uniform(0, backoff_jitter))`` for
            n = 0, 1, ... (0.5, 8.0, 0.5), unless the provider sent ``Retry-After``
            (seconds or an HTTP-date; OpenAI's ``retry-after-ms`` too), which is waited exactly.
        retry_after_max: a ``Retry-After`` longer than this is not waited for: the error is
            raised at once with ``retry_after`` set (60.0).
        include_usage: send ``stream_options: {"include_usage": true}`` (True; turn off for
            servers that reject it).
        extra_headers: more request headers (dict, default none).
        pool_maxsize: most pooled connections kept to the provider (64).

    Retried, only before a response body is handed out: connection errors, timeouts,
    408, 409, 429 and 5xx. Errors raised after retries (all carry ``status`` and the
    provider's ``provider_message``): 429 :class:`ProviderRateLimited`; 408 and timeouts
    :class:`ProviderTimeout`; connection errors, 409 and 5xx :class:`ProviderUnavailable`;
    401/403 :class:`ProviderAuthError`; a 4xx naming the context length (code
    ``context_length_exceeded`` or "maximum context length") :class:`ContextLengthExceeded`;
    other 4xx :class:`ProviderBadRequest`. ``retry_after`` holds the provider's Retry-After
    whenever it sent one.
    """

    provider_name = "openai"  # an OpenAI-compatible API

    def __init__(
        self,
        *,
        base_url: str = "https://api.openai.com/v1",
        api_key: str = "",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_retries: int = 3,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        backoff_jitter: float = 0.5,
        retry_after_max: float = 60.0,
        include_usage: bool = True,
        extra_headers: dict[str, str] | None = None,
        pool_maxsize: int = 64,
    ) -> None:
        super().__init__(base_url=base_url)  # keeps the key out of self.options
        if not base_url.startswith(("http://", "https://")):
            raise ImproperlyConfigured(f"OpenAIProvider base_url must be http(s): {base_url!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.timeout = (float(connect_timeout), float(read_timeout))
        self.max_retries = max(0, int(max_retries))
        self.backoff = (float(backoff_initial), float(backoff_max), float(backoff_jitter))
        self.retry_after_max = float(retry_after_max)
        self.include_usage = include_usage
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_maxsize)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "mpai (OpenAI-compatible client)"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self.session.headers.update(extra_headers or {})

    def open_stream(self, request: ChatRequest) -> OpenAIStream:
        """POST ``request`` with ``stream: true``; return once the response headers arrived.

        Raises:
            ProviderError: a subclass naming the failure, after retries (see the class).
        """
        body = self._body(request, stream=True)
        headers = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
        response, attempts = self._post(body, headers, stream=True)
        return OpenAIStream(response, attempts=attempts)

    def complete(self, request: ChatRequest) -> Completion:
        """POST ``request`` with ``stream: false`` (same retries) and return the whole reply.

        Raises:
            ProviderError: as :meth:`open_stream`; :class:`ProviderStreamError` when the
                accepted body is not a completion or holds an error object.
        """
        body = self._body(request, stream=False)
        response, _ = self._post(body, {"Accept": "application/json"}, stream=False)
        try:
            payload = json.loads(response.content)
        except ValueError as exc:
            raise ProviderStreamError(
                status=response.status_code, provider_message=response.text[:500]
            ) from exc
        finally:
            response.close()
        return parse_completion(payload, request.model)

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def _body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "messages": request.messages}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.tools:
            # Function calling (OpenAI Chat Completions, "tools" and "tool_choice").
            body["tools"] = request.tools
            body["tool_choice"] = "auto"
        body.update(request.extra)
        body["stream"] = stream
        if stream and self.include_usage:
            body.setdefault("stream_options", {"include_usage": True})
        return body

    def _post(
        self, body: dict[str, Any], headers: dict[str, str], *, stream: bool
    ) -> tuple[requests.Response, int]:
        attempts = 0

        def attempt() -> requests.Response:
            nonlocal attempts
            attempts += 1
            try:
                response = self.session.post(
                    self.url, json=body, headers=headers, timeout=self.timeout, stream=stream
                )
            except requests.RequestException as exc:
                raise _Retryable(_transport_error(exc)) from exc
            if response.status_code < 400:
                return response
            error = _http_error(response)
            response.close()
            retryable = error.status in (408, 409, 429) or (error.status or 0) >= 500
            if not retryable or (error.retry_after or 0) > self.retry_after_max:
                raise error
            raise _Retryable(error, error.retry_after)

        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            return retrying(attempt), attempts
        except _Retryable as exc:
            raise exc.error from exc.__cause__

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.wait is not None:
            return exc.wait
        initial, most, jitter = self.backoff
        exponential = initial * 2 ** min(state.attempt_number - 1, 64)
        return max(0.0, min(most, exponential + random.uniform(0, jitter)))


class OpenAIStream(ChatStream):
    """An open streamed reply; iterate it once for :class:`StreamChunk` objects.

    Chunks are parsed by :func:`mpai.providers.sse.parse_chunk` (empty ones skipped);
    a refusal (``delta.refusal``) comes as text chunks with ``refusal`` set. Iteration
    ends at ``data: [DONE]``; when the body ends without it, quietly if a
    ``finish_reason`` arrived (some servers omit ``[DONE]``), otherwise the reply was cut
    off and :class:`ProviderUnavailable` is raised after the chunks received. It ends
    quietly after :meth:`close`.

    Tool calls (``delta.tool_calls`` pieces, several calls in parallel told apart by
    ``index``) are assembled as they arrive and handed out whole as the ``tool_calls``
    of the chunk that carries the ``finish_reason`` (or, if none did, of a last chunk
    at ``[DONE]``); :attr:`tool_calls` holds them too. Chunks with nothing but pieces
    are not yielded.

    Raises (while iterating):
        ProviderStreamError: ``event: error``, an error object, or unparseable data;
            ``status`` is the error object's numeric ``code`` when it has one.
        ProviderTimeout: no byte arrived for ``read_timeout`` seconds.
        ProviderUnavailable: the connection broke mid-stream (reset, truncated chunked
            body), or the body ended with neither ``[DONE]`` nor a ``finish_reason``.

    Attributes:
        attempts: HTTP requests made to open it (1 + retries).
        headers: the response headers (case-insensitive).
        status: the HTTP status code.
    """

    read_size = 65536

    def __init__(self, response: requests.Response, *, attempts: int) -> None:
        self.attempts = attempts
        self.headers = response.headers
        self.status = response.status_code
        self._response = response
        self._lock = threading.Lock()
        self._closed = self._reading = self._released = False
        self._assembler = ToolCallAssembler()
        self._iterator = self._chunks()

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls assembled so far, ``({"id", "name", "arguments"}, ...)``."""
        return self._assembler.calls()

    def __enter__(self) -> OpenAIStream:
        return self

    def __iter__(self) -> Iterator[StreamChunk]:
        return self

    def __next__(self) -> StreamChunk:
        return next(self._iterator)

    def close(self) -> None:
        """Stop reading and drop the connection; safe from any thread, idempotent.

        A read blocked in another thread is woken (``shutdown(SHUT_RD)`` on the socket)
        and that thread's iteration ends quietly.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._reading:  # the reading thread releases the response itself
                with contextlib.suppress(ValueError, RuntimeError, OSError):
                    self._response.raw.shutdown()
                return
        self._release()

    def _release(self) -> None:
        with self._lock:
            released, self._released = self._released, True
        if not released:
            self._response.close()

    def _read(self) -> bytes:
        """One read of whatever the socket has; b"" at the end or once closed."""
        with self._lock:
            if self._closed:
                return b""
            self._reading = True
        data, error = b"", None
        try:
            data = self._response.raw.read1(self.read_size, decode_content=True)
        except Exception as exc:  # mapped below, unless closed meanwhile
            error = exc
        with self._lock:
            self._reading = False
            if self._closed:
                return b""
        if error is None:
            return data
        if isinstance(error, ReadTimeoutError):
            raise ProviderTimeout(provider_message=str(error)) from error
        raise ProviderUnavailable(provider_message=f"stream broken: {error}") from error

    def _drain(self) -> None:
        """Read to the body's end after ``[DONE]`` so the connection goes back to the pool."""
        with contextlib.suppress(ProviderError):
            while self._read():
                pass

    def _chunks(self) -> Iterator[StreamChunk]:
        try:
            if "json" in self.headers.get("Content-Type", ""):  # the server ignored stream
                body = b"".join(iter(self._read, b"")).decode("utf-8", "replace")
                if not self._closed:
                    reply = parse_completion(loads(body), "")
                    self._assembler.add(
                        {"index": index, **call} for index, call in enumerate(reply.tool_calls)
                    )
                    yield StreamChunk(
                        reply.text,
                        reply.finish_reason,
                        reply.usage,
                        reply.refusal,
                        tool_calls=reply.tool_calls,
                    )
                return
            parser = SSEParser()
            finished = False  # a finish_reason arrived
            handed_out = False  # the assembled tool calls were yielded
            while data := self._read():
                try:
                    events = parser.feed(data)
                except SSEError as exc:
                    raise ProviderStreamError(provider_message=str(exc)) from exc
                for event in events:
                    chunk = parse_chunk(event)
                    if chunk is DONE:
                        if self._assembler and not handed_out:
                            yield StreamChunk(tool_calls=self._assembler.calls())
                        self._drain()
                        return
                    if not isinstance(chunk, StreamChunk):
                        continue
                    if chunk.tool_call_deltas:
                        self._assembler.add(chunk.tool_call_deltas)
                        chunk = replace(chunk, tool_call_deltas=())
                    if chunk.finish_reason is not None and self._assembler and not handed_out:
                        handed_out = True
                        chunk = replace(chunk, tool_calls=self._assembler.calls())
                    finished = finished or chunk.finish_reason is not None
                    if chunk.text or chunk.finish_reason or chunk.usage or chunk.tool_calls:
                        yield chunk
            with self._lock:
                closed = self._closed
            if not closed and not finished:
                raise ProviderUnavailable(
                    provider_message="stream ended before the reply finished"
                    " (no finish_reason, no [DONE])"
                )
        finally:
            with self._lock:
                self._closed = True
            self._release()


def _http_error(response: requests.Response) -> ProviderError:
    status = response.status_code
    try:
        text = response.text
    except requests.RequestException:  # the body broke off: the status still counts
        text = ""
    try:
        message, code = error_fields(json.loads(text), text)
    except ValueError:
        message, code = text.strip()[:500] or response.reason or f"HTTP {status}", None
    cls: type[ProviderError]
    if status in (401, 403):
        cls = ProviderAuthError
    elif status == 429:
        cls = ProviderRateLimited
    elif status == 408:
        cls = ProviderTimeout
    elif status == 409 or status >= 500:
        cls = ProviderUnavailable
    elif code == "context_length_exceeded" or _CONTEXT_RE.search(message):
        cls = ContextLengthExceeded
    else:
        cls = ProviderBadRequest
    retry_after = _retry_after(response.headers)
    return cls(status=status, provider_message=message, retry_after=retry_after)


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP-date (RFC 9110)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = (headers.get(name) or "").strip()
        try:
            seconds = float(value) * scale
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(headers.get("retry-after") or "")
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _transport_error(exc: requests.RequestException) -> ProviderError:
    cause = exc.args[0] if exc.args else None
    if isinstance(exc, requests.Timeout) or isinstance(cause, ReadTimeoutError):
        return ProviderTimeout(provider_message=str(exc))
    return ProviderUnavailable(provider_message=str(exc))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    error = exc.error if isinstance(exc, _Retryable) else exc
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.warning(
        "Provider attempt %d failed (%s: %s); retrying in %.3fs",
        state.attempt_number, type(error).__name__,
        getattr(error, "provider_message", None) or error, wait,
    )  # fmt: skip
