"""A websocket load test of a running mpai server (``python manage.py mpai_loadtest``).

The load tester runs in the same project and database as the server. Before any
connection is opened it creates (or reuses) one user per client, named
``mpai-load-<i>`` (``i`` from 1; an unusable password, so nobody can sign in as them),
and a fresh session for each in the configured ``SESSION_ENGINE``
(:func:`prepare_sessions`). Then :func:`run_load` opens the clients, and the idle
websockets (``idle``: the users after the clients', sending nothing), concurrently with
the ``websockets`` asyncio client; once every handshake is over, each client sends its
messages one after another and times every turn: with ``conversations`` (recorded ones,
:func:`load_conversations`) it replays one conversation's user turns in order in one mpai
conversation (the ``conversation`` of its first ``chat.started``), then the next
conversation in a new one; with the packaged ``prompts`` alone, all its messages go to one
conversation. It sends ``messages`` turns, or, with ``duration_s``, keeps sending until
that many seconds after the first message. The idle websockets stay open until the last
client is done (then a ping checks they still are). The sessions are deleted afterwards
(:func:`delete_sessions`); the users, and the conversations they made, stay
(``mpai_cleanup`` removes old history).

A turn's own cost: with ``provider_first_token_ms`` (the provider's own time to first
token, ms) the report shows the time mpai adds to the first token; with ``server_pid``
(a process on this machine: the uvicorn worker, children excluded) it samples the
server with psutil (:class:`ServerMonitor`, :class:`ServerUsage`): CPU seconds during
the run and per ok turn, and RSS before the connections, with them open and idle, and at
its peak while turns stream (sampled every ``sample_ms`` on a thread), so memory per idle
websocket and per open stream.

Nothing lost: every reply a client saw complete keeps its message id (the final
``chat.completed`` frame's ``message``) and the concatenation of its ``chat.delta``
texts, and :func:`check_persistence` reads them back afterwards: each must be saved with
status ``complete`` and exactly that text.

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
    corpus = loadtest.default_corpus()  # None: the packaged prompts
    config = loadtest.LoadTestConfig(url="ws://127.0.0.1:8000/ws/mpai/chat/", users=20,
                                     messages=5, duration_s=60, prompts=[],
                                     conversations=loadtest.load_conversations(corpus),
                                     idle=50, provider_first_token_ms=300, server_pid=1234)
    keys = loadtest.prepare_sessions(config.users + config.idle)
    try:
        report = asyncio.run(loadtest.run_load(config, keys))
    finally:
        loadtest.delete_sessions(keys)
    report.persistence = loadtest.check_persistence(report.turns)
    print(report.format())
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import import_module, resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
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

from mpai.benchmarks._stats import nearest_rank
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

#: The server's ``chat.error`` code of a turn refused for want of a stream slot.
OVERLOADED = "overloaded"
_MIB = 1024 * 1024


@dataclass(frozen=True)
class LoadTestConfig:
    """What to run.

    Attributes:
        url: the chat websocket, ``ws://host:port/ws/mpai/chat/`` (or ``wss://``).
        users: concurrent clients, one user and one connection each (≥ 1).
        messages: ``chat.message`` frames per client, sent one after another (≥ 1);
            ignored when ``duration_s`` is set.
        prompts: message texts, used only without ``conversations``: client ``i`` turn
            ``j`` (both from 0) sends ``prompts[(i * messages + j) % len(prompts)]``, all
            in one mpai conversation.
        conversations: recorded conversations to replay, each the list of its user turns
            (:func:`load_conversations`); None = ``prompts``. Client ``i`` (from 0) replays
            conversation ``(i + k * users) % len(conversations)`` as its ``k``-th (from 0),
            its turns in order in one new mpai conversation, then goes on to the next.
        duration_s: seconds: each client keeps sending (next turn, or the next
            conversation) until this long after the first message, and finishes the turn
            in flight then; None = ``messages`` turns per client.
        think_ms: pause between a turn's final frame and the client's next message (ms).
        origin: the ``Origin`` header; None = the URL's ``http(s)://host:port``.
        timeout: seconds allowed for the handshake and for each turn (send → final frame).
        cache: False sends ``"cache": false`` (skip the server's response cache).
        idle: extra websockets, each with its own user and session, that send nothing and
            stay open for the whole run (≥ 0).
        provider_first_token_ms: the provider's own time to first token (ms); None = no
            "added first token" figure.
        server_pid: the server process to sample with psutil (on this machine); None =
            no server figures.
        sample_ms: interval of the RSS samples while turns stream (ms).
        source: where the prompts came from, for the report (a path, or empty).
    """

    url: str
    users: int
    messages: int
    prompts: Sequence[str]
    conversations: Sequence[Sequence[str]] | None = None
    duration_s: float | None = None
    think_ms: float = 0.0
    origin: str | None = None
    timeout: float = 60.0
    cache: bool = True
    idle: int = 0
    provider_first_token_ms: float | None = None
    server_pid: int | None = None
    sample_ms: float = 50.0
    source: str = ""


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
        conversation: the mpai conversation id (``chat.started``), None before it came.
        message: the reply's message id (from the final frame), None without one.
        text: the concatenated ``chat.delta`` texts (what the client saw streamed).
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
    conversation: Any = None
    message: Any = None
    text: str = ""


def per_item_kib(grown_bytes: float | None, items: int) -> float | None:
    """``grown_bytes / items`` in KiB; None without a figure or with no items."""
    if grown_bytes is None or items <= 0:
        return None
    return grown_bytes / items / 1024


def added_first_token_ms(turns: Iterable[TurnTiming], provider_ms: float) -> list[float]:
    """Sorted ``first_token_ms − provider_ms`` (ms) of the turns with a first token, the
    time mpai adds to the provider's own; turns answered from the response cache are
    left out (no provider call). Negative when the provider was faster than
    ``provider_ms``."""
    return sorted(
        t.first_token_ms - provider_ms
        for t in turns
        if t.first_token_ms is not None and not t.cached
    )


@dataclass
class ServerUsage:
    """What the server process used during a run (one process: children excluded).

    CPU is user + system seconds (``psutil.Process.cpu_times``); RSS is resident memory
    in bytes (``memory_info().rss``), shown in MiB. A figure the process could not give
    (it exited, access denied) is None, and ``error`` says why.

    Attributes:
        pid: the process.
        cpu_run_s: CPU seconds from before the first connection to after the last
            websocket closed.
        cpu_turns_s: CPU seconds from the first message to the last client's end.
        rss_before: RSS before any connection (bytes).
        rss_idle: RSS once every handshake is over, before the first message (bytes).
        rss_peak_streaming: the largest RSS sample taken while a turn streamed (bytes;
            None when no sample fell inside a stream).
        rss_after: RSS after every websocket closed (bytes).
        sockets: websockets open at the idle sample (clients and idle websockets).
        peak_streams: the most turns streaming at once, counted by the clients (from
            sending the message to its final frame).
        samples: RSS samples taken while turns streamed.
        error: why a figure is missing, or None.
    """

    pid: int
    cpu_run_s: float | None = None
    cpu_turns_s: float | None = None
    rss_before: int | None = None
    rss_idle: int | None = None
    rss_peak_streaming: int | None = None
    rss_after: int | None = None
    sockets: int = 0
    peak_streams: int = 0
    samples: int = 0
    error: str | None = None

    def cpu_per_turn_ms(self, ok_turns: int) -> float | None:
        """Server CPU during the turns per ok turn (ms); None without turns or a figure."""
        if self.cpu_turns_s is None or ok_turns <= 0:
            return None
        return self.cpu_turns_s * 1000 / ok_turns

    @property
    def idle_websocket_kib(self) -> float | None:
        """(RSS idle − RSS before) / websockets open (KiB per idle websocket)."""
        grown = _difference(self.rss_idle, self.rss_before)
        return per_item_kib(grown, self.sockets)

    @property
    def open_stream_kib(self) -> float | None:
        """(peak RSS while streaming − RSS idle) / peak concurrent streams (KiB per stream)."""
        grown = _difference(self.rss_peak_streaming, self.rss_idle)
        return per_item_kib(grown, self.peak_streams)

    def lines(self, ok_turns: int) -> list[str]:
        """The report's server lines (CPU in s and ms, RSS in MiB, per-item memory in KiB)."""
        lines = [
            f"server pid {self.pid}: CPU {_figure(self.cpu_run_s, '.3f')} s during the run "
            f"(user+system, children excluded), {_figure(self.cpu_turns_s, '.3f')} s during "
            f"the turns, {_figure(self.cpu_per_turn_ms(ok_turns), '.1f')} ms per ok turn",
            f"server RSS (MiB): {_mib(self.rss_before)} before, {_mib(self.rss_idle)} idle "
            f"({self.sockets} websockets), {_mib(self.rss_peak_streaming)} peak streaming "
            f"({self.samples} samples), {_mib(self.rss_after)} after",
            f"memory per idle websocket: {_figure(self.idle_websocket_kib, '.1f')} KiB; "
            f"per open stream: {_figure(self.open_stream_kib, '.1f')} KiB "
            f"(peak {self.peak_streams} streams)",
        ]
        if self.error:
            lines.append(f"  server: {self.error}")
        return lines


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _figure(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _mib(value: int | None) -> str:
    return _figure(None if value is None else value / _MIB, ".1f")


@dataclass
class LoadTestReport:
    """The results of one run: every turn (``users × messages`` of them, or as many as
    were sent in ``duration_s``) and the clock.

    Attributes:
        config: what was run.
        turns: every turn, failed and never-sent ones included.
        connect_ms: handshake times (ms) of the clients that connected.
        handshake_errors: clients that could not connect, by exception text.
        wall_s: seconds from the first connection attempt to the last client's end.
        idle_connected: idle websockets that connected.
        idle_open_at_end: idle websockets that still answered a ping after the last client.
        idle_handshake_errors: idle websockets that could not connect, by exception text.
        peak_streams: the most turns streaming at once (send → final frame, client side).
        server: the server's CPU and memory (``config.server_pid``), else None.
        persistence: the replies read back from the database (:func:`check_persistence`,
            run after :func:`run_load`), else None.
    """

    config: LoadTestConfig
    turns: list[TurnTiming] = field(default_factory=list)
    connect_ms: list[float] = field(default_factory=list)
    handshake_errors: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0
    idle_connected: int = 0
    idle_open_at_end: int = 0
    idle_handshake_errors: Counter[str] = field(default_factory=Counter)
    peak_streams: int = 0
    server: ServerUsage | None = None
    persistence: PersistenceCheck | None = None

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
        ``chat.started``), ``first_token`` (turns with a delta), ``added_first_token``
        (only with ``config.provider_first_token_ms``: :func:`added_first_token_ms`),
        ``total`` (ok turns) and ``overloaded`` (only when any: send → the ``chat.error``
        ``overloaded`` frame)."""
        latencies = {
            "connect": sorted(self.connect_ms),
            "started": sorted(t.started_ms for t in self.turns if t.started_ms is not None),
            "first_token": sorted(
                t.first_token_ms for t in self.turns if t.first_token_ms is not None
            ),
        }
        if self.config.provider_first_token_ms is not None:
            latencies["added_first_token"] = added_first_token_ms(
                self.turns, self.config.provider_first_token_ms
            )
        latencies["total"] = sorted(
            t.total_ms for t in self.turns if t.ok and t.total_ms is not None
        )
        overloaded = sorted(
            t.total_ms for t in self.turns if t.code == OVERLOADED and t.total_ms is not None
        )
        if overloaded:
            latencies["overloaded"] = overloaded
        return latencies

    def format(self) -> str:
        """The printed report: counts, throughput, idle websockets, peak concurrent
        streams, a median/p95/p99/max table (ms) and, with ``server``, its CPU (s, ms per
        ok turn) and memory (MiB; KiB per idle websocket and per open stream)."""
        cfg = self.config
        wall = self.wall_s or float("nan")
        deltas = sum(t.deltas for t in self.turns)
        chars = sum(t.chars for t in self.turns)
        errors = self.errors()
        error_text = ", ".join(f"{code} {n}" for code, n in sorted(errors.items())) or "none"
        length = (
            f"for {cfg.duration_s:g} s"
            if cfg.duration_s is not None
            else f"x {cfg.messages} messages"
        )
        lines = [
            f"mpai load test: {cfg.url}, {cfg.users} users {length}, think {cfg.think_ms:g} ms",
            f"turns: {self.ok} ok, {self.failed} failed (of {len(self.turns)})",
            f"errors: {error_text}",
            *(f"  handshake: {text} ({n} clients)" for text, n in self.handshake_errors.items()),
            f"replies: {deltas} deltas, {chars} characters, "
            f"{sum(t.cached for t in self.turns if t.ok)} from the response cache",
            f"wall time: {self.wall_s:.3f} s; {self.ok / wall:.2f} turns/s (ok); "
            f"{deltas / wall:.1f} deltas/s",
        ]
        if cfg.conversations is not None:
            conversations = len({(t.user, t.conversation) for t in self.turns if t.conversation})
            lines.insert(
                1,
                f"prompts: {len(cfg.conversations)} recorded conversations"
                f"{f' from {cfg.source}' if cfg.source else ''}, replayed turn by turn "
                f"({conversations} mpai conversations)",
            )
        if cfg.idle:
            lines.append(
                f"idle websockets: {self.idle_connected} of {cfg.idle} connected, "
                f"{self.idle_open_at_end} still open at the end"
            )
            lines.extend(
                f"  idle handshake: {text} ({n} websockets)"
                for text, n in self.idle_handshake_errors.items()
            )
        lines.append(f"concurrent streams: peak {self.peak_streams}")
        lines.extend(latency_table(self.latencies()))
        if self.server is not None:
            lines.extend(self.server.lines(self.ok))
        if self.persistence is not None:
            lines.extend(self.persistence.lines())
        return "\n".join(lines)


def latency_table(latencies: dict[str, list[float]]) -> list[str]:
    """A header and one row per sorted sample list: n, median, p95, p99, max (ms)."""
    lines = [f"{'latency (ms)':<18}{'n':>6}{'median':>10}{'p95':>10}{'p99':>10}{'max':>10}"]
    for name, samples in latencies.items():
        label = name.replace("_", " ")
        if not samples:
            lines.append(f"{label:<18}{0:>6}{'-':>10}{'-':>10}{'-':>10}{'-':>10}")
            continue
        figures = (
            statistics.median(samples),
            nearest_rank(samples, 0.95),
            nearest_rank(samples, 0.99),
            samples[-1],
        )
        lines.append(f"{label:<18}{len(samples):>6}" + "".join(f"{v:>10.1f}" for v in figures))
    return lines


# --- prompts -------------------------------------------------------------------------


#: The environment variable naming the default corpus (a ``conversations.jsonl``).
CORPUS_ENV = "MPAI_LOADTEST_CORPUS"


def default_corpus() -> Path | None:
    """The corpus used when none is given: the file named by ``$MPAI_LOADTEST_CORPUS``
    when set (non-empty), else ``<BASE_DIR>/../shared/data/conversations.jsonl`` when
    that file exists (``settings.BASE_DIR``: the project's), else None (the packaged
    offline prompts)."""
    named = os.environ.get(CORPUS_ENV)
    if named:
        return Path(named)
    base_dir = getattr(settings, "BASE_DIR", None)
    if base_dir is None:
        return None
    shared = Path(base_dir).parent / "shared" / "data" / "conversations.jsonl"
    return shared if shared.is_file() else None


def load_conversations(corpus: str | Path) -> list[list[str]]:
    """Return the recorded conversations to replay, each the list of its user turns in
    order, each turn one the server would accept.

    Args:
        corpus: a conversations JSON-lines file (``{"source", "turns": [{"role",
            "content"}, ...]}`` a line), read in file order; records whose ``source``
            starts with one of :data:`SKIPPED_SOURCES` (``hh-rlhf``: red-team data, never
            shown to people) are skipped.

    User turns the server's validation would refuse (empty, control characters, over
    ``MPAI["MAX_MESSAGE_LENGTH"]``) are left out of their conversation, a conversation
    left without turns is dropped, and a conversation whose user turns repeat an
    earlier one's exactly (branches of one tree that differ only in the assistant's
    turns) is kept once.

    Raises:
        OSError: the corpus cannot be read.
        ValueError: a line is not JSON, or no usable conversation is left.
    """
    conversations: dict[tuple[str, ...], None] = {}
    for texts in _corpus_conversations(Path(corpus)):
        turns = tuple(_acceptable(texts))
        if turns:
            conversations.setdefault(turns, None)
    if not conversations:
        raise ValueError(f"No usable conversations in {corpus}.")
    return [list(turns) for turns in conversations]


def load_prompts(corpus: str | Path | None = None) -> list[str]:
    """Return the prompts to send, each one the server would accept.

    Args:
        corpus: None for the packaged offline prompts (the ``prompt`` of every record in
            ``mpai/providers/data/offline_replies.json``); otherwise a conversations
            JSON-lines file: its user turns, in file order (as
            :func:`load_conversations` reads them).

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
        texts = (t for turns in _corpus_conversations(Path(corpus)) for t in turns)
    prompts = dict.fromkeys(_acceptable(texts))
    if not prompts:
        raise ValueError(f"No usable prompts in {corpus or 'the packaged offline replies'}.")
    return list(prompts)


