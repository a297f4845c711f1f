"""A websocket load test of a running mpai server (``python manage.py mpai_loadtest``).

The load tester runs in the same project and database as the server. Before any
connection is opened it creates (or reuses) one user per client, named
``mpai-load-<i>`` (``i`` from 1; an unusable password, so nobody can sign in as them),
and a fresh session for each in the configured ``SESSION_ENGINE``
(:func:`prepare_sessions`). Then :func:`run_load` opens the clients concurrently with the
``websockets`` asyncio client; each sends its messages one after another in one
conversation (the ``conversation`` of its first ``chat.started``) and times every
turn. The sessions are deleted afterwards (:func:`delete_sessions`); the users, and the
conversations they made, stay (``mpai_cleanup`` removes old history).

All database work happens outside the event loop, so the command also runs where an
event loop must not touch the database (``call_command`` in a test).

Rate limits: each load-test user has its own token bucket (``MPAI["RATE_LIMIT"]``,
``CAPACITY`` 10 and ``REFILL_RATE`` 0.5/s by default), so ``--messages`` above the
bucket's capacity sees ``rate_limited`` errors (reported by code, like any failure)
whenever a client sends faster than the refill, unless the server's limit is raised
(or the turns are slowed down with ``--think-ms``). A second run soon after a first
starts with partly empty buckets.

Usage::

    from mpai import loadtest
    config = loadtest.LoadTestConfig(url="ws://127.0.0.1:8000/ws/mpai/chat/", users=20,
                                     messages=5, prompts=loadtest.load_prompts())
    keys = loadtest.prepare_sessions(config.users)
    try:
        report = asyncio.run(loadtest.run_load(config, keys))
    finally:
        loadtest.delete_sessions(keys)
    print(report.format())
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import import_module, resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Origin

from mpai.benchmarks._stats import percentile
from mpai.chat.validation import validate_content
from mpai.exceptions import MpaiError

USERNAME_PREFIX = "mpai-load-"
SKIPPED_SOURCES = ("hh-rlhf",)
_BACKEND = "django.contrib.auth.backends.ModelBackend"

# Failure codes of the load tester's own (the server's codes are chat.error codes).
CLIENT_TIMEOUT = "client_timeout"  # no final frame within the timeout
CLIENT_CLOSED = "client_connection_closed"  # the connection dropped mid-turn
CLIENT_HANDSHAKE = "client_handshake_failed"  # refused or unreachable at the handshake
CLIENT_BAD_FRAME = "client_bad_frame"  # a frame that is not a JSON object
CLIENT_NOT_SENT = "client_not_sent"  # not sent: an earlier turn lost the connection


@dataclass(frozen=True)
class LoadTestConfig:
    """What to run.

    Attributes:
        url: the chat websocket, ``ws://host:port/ws/mpai/chat/`` (or ``wss://``).
        users: concurrent clients, one user and one connection each (≥ 1).
        messages: ``chat.message`` frames per client, sent one after another (≥ 1).
        prompts: message texts; client ``i`` turn ``j`` sends
            ``prompts[(i * messages + j) % len(prompts)]``.
        think_ms: pause between a turn's final frame and the client's next message (ms).
        origin: the ``Origin`` header; None = the URL's ``http(s)://host:port``.
        timeout: seconds allowed for the handshake and for each turn (send → final frame).
        cache: False sends ``"cache": false`` (skip the server's response cache).
    """

    url: str
    users: int
    messages: int
    prompts: Sequence[str]
    think_ms: float = 0.0
    origin: str | None = None
    timeout: float = 60.0
    cache: bool = True


@dataclass
class TurnTiming:
    """One message and its answer, times in ms from sending the message.

    Attributes:
        user: client number (1-based), turn: turn number within the client (1-based).
        ok: a ``chat.completed`` with status ``complete`` arrived.
        code: ``complete``; another ``chat.completed`` status (``cancelled``); the
            ``chat.error`` code; or one of the ``CLIENT_*`` codes.
        started_ms / first_token_ms / total_ms: to ``chat.started`` / the first
            ``chat.delta`` / the final frame; None when it never came.
        deltas / chars: ``chat.delta`` frames and their characters.
        cached: the completed reply came from the server's response cache.
    """

    user: int
    turn: int
    ok: bool = False
    code: str = CLIENT_NOT_SENT
    started_ms: float | None = None
    first_token_ms: float | None = None
    total_ms: float | None = None
    deltas: int = 0
    chars: int = 0
    cached: bool = False


@dataclass
class LoadTestReport:
    """The results of one run: every turn (``users × messages`` of them) and the clock.

    Attributes:
        config: what was run.
        turns: every turn, failed and never-sent ones included.
        connect_ms: handshake times (ms) of the clients that connected.
        handshake_errors: clients that could not connect, by exception text.
        wall_s: seconds from the first connection attempt to the last client's end.
    """

    config: LoadTestConfig
    turns: list[TurnTiming] = field(default_factory=list)
    connect_ms: list[float] = field(default_factory=list)
    handshake_errors: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0

    @property
    def ok(self) -> int:
        return sum(t.ok for t in self.turns)

    @property
    def failed(self) -> int:
        return len(self.turns) - self.ok

    def errors(self) -> Counter[str]:
        """Failed turns by code (server error codes and the ``CLIENT_*`` codes)."""
        return Counter(t.code for t in self.turns if not t.ok)

    def latencies(self) -> dict[str, list[float]]:
        """Sorted samples in ms: ``connect`` (per client), ``started`` (turns that got
        ``chat.started``), ``first_token`` (turns with a delta), ``total`` (ok turns)."""
        return {
            "connect": sorted(self.connect_ms),
            "started": sorted(t.started_ms for t in self.turns if t.started_ms is not None),
            "first_token": sorted(
                t.first_token_ms for t in self.turns if t.first_token_ms is not None
            ),
            "total": sorted(t.total_ms for t in self.turns if t.ok and t.total_ms is not None),
        }

    def format(self) -> str:
        """The printed report: counts, throughput and a median/p95/p99/max table (ms)."""
        cfg = self.config
        wall = self.wall_s or float("nan")
        deltas = sum(t.deltas for t in self.turns)
        chars = sum(t.chars for t in self.turns)
        errors = self.errors()
        error_text = ", ".join(f"{code} {n}" for code, n in sorted(errors.items())) or "none"
        lines = [
            f"mpai load test: {cfg.url}, {cfg.users} users x {cfg.messages} messages, "
            f"think {cfg.think_ms:g} ms",
            f"turns: {self.ok} ok, {self.failed} failed (of {len(self.turns)})",
            f"errors: {error_text}",
            *(f"  handshake: {text} ({n} clients)" for text, n in self.handshake_errors.items()),
            f"replies: {deltas} deltas, {chars} characters, "
            f"{sum(t.cached for t in self.turns if t.ok)} from the response cache",
            f"wall time: {self.wall_s:.3f} s; {self.ok / wall:.2f} turns/s (ok); "
            f"{deltas / wall:.1f} deltas/s",
            f"{'latency (ms)':<14}{'n':>6}{'median':>10}{'p95':>10}{'p99':>10}{'max':>10}",
        ]
        for name, samples in self.latencies().items():
            label = name.replace("_", " ")
            if not samples:
                lines.append(f"{label:<14}{0:>6}{'-':>10}{'-':>10}{'-':>10}{'-':>10}")
                continue
            figures = (
                statistics.median(samples),
                percentile(samples, 0.95),
                percentile(samples, 0.99),
                samples[-1],
            )
            lines.append(f"{label:<14}{len(samples):>6}" + "".join(f"{v:>10.1f}" for v in figures))
        return "\n".join(lines)


# --- prompts -------------------------------------------------------------------------


def load_prompts(corpus: str | Path | None = None) -> list[str]:
    """Return the prompts to send, each one the server would accept.

    Args:
        corpus: None for the packaged offline prompts (the ``prompt`` of every record in
            ``mpai/providers/data/offline_replies.json``); otherwise a conversations
            JSON-lines file (``{"source", "turns": [{"role", "content"}, ...]}`` a line):
            its user turns, in file order, skipping records whose ``source`` starts with
            ``hh-rlhf`` (red-team data, never shown to people).

    Prompts the server's validation would refuse (empty, control characters, over
    ``MPAI["MAX_MESSAGE_LENGTH"]``) are left out; duplicates are kept once.

    Raises:
        OSError: the corpus cannot be read.
        ValueError: a line is not JSON, or no usable prompt is left.
    """
    texts: Iterable[Any]
    if corpus is None:
        raw = resources.files("mpai.providers").joinpath("data/offline_replies.json")
        texts = [r.get("prompt") for r in json.loads(raw.read_text("utf-8"))["replies"]]
    else:
        texts = _corpus_user_turns(Path(corpus))
    prompts: dict[str, None] = {}
    for text in texts:
        try:
            prompts.setdefault(validate_content(text), None)
        except MpaiError:
            continue
    if not prompts:
        raise ValueError(f"No usable prompts in {corpus or 'the packaged offline replies'}.")
    return list(prompts)


def _corpus_user_turns(path: Path) -> Iterable[Any]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc}).") from exc
            if str(record.get("source", "")).startswith(SKIPPED_SOURCES):
                continue
            for turn in record.get("turns") or []:
                if turn.get("role") == "user":
                    yield turn.get("content")


# --- users and sessions (synchronous: outside the event loop) -------------------------


def prepare_sessions(count: int) -> list[str]:
    """Create or reuse users ``mpai-load-1`` … ``mpai-load-<count>`` and return a new
    signed-in session key for each, in order (the value of ``SESSION_COOKIE_NAME``)."""
    User = get_user_model()
    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    keys = []
    for i in range(1, count + 1):
        username = f"{USERNAME_PREFIX}{i}"
        user = User._default_manager.filter(**{User.USERNAME_FIELD: username}).first()
        if user is None:
            fields: dict[str, Any] = {User.USERNAME_FIELD: username}
            user = User._default_manager.create_user(password=None, **fields)
        session = store_class()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = _BACKEND
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        keys.append(str(session.session_key))
    return keys


def delete_sessions(keys: Iterable[str]) -> None:
    """Delete the sessions :func:`prepare_sessions` made (the users stay)."""
    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    for key in keys:
        store_class(session_key=key).delete()


# --- the clients --------------------------------------------------------------------


def origin_for(url: str) -> str:
    """``ws://host:port/...`` → ``http://host:port`` (``wss`` → ``https``)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


