"""A fake OpenAI-compatible Chat Completions server for tests (pytest-httpserver, real sockets).

One threaded HTTP server per test session on 127.0.0.1 and a free port (never 8000),
reset for every test. Anything that can reach the port may call it, subprocesses too
(the websocket end-to-end tests run uvicorn in one): the replies are scripted in the
test process, where the server threads run. The port stays the same for the whole
session (``fake_openai_url``), so a session-scoped subprocess can be pointed at it once.

Usage (the fixture ``fake_openai``)::

    fake_openai.respond_error(503, "overloaded", times=2)   # two failures first
    fake_openai.stream_reply(["Hel", "lo"], usage=(12, 2))  # then this, every time
    provider = OpenAIProvider(base_url=fake_openai.base_url, backoff_initial=0.001)
    ...
    assert fake_openai.requests[-1]["stream"] is True

Streams look like OpenAI's (https://platform.openai.com/docs/api-reference/chat-streaming):
``chat.completion.chunk`` objects with ``id``, ``created``, ``model`` (the request's),
a role-only first chunk, one chunk per part, a chunk with ``finish_reason`` and an
empty delta, then, only when the request asked for ``stream_options.include_usage``,
a usage chunk with empty ``choices``; then ``data: [DONE]``. A request with
``stream: false`` gets a ``chat.completion`` object of the same reply. A refusal
(``stream_refusal``) carries its parts in ``delta.refusal`` instead of ``delta.content``
(``message.refusal`` with ``content: null`` when not streamed), as OpenAI sends one.

Tool calls (``stream_tool_calls``) stream as OpenAI's do
(https://platform.openai.com/docs/guides/function-calling, "Streaming"): after any text
parts, each call's first piece ``{"index", "id", "type": "function", "function":
{"name", "arguments": ""}}``, then its arguments in ``pieces`` pieces
``{"index", "function": {"arguments"}}`` (the pieces of parallel calls interleaved),
then ``finish_reason: "tool_calls"``. Queued with ``times``, such replies (and
``queue_reply`` text replies) are served in order before the current reply, so a
test scripts a whole tool loop::

    fake_openai.stream_tool_calls([{"name": "list_plans", "arguments": "{}"}])
    fake_openai.stream_reply(["Two plans."])   # the follow-up request gets this
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

MODEL = "fake-model"
_ids = itertools.count(1)
_ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_error"}


@dataclass
class _Reply:
    """A scripted 200 reply, streamed or not as the request asks."""

    parts: list[str]
    finish_reason: str | None = "stop"
    usage: tuple[int, int] | str | None = "auto"
    delay_s: float = 0.0
    done: bool = True
    error: dict[str, Any] | None = None
    error_as_event: bool = False
    disconnect: bool = False
    raw: list[bytes] | None = None
    content_type: str = "text/event-stream"
    refusal: bool = False
    tool_calls: list[dict[str, str]] | None = None
    pieces: int = 1


@dataclass
class _Error:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class _Stall:
    """Wait ``seconds`` before answering (headers included) with the current reply."""

    seconds: float


class FakeOpenAI:
    """The scripting side of the fake server; see the module docstring.

    Attributes:
        base_url: ``http://127.0.0.1:<port>/v1``.
        requests: request bodies received (parsed JSON), oldest first.
        request_headers: their headers, as dicts, in the same order.
    """

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.base_url = f"http://127.0.0.1:{server.port}/v1"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.reset()

    # --- scripting -------------------------------------------------------------------

    def stream_reply(
        self,
        parts: list[str],
        *,
        finish_reason: str | None = "stop",
        usage: tuple[int, int] | str | None = "auto",
        delay_s: float = 0.0,
        done: bool = True,
    ) -> None:
        """Answer every later request with ``parts`` (one content chunk each).

        Args:
            finish_reason: sent on its own chunk after the parts; None sends no such chunk.
            usage: ``(prompt_tokens, completion_tokens)`` for the usage chunk, None for no
                usage chunk, "auto" for (words in the request's messages, len(parts)).
            delay_s: seconds slept before each chunk after the role-only first one.
            done: end with ``data: [DONE]`` (False: the body just ends).
        """
        self._set(_Reply(list(parts), finish_reason, usage, delay_s, done))

    def json_reply(
        self,
        text: str,
        *,
        finish_reason: str = "stop",
        usage: tuple[int, int] | str | None = "auto",
    ) -> None:
        """Answer every later request with ``text`` (a ``chat.completion`` if not streamed)."""
        self._set(_Reply([text], finish_reason, usage))

    def stream_then_error(
        self,
        parts: list[str],
        error_message: str,
        *,
        code: str | int | None = None,
        as_event: bool = False,
    ) -> None:
        """Stream ``parts``, then ``data: {"error": {...}}`` (or ``event: error``), no [DONE]."""
        error = {"error": {"message": error_message, "type": "server_error", "code": code}}
        self._set(_Reply(list(parts), None, None, error=error, error_as_event=as_event))

    def stream_refusal(
        self, parts: list[str], *, usage: tuple[int, int] | str | None = "auto"
    ) -> None:
        """Answer every later request with a refusal: ``parts`` in ``delta.refusal``, then
        ``finish_reason: "stop"``, usage and ``[DONE]`` (``message.refusal`` if not streamed)."""
        self._set(_Reply(list(parts), "stop", usage, refusal=True))

    def stream_truncated(self, parts: list[str], *, finish_reason: str | None = None) -> None:
        """Stream ``parts`` (then a ``finish_reason`` chunk, if given), then end the body
        cleanly: no usage chunk, no ``[DONE]``, the chunked encoding properly terminated."""
        self._set(_Reply(list(parts), finish_reason, None, done=False))

    def stream_then_disconnect(self, parts: list[str], *, delay_s: float = 0.0) -> None:
        """Stream ``parts``, then drop the connection without ending the chunked body."""
        self._set(_Reply(list(parts), None, None, delay_s, done=False, disconnect=True))

    def stream_raw(
        self,
        pieces: list[str | bytes],
        *,
        delay_s: float = 0.0,
        content_type: str = "text/event-stream",
    ) -> None:
        """Send ``pieces`` as they are as the body: one write each, ``delay_s`` apart."""
        raw = [p.encode() if isinstance(p, str) else p for p in pieces]
        self._set(_Reply([], delay_s=delay_s, raw=raw, content_type=content_type))

    def stream_tool_calls(
        self,
        calls: list[dict[str, str]],
        *,
        parts: list[str] | None = None,
        pieces: int = 3,
        usage: tuple[int, int] | str | None = "auto",
        times: int | None = 1,
    ) -> None:
        """Answer with ``calls`` (``{"name", "arguments", "id"?}``; ids default to
        ``call_<n>``), after the text ``parts`` (default none), the arguments of each
        split into ``pieces`` pieces (at most one per character).

        Args:
            times: how many requests get it, queued before the current reply (in order
                with other queued items); None makes it the current reply (every later
                request gets it).
        """
        numbered = [
            {"id": call.get("id") or f"call_{next(_ids)}", "name": call["name"],
             "arguments": call.get("arguments", "")}
            for call in calls
        ]  # fmt: skip
        reply = _Reply(list(parts or []), "tool_calls", usage, tool_calls=numbered, pieces=pieces)
        if times is None:
            self._set(reply)
            return
        with self._lock:
            self._queue.extend([reply] * times)

    def queue_reply(
        self, parts: list[str], *, usage: tuple[int, int] | str | None = "auto"
    ) -> None:
        """Queue one text reply of ``parts``, served in order before the current reply."""
        with self._lock:
            self._queue.append(_Reply(list(parts), "stop", usage))

    def respond_error(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        raw: bool = False,
    ) -> None:
        """Queue ``times`` error responses, served before the current reply.

        The body is OpenAI's ``{"error": {"message", "type", "code", "param"}}``, or
        ``message`` as plain text when ``raw``.
        """
        if raw:
            error = _Error(status, message.encode(), dict(headers or {}), "text/plain")
        else:
            kind = _ERROR_TYPES.get(
                status, "server_error" if status >= 500 else "invalid_request_error"
            )
            body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
            error = _Error(status, json.dumps(body).encode(), dict(headers or {}))
        with self._lock:
            self._queue.extend([error] * times)

    def stall(self, seconds: float, *, times: int = 1) -> None:
        """Queue ``times`` requests that wait ``seconds`` before any byte of the answer."""
        with self._lock:
            self._queue.extend([_Stall(seconds)] * times)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._headers)

    def reset(self) -> None:
        """Forget scripts and requests, end slow streams, re-register the routes."""
        self._stop.set()
        with self._lock:
            self._stop = threading.Event()
            self._queue: deque[_Error | _Stall | _Reply] = deque()
            self._reply = _Reply(["Hello", " from", " the", " fake", " provider."])
            self._requests: list[dict[str, Any]] = []
            self._headers: list[dict[str, str]] = []
        self.server.clear()
        self.server.no_handler_status_code = 404
        self.server.expect_request("/v1/chat/completions", method="POST").respond_with_handler(
            self._handle
        )
        models = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
        self.server.expect_request("/v1/models", method="GET").respond_with_json(models)

    def close(self) -> None:
        self._stop.set()
        self.server.clear()

    # --- serving ---------------------------------------------------------------------

    def _set(self, reply: _Reply) -> None:
        with self._lock:
            self._reply = reply

    def _handle(self, request: Request) -> Response:
        try:
            body = json.loads(request.get_data() or b"{}")
        except ValueError:
            body = {"_invalid_json": request.get_data(as_text=True)}
        with self._lock:
            self._requests.append(body)
            self._headers.append(dict(request.headers))
            stop, reply = self._stop, self._reply
            item = self._queue.popleft() if self._queue else None
        if isinstance(item, _Reply):
            reply = item
        elif isinstance(item, _Stall):
            stop.wait(item.seconds)
        elif isinstance(item, _Error):
            headers = {"Content-Type": item.content_type, **item.headers}
            return Response(item.body, status=item.status, headers=headers)
        if not body.get("stream"):
            return Response(json.dumps(_completion(reply, body)), content_type="application/json")
        sock = request.environ.get("werkzeug.socket")
        return Response(
            _stream(reply, body, stop, sock),
            content_type=reply.content_type,
            headers={"Cache-Control": "no-cache", "X-Fake-OpenAI": "1"},
            direct_passthrough=True,
        )


def _usage(reply: _Reply, body: dict[str, Any]) -> dict[str, int] | None:
    if reply.usage is None:
        return None
    if isinstance(reply.usage, tuple):
        prompt, completion = reply.usage
    else:
        messages = body.get("messages") or []
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion = len(reply.parts)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(reply: _Reply, body: dict[str, Any]) -> dict[str, Any]:
    text = "".join(reply.parts)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if reply.refusal or (reply.tool_calls and not text) else text,
        "refusal": text if reply.refusal else None,
    }
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": call["id"], "type": "function",
             "function": {"name": call["name"], "arguments": call["arguments"]}}
            for call in reply.tool_calls
        ]  # fmt: skip
    return {
        "id": f"chatcmpl-fake{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or MODEL,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}
        ],
        "usage": _usage(reply, body),
    }


def _stream(
    reply: _Reply, body: dict[str, Any], stop: threading.Event, sock: socket.socket | None
) -> Iterator[bytes]:
    def pause() -> bool:  # False once the test is over: stop streaming
        return not (reply.delay_s and stop.wait(reply.delay_s))

    if reply.raw is not None:
        for i, piece in enumerate(reply.raw):
            if i and not pause():
                return
            yield piece
        return
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {
        "id": f"chatcmpl-fake{next(_ids)}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model") or MODEL,
        "system_fingerprint": "fp_fake",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        data: dict[str, Any] = {**base, "choices": [choice]}
        if include_usage:
            data["usage"] = None
        return _sse(data)

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for part in reply.parts:
        if not pause():
            return
        yield chunk({"refusal": part} if reply.refusal else {"content": part})
    for delta in _tool_call_deltas(reply):
        if not pause():
            return
        yield chunk(delta)
    if reply.error is not None:
        if not pause():
            return
        yield (b"event: error\n" if reply.error_as_event else b"") + _sse(reply.error)
        return
    if reply.disconnect:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        return
    if reply.finish_reason is not None:
        if not pause():
            return
        yield chunk({}, reply.finish_reason)
    usage = _usage(reply, body)
    if include_usage and usage is not None:
        yield _sse({**base, "choices": [], "usage": usage})
    if reply.done:
        yield b"data: [DONE]\n\n"


def _split(text: str, pieces: int) -> list[str]:
    """``text`` in ``pieces`` nearly equal pieces (fewer for a short text; [""] if empty)."""
    if not text:
        return [""]
    count = max(1, min(pieces, len(text)))
    size = -(-len(text) // count)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _tool_call_deltas(reply: _Reply) -> Iterator[dict[str, Any]]:
    """The ``delta`` of each tool-call chunk: every call's head, then the argument pieces
    of all calls interleaved (the first piece of each, the second of each, ...)."""
    calls = reply.tool_calls or []
    for index, call in enumerate(calls):
        head = {"index": index, "id": call["id"], "type": "function",
                "function": {"name": call["name"], "arguments": ""}}  # fmt: skip
        yield {"tool_calls": [head]}
    split = [_split(call["arguments"], reply.pieces) for call in calls]
    for round_ in range(max((len(p) for p in split), default=0)):
        for index, pieces in enumerate(split):
            if round_ < len(pieces) and pieces[round_]:
                piece = {"index": index, "function": {"arguments": pieces[round_]}}
                yield {"tool_calls": [piece]}


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


@pytest.fixture(scope="session")
def fake_openai_server() -> Iterator[HTTPServer]:
    """The session's threaded HTTP server on 127.0.0.1 and a free port."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()


@pytest.fixture(scope="session")
def fake_openai_url(fake_openai_server: HTTPServer) -> str:
    """The fake's ``base_url``, stable for the session (for session-scoped subprocesses)."""
    return f"http://127.0.0.1:{fake_openai_server.port}/v1"


@pytest.fixture
def fake_openai(fake_openai_server: HTTPServer) -> Iterator[FakeOpenAI]:
    """A fresh :class:`FakeOpenAI` (no scripts, no recorded requests) for one test."""
    fake = FakeOpenAI(fake_openai_server)
    try:
        yield fake
    finally:
        fake.close()


__all__ = ["MODEL", "FakeOpenAI", "fake_openai", "fake_openai_server", "fake_openai_url"]