def _acceptable(texts: Iterable[Any]) -> Iterable[str]:
    """The texts ``validate_content`` accepts, as it returns them."""
    for text in texts:
        try:
            yield validate_content(text)
        except MpaiError:
            continue


def _corpus_conversations(path: Path) -> Iterable[list[Any]]:
    """Each kept record's user turns (raw contents), in file order."""
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc}).") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: not a JSON object.")
            if str(record.get("source", "")).startswith(SKIPPED_SOURCES):
                continue
            yield [
                turn.get("content")
                for turn in record.get("turns") or []
                if isinstance(turn, dict) and turn.get("role") == "user"
            ]


# --- persistence (synchronous: outside the event loop) --------------------------------

MISSING = "missing"  # no saved message with the reply's id (or no id in the frame)
OTHER_STATUS = "other status"  # saved, but not with status complete
OTHER_TEXT = "other text"  # saved complete, but its content is not the streamed text


@dataclass
class PersistenceCheck:
    """Every reply a client saw complete, read back from the database.

    Attributes:
        checked: replies checked (ok turns: ``chat.completed`` with status complete).
        mismatches: the replies not saved as streamed, ``(kind, message id)`` in turn
            order; ``kind`` is :data:`MISSING`, :data:`OTHER_STATUS` or :data:`OTHER_TEXT`.
    """

    checked: int = 0
    mismatches: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def saved(self) -> int:
        """Replies saved complete with exactly the streamed text."""
        return self.checked - len(self.mismatches)

    def lines(self) -> list[str]:
        """``persistence: N of M replies saved as streamed`` and one line per mismatch
        kind (count and up to 10 message ids)."""
        lines = [f"persistence: {self.saved} of {self.checked} replies saved as streamed"]
        by_kind: dict[str, list[Any]] = {}
        for kind, message in self.mismatches:
            by_kind.setdefault(kind, []).append(message)
        for kind in (MISSING, OTHER_STATUS, OTHER_TEXT):
            ids = by_kind.get(kind)
            if ids:
                shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
                lines.append(f"  {kind}: {len(ids)} (messages {shown})")
        return lines