async def run_load(config: LoadTestConfig, session_keys: Sequence[str]) -> LoadTestReport:
    """Run ``config.users`` clients concurrently and return the report.

    Args:
        config: what to run.
        session_keys: one session key per client (:func:`prepare_sessions`).

    Failures never raise: every turn ends up in the report with its code.
    """
    if len(session_keys) < config.users:
        raise ValueError(f"{config.users} users need as many session keys.")
    if not config.prompts:
        raise ValueError("No prompts.")
    report = LoadTestReport(config)
    cookie_name = settings.SESSION_COOKIE_NAME
    start = time.perf_counter()
    per_client = await asyncio.gather(
        *(
            _client(config, report, i, f"{cookie_name}={session_keys[i - 1]}")
            for i in range(1, config.users + 1)
        )
    )
    report.wall_s = time.perf_counter() - start
    report.turns = [turn for turns in per_client for turn in turns]
    return report


async def _client(
    config: LoadTestConfig, report: LoadTestReport, user: int, cookie: str
) -> list[TurnTiming]:
    turns = [TurnTiming(user, j) for j in range(1, config.messages + 1)]
    began = time.perf_counter()
    try:
        ws = await connect(
            config.url,
            origin=Origin(config.origin or origin_for(config.url)),
            additional_headers={"Cookie": cookie},
            open_timeout=config.timeout,
            proxy=None,
        )
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        report.handshake_errors[f"{type(exc).__name__}: {exc}"] += 1
        for turn in turns:
            turn.code = CLIENT_HANDSHAKE
        return turns
    report.connect_ms.append((time.perf_counter() - began) * 1000)
    conversation: Any = None
    try:
        for j, turn in enumerate(turns):
            if j and config.think_ms > 0:
                await asyncio.sleep(config.think_ms / 1000)
            frame: dict[str, Any] = {
                "type": "chat.message",
                "conversation": conversation,
                "content": config.prompts[((user - 1) * config.messages + j) % len(config.prompts)],
            }
            if not config.cache:
                frame["cache"] = False
            try:
                async with asyncio.timeout(config.timeout):
                    conversation = await _turn(ws, frame, turn) or conversation
            except TimeoutError:
                turn.code = CLIENT_TIMEOUT
                break  # a late final frame would be read as the next turn's
            except ConnectionClosed:
                turn.code = CLIENT_CLOSED
                break
            except (ValueError, AttributeError):
                turn.code = CLIENT_BAD_FRAME
                break
    finally:
        await ws.close()
    return turns


async def _turn(ws: ClientConnection, frame: dict[str, Any], turn: TurnTiming) -> Any:
    """Send ``frame``, fill ``turn`` from the answer; return ``chat.started``'s conversation."""
    conversation = None
    sent = time.perf_counter()
    await ws.send(json.dumps(frame))
    while True:
        answer = json.loads(await ws.recv())  # ValueError / AttributeError: not an object
        elapsed = (time.perf_counter() - sent) * 1000
        kind = answer.get("type")
        if kind == "chat.started":
            turn.started_ms = elapsed
            conversation = answer.get("conversation")
        elif kind == "chat.delta":
            if turn.first_token_ms is None:
                turn.first_token_ms = elapsed
            turn.deltas += 1
            turn.chars += len(answer.get("text") or "")
        elif kind in ("chat.completed", "chat.error"):
            turn.total_ms = elapsed
            if kind == "chat.completed":
                turn.code = str(answer.get("status"))
                turn.ok = turn.code == "complete"
                turn.cached = bool(answer.get("cached"))
            else:
                turn.code = str(answer.get("code"))
            return conversation