def check_persistence(turns: Iterable[TurnTiming], batch: int = 500) -> PersistenceCheck:
    """Read every ok turn's reply back (``mpai.models.Message`` by the final frame's
    id, ``batch`` ids a query) and compare: status complete and content equal to the
    concatenated deltas. Call it outside the event loop, after :func:`run_load`."""
    from mpai.models import Message

    ok = [t for t in turns if t.ok]
    check = PersistenceCheck(checked=len(ok))
    ids = [t.message for t in ok if t.message is not None]
    saved: dict[Any, tuple[str, str]] = {}
    for i in range(0, len(ids), batch):
        rows = Message.objects.filter(pk__in=ids[i : i + batch])
        saved.update(
            (pk, (status, content))
            for pk, status, content in rows.values_list("pk", "status", "content")
        )
    for turn in ok:
        row = saved.get(turn.message)
        if row is None:
            check.mismatches.append((MISSING, turn.message))
        elif row[0] != Message.Status.COMPLETE:
            check.mismatches.append((OTHER_STATUS, turn.message))
        elif row[1] != turn.text:
            check.mismatches.append((OTHER_TEXT, turn.message))
    return check


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


# --- the server process (psutil) ---------------------------------------------------


class OpenStreams:
    """Turns between sending the message and its final frame, counted by the clients
    (on the event loop; the sampling thread only reads ``open``)."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0

    def opened(self) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)

    def closed(self) -> None:
        self.open -= 1


class ServerMonitor:
    """Reads one server process with psutil into :attr:`usage` (a :class:`ServerUsage`).

    :meth:`rss` (bytes) and :meth:`cpu_s` (user + system seconds, children excluded)
    return None, and note the reason in ``usage.error``, once the process cannot be
    read. :meth:`start_sampling` samples RSS on a thread while turns stream.

    Raises:
        ValueError: no process ``pid``, or it cannot be read (another user's).
    """

    def __init__(self, pid: int) -> None:
        try:
            self.process = psutil.Process(pid)
            self.process.memory_info()
            self.process.cpu_times()
        except psutil.Error as exc:
            raise ValueError(f"Cannot sample the server process {pid}: {exc}") from exc
        self.usage = ServerUsage(pid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss(self) -> int | None:
        """Resident memory (bytes), or None when the process cannot be read."""
        try:
            return int(self.process.memory_info().rss)
        except psutil.Error as exc:
            self.usage.error = self.usage.error or f"cannot read the process: {exc}"
            return None

    def cpu_s(self) -> float | None:
        """CPU seconds so far (user + system, children excluded), or None."""
        try:
            times = self.process.cpu_times()
        except psutil.Error as exc:
            self.usage.error = self.usage.error or f"cannot read the process: {exc}"
            return None
        return float(times.user + times.system)

    def start_sampling(self, streams: OpenStreams, interval_s: float) -> None:
        """Sample RSS every ``interval_s`` s (on a daemon thread) while
        ``streams.open`` > 0, keeping the peak in ``usage.rss_peak_streaming``."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._sample, args=(streams, interval_s), name="mpai-loadtest-rss", daemon=True
        )
        self._thread.start()

    def stop_sampling(self) -> None:
        """Stop the sampling thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _sample(self, streams: OpenStreams, interval_s: float) -> None:
        usage = self.usage
        while not self._stop.wait(interval_s):
            if streams.open <= 0:
                continue
            rss = self.rss()
            if rss is None:
                return
            usage.samples += 1
            usage.rss_peak_streaming = max(usage.rss_peak_streaming or 0, rss)


def check_server_pid(pid: int) -> None:
    """Raise ValueError unless psutil can read process ``pid`` (for ``--server-pid``)."""
    ServerMonitor(pid)


# --- the clients --------------------------------------------------------------------


def origin_for(url: str) -> str:
    """``ws://host:port/...`` → ``http://host:port`` (``wss`` → ``https``)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


async def run_load(
    config: LoadTestConfig,
    session_keys: Sequence[str],
    on_turn: Callable[[TurnTiming], None] | None = None,
) -> LoadTestReport:
    """Run ``config.users`` clients concurrently and return the report.

    Every websocket (clients and ``config.idle`` idle ones) is opened first; the clients
    send their first messages once every handshake is over. With ``config.server_pid``
    the server is sampled (:class:`ServerUsage`).

    Args:
        config: what to run.
        session_keys: one session key per client, then one per idle websocket
            (:func:`prepare_sessions` of ``users + idle``).
        on_turn: called on the event loop with each turn once it ended (a progress
            bar); it must not block.

    Failures never raise: every turn ends up in the report with its code.

    Raises:
        ValueError: too few session keys, no prompts, or no readable ``server_pid``.
    """
    sockets = config.users + config.idle
    if len(session_keys) < sockets:
        raise ValueError(
            f"{config.users} users and {config.idle} idle websockets need {sockets} session keys."
        )
    if not config.prompts and not config.conversations:
        raise ValueError("No prompts.")
    monitor = None if config.server_pid is None else ServerMonitor(config.server_pid)
    report = LoadTestReport(config)
    cookie_name = settings.SESSION_COOKIE_NAME
    streams = OpenStreams()
    cpu_start = cpu_idle = None  # server CPU seconds at the start and once connected
    if monitor is not None:
        report.server = monitor.usage
        monitor.usage.rss_before = monitor.rss()
        cpu_start = monitor.cpu_s()
    start = time.perf_counter()
    opened = await asyncio.gather(
        *(_open(config, f"{cookie_name}={key}") for key in session_keys[:sockets])
    )
    connections = [ws for ws, _ in opened if ws is not None]
    try:
        clients, idle = opened[: config.users], opened[config.users :]
        for ws, outcome in clients:
            if ws is None:
                report.handshake_errors[str(outcome)] += 1
            else:
                report.connect_ms.append(float(outcome))
        for ws, outcome in idle:
            if ws is None:
                report.idle_handshake_errors[str(outcome)] += 1
        report.idle_connected = sum(ws is not None for ws, _ in idle)
        if monitor is not None:
            monitor.usage.sockets = len(connections)
            monitor.usage.rss_idle = monitor.rss()
            cpu_idle = monitor.cpu_s()
            monitor.start_sampling(streams, config.sample_ms / 1000)
        try:
            first_message = time.perf_counter()
            per_client = await asyncio.gather(
                *(
                    _client(config, ws, i, streams, first_message, on_turn)
                    for i, (ws, _) in enumerate(clients, 1)
                )
            )
        finally:
            if monitor is not None:
                monitor.stop_sampling()
        report.wall_s = time.perf_counter() - start
        report.turns = [turn for turns in per_client for turn in turns]
        report.peak_streams = streams.peak
        if monitor is not None:
            monitor.usage.peak_streams = streams.peak
            monitor.usage.cpu_turns_s = _difference(monitor.cpu_s(), cpu_idle)
        alive = await asyncio.gather(*(_still_open(ws, config) for ws, _ in idle if ws))
        report.idle_open_at_end = sum(alive)
    finally:
        await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)
    if monitor is not None:
        monitor.usage.cpu_run_s = _difference(monitor.cpu_s(), cpu_start)
        monitor.usage.rss_after = monitor.rss()
    return report


async def _open(config: LoadTestConfig, cookie: str) -> tuple[ClientConnection | None, float | str]:
    """Open one websocket: ``(connection, handshake ms)`` or ``(None, error text)``."""
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
        return None, f"{type(exc).__name__}: {exc}"
    return ws, (time.perf_counter() - began) * 1000


async def _still_open(ws: ClientConnection, config: LoadTestConfig) -> bool:
    """Whether ``ws`` answers a ping within ``config.timeout`` (at most 10 s)."""
    try:
        async with asyncio.timeout(min(config.timeout, 10.0)):
            await (await ws.ping())
    except (ConnectionClosed, TimeoutError):
        return False
    return True


def _script(config: LoadTestConfig, user: int) -> Iterator[tuple[str, bool]]:
    """Client ``user``'s messages, endless: ``(text, starts a new mpai conversation)``."""
    if config.conversations:
        conversations = config.conversations
        for k in itertools.count():
            turns = conversations[(user - 1 + k * config.users) % len(conversations)]
            for j, text in enumerate(turns):
                yield text, j == 0
    else:
        prompts = config.prompts
        for j in itertools.count():
            yield prompts[((user - 1) * config.messages + j) % len(prompts)], j == 0


async def _client(
    config: LoadTestConfig,
    ws: ClientConnection | None,
    user: int,
    streams: OpenStreams,
    first_message: float,
    on_turn: Callable[[TurnTiming], None] | None,
) -> list[TurnTiming]:
    """One client's turns: ``config.messages`` of them (the unsent ones included), or as
    many as it sent before ``config.duration_s`` s after ``first_message``
    (``time.perf_counter()``)."""
    timed = config.duration_s is not None
    planned = 1 if timed else config.messages
    if ws is None:
        return [TurnTiming(user, j, code=CLIENT_HANDSHAKE) for j in range(1, planned + 1)]
    deadline = first_message + (config.duration_s or 0.0)
    turns: list[TurnTiming] = []
    conversation: Any = None
    script = _script(config, user)
    try:
        while timed or len(turns) < config.messages:
            if turns and config.think_ms > 0:
                await asyncio.sleep(config.think_ms / 1000)
            if timed and time.perf_counter() >= deadline:
                break
            text, new = next(script)
            if new:
                conversation = None
            turn = TurnTiming(user, len(turns) + 1)
            turns.append(turn)
            frame: dict[str, Any] = {
                "type": "chat.message",
                "conversation": conversation,
                "content": text,
            }
            if not config.cache:
                frame["cache"] = False
            streams.opened()
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
                streams.closed()
                if on_turn is not None:
                    on_turn(turn)
    finally:
        await ws.close()
    if not timed:
        turns.extend(TurnTiming(user, j) for j in range(len(turns) + 1, config.messages + 1))
    return turns


async def _turn(ws: ClientConnection, frame: dict[str, Any], turn: TurnTiming) -> Any:
    """Send ``frame``, fill ``turn`` from the answer; return ``chat.started``'s conversation."""
    conversation = None
    parts: list[str] = []  # the deltas' texts
    sent = time.perf_counter()
    await ws.send(json.dumps(frame))
    while True:
        answer = json.loads(await ws.recv())  # ValueError / AttributeError: not an object
        elapsed = (time.perf_counter() - sent) * 1000
        kind = answer.get("type")
        if kind == "chat.started":
            turn.started_ms = elapsed
            conversation = answer.get("conversation")
            turn.conversation = conversation
        elif kind == "chat.delta":
            if turn.first_token_ms is None:
                turn.first_token_ms = elapsed
            text = answer.get("text") or ""
            turn.deltas += 1
            turn.chars += len(text)
            parts.append(text)
        elif kind in ("chat.completed", "chat.error"):
            turn.total_ms = elapsed
            turn.text = "".join(parts)
            if kind == "chat.completed":
                turn.code = str(answer.get("status"))
                turn.ok = turn.code == "complete"
                turn.cached = bool(answer.get("cached"))
                turn.message = answer.get("message")
            else:
                turn.code = str(answer.get("code"))
            return conversation
