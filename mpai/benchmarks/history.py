"""Benchmark suite ``history``: the chat-history API over a million messages.

Safety: the suite never touches an existing database. It needs the environment variable
``MPAI_BENCH_DATABASE_URL``, a PostgreSQL URL whose database name starts with
``mpai_bench`` (e.g. ``postgres://postgres@127.0.0.1:5432/mpai_bench_1``); it
``CREATE DATABASE``\\ s it (and refuses when it already exists), runs ``migrate`` there,
and drops it at the end (``MPAI_BENCH_KEEP=1`` keeps it). Without that variable, or with
another engine or name, it stops with an error before connecting anywhere.

What it does, in one run:

1. Fill: ``MPAI_BENCH_HISTORY_MESSAGES`` messages (default 1,000,000) over
   ``MPAI_BENCH_HISTORY_USERS`` users (10,000), texts of
   ``MPAI_BENCH_CORPUS`` (default ``../shared/data/conversations.jsonl``; hh-rlhf records
   skipped; contents cut at 600 characters), written with ``COPY`` (psycopg's
   ``cursor.copy()``) into ``auth_user``, ``mpai_conversation`` and ``mpai_message``,
   the message table's secondary indexes and foreign keys dropped during the copy and
   re-created after it, then ``ANALYZE``. The timeline spans 100 days, one row per step,
   ids in time order. Both layouts live in the same table:

   - (b) ``heavy_old`` (user 1): the table's oldest ``MPAI_BENCH_HISTORY_HEAVY`` rows
     (default 60 % of them: 600,000);
   - (a) ``heavy_spread`` (user 2): ``MPAI_BENCH_HISTORY_SPREAD`` rows (default 5 %:
     50,000) spread at random over the rest of the timeline, among everyone's;
   - everyone else: the remaining rows at random; conversations of 20 messages.

2. HTTP figures (median, p99 over ``--iterations`` requests, default 200, after 10
   warm-up requests): ``uvicorn --factory mpai.benchmarks.history:bench_asgi`` in a
   subprocess on a free port, the settings module ``MPAI_BENCH_SETTINGS_MODULE``
   (default ``config.settings``, which reads ``DATABASE_URL``) with DEBUG off and no
   Redis (local-memory cache), driven by ``requests.Session`` with DRF token auth. The
   baseline is a bare DRF view mounted only in that server (``/bench/bare/``: token or
   session auth, one indexed query for the user's 10 newest message ids); every other
   figure is also given as a ratio to its median.
3. The daily cleanup of the oldest 10 % (``cleanup_chat_history(days=90)`` in a
   subprocess on that database), with a reader thread requesting history page 1 all
   along: the cleanup's time and the reader's longest wait.
4. ``EXPLAIN (ANALYZE, BUFFERS)`` of the main queries, their SQL captured from the
   real querysets (``CaptureQueriesContext``) and printed with the indexes they use.

Run: ``MPAI_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/mpai_bench_x
DJANGO_DEBUG=1 python manage.py mpai_benchmark history``.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from base64 import b64encode
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

from django.core.management.base import CommandError

from mpai.benchmarks import Writer
from mpai.benchmarks._stats import summary_row

SUITE = "history"
DEFAULT_ITERATIONS = 200
WARMUP = 10
ALIAS = "mpai_bench_history"
ENV_URL = "MPAI_BENCH_DATABASE_URL"
NAME_PREFIX = "mpai_bench"
CONVERSATION_LENGTH = 20
MAX_CONTENT = 600
TIMELINE_DAYS = 100
CLEANUP_DAYS = 90  # the oldest 10 % of a 100-day timeline
PAGE_DEPTH = 1000  # MPAI_BENCH_HISTORY_DEPTH overrides it
PER_PAGE = 10
#: A word no corpus message contains: the search that walks a whole history if it
#: tests rows in history order (mpai.chat.search, "The plan of a message search").
RARE_QUERY = "zeppelinx"
HEAVY_OLD = 1
HEAVY_SPREAD = 2
REGULAR = 3
SUBPROCESS_SETTINGS = "config.settings"


class BenchmarkRefused(CommandError):
    """The suite will not run on this database (see the module docstring); a
    ``CommandError``, so ``manage.py`` prints it without a traceback."""


# -- configuration ----------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _depth() -> int:
    """The deep page measured (``MPAI_BENCH_HISTORY_DEPTH``, default 1000)."""
    return max(_env_int("MPAI_BENCH_HISTORY_DEPTH", PAGE_DEPTH), 2)


def bench_database_url() -> str:
    """``$MPAI_BENCH_DATABASE_URL``, checked: PostgreSQL, database name ``mpai_bench*``.

    Raises:
        BenchmarkRefused: unset, not PostgreSQL, or another database name.
    """
    url = os.environ.get(ENV_URL, "").strip()
    if not url:
        raise BenchmarkRefused(
            f"The history suite needs {ENV_URL}=postgres://.../{NAME_PREFIX}_<name>: a "
            "scratch PostgreSQL database it creates, fills and drops itself."
        )
    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    if parsed.scheme not in {"postgres", "postgresql"}:
        raise BenchmarkRefused(f"{ENV_URL} must be a PostgreSQL URL, not {parsed.scheme!r}.")
    if not name.startswith(NAME_PREFIX) or not re.fullmatch(r"[a-z0-9_]+", name):
        raise BenchmarkRefused(
            f"{ENV_URL} must name a database starting with {NAME_PREFIX!r} (lowercase, "
            f"digits, underscores), not {name!r}."
        )
    return url


def _maintenance_url(url: str) -> str:
    return urlparse(url)._replace(path="/postgres").geturl()


def _db_name(url: str) -> str:
    return urlparse(url).path.lstrip("/")


def create_database(url: str) -> None:
    """``CREATE DATABASE`` the benchmark's database (an error when it exists)."""
    import psycopg

    name = _db_name(url)
    with psycopg.connect(_maintenance_url(url), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            raise BenchmarkRefused(f"Database {name!r} exists: the suite only uses one it creates.")
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(url: str) -> None:
    import psycopg

    with psycopg.connect(_maintenance_url(url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_db_name(url)}" WITH (FORCE)')


@contextmanager
def bench_connection(url: str) -> Iterator[Any]:
    """A Django connection alias to the benchmark database, removed on exit."""
    import dj_database_url
    from django.db import connections

    configured = connections.configure_settings(
        {"default": dict(connections.settings["default"]), ALIAS: dj_database_url.parse(url)}
    )
    connections.settings[ALIAS] = configured[ALIAS]
    try:
        yield connections[ALIAS]
    finally:
        connections[ALIAS].close()
        del connections[ALIAS]
        connections.settings.pop(ALIAS, None)


# -- the corpus -------------------------------------------------------------------------


def corpus_path() -> Path:
    env = os.environ.get("MPAI_BENCH_CORPUS")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base.parent / "shared" / "data" / "conversations.jsonl"
        if candidate.exists():
            return candidate
    return Path("../shared/data/conversations.jsonl")


def load_texts(path: Path) -> dict[str, list[str]]:
    """The corpus's turn texts by role (hh-rlhf skipped, cut at ``MAX_CONTENT``)."""
    texts: dict[str, list[str]] = {"user": [], "assistant": []}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if str(record.get("source", "")).startswith("hh-rlhf"):
                continue
            for turn in record["turns"]:
                if turn["role"] in texts and turn["content"]:
                    texts[turn["role"]].append(turn["content"][:MAX_CONTENT].replace("\x00", ""))
    if not texts["user"] or not texts["assistant"]:
        raise BenchmarkRefused(f"No usable texts in {path}.")
    return texts


# -- the fill ---------------------------------------------------------------------------


def plan_owners(
    messages: int, users: int, heavy: int, spread: int, rng_seed: int = 14
) -> tuple[list[int], list[int], list[tuple[int, int, int]]]:
    """Owners and conversations of each row, in id (= time) order.

    Returns ``(owners, conversation ids, conversations)``, conversations as
    ``(owner, first row, last row)`` (0-based row numbers), conversation ids 1-based.
    """
    rng = random.Random(rng_seed)
    owners = [HEAVY_OLD] * heavy
    rest = messages - heavy
    spread_rows = set(rng.sample(range(rest), min(spread, rest)))
    others = list(range(REGULAR, users + 1)) or [HEAVY_SPREAD]
    owners.extend(HEAVY_SPREAD if i in spread_rows else rng.choice(others) for i in range(rest))
    conv_of_row: list[int] = []
    conversations: list[tuple[int, int, int]] = []
    open_conv: dict[int, tuple[int, int]] = {}  # owner -> (conversation index, length)
    for row, owner in enumerate(owners):
        current = open_conv.get(owner)
        if current is None or current[1] >= CONVERSATION_LENGTH:
            conversations.append((owner, row, row))
            current = (len(conversations) - 1, 0)
        index, length = current
        conversations[index] = (owner, conversations[index][1], row)
        open_conv[owner] = (index, length + 1)
        conv_of_row.append(index + 1)
    return owners, conv_of_row, conversations


def _secondary_schema(cur: Any, table: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    indexes = cur.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s::regclass"
        " AND NOT i.indisprimary"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)",
        [table],
    ).fetchall()
    fks = cur.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = %s::regclass AND contype = 'f'",
        [table],
    ).fetchall()
    return list(indexes), list(fks)


def fill(url: str, *, messages: int, users: int, heavy: int, spread: int) -> dict[str, float]:
    """Write the benchmark's rows (see the module docstring); return phase times in s."""
    import psycopg

    times: dict[str, float] = {}
    started = time.perf_counter()
    texts = load_texts(corpus_path())
    owners, conv_of_row, conversations = plan_owners(messages, users, heavy, spread)
    times["plan"] = time.perf_counter() - started
    now = datetime.now(UTC)
    start = now - timedelta(days=TIMELINE_DAYS)
    step = timedelta(days=TIMELINE_DAYS) / max(messages, 1)

    def at(row: int) -> datetime:
        return start + step * row

    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SET maintenance_work_mem = '1GB'")
        indexes, fks = _secondary_schema(cur, "mpai_message")
        for name, _definition in fks:
            cur.execute(f'ALTER TABLE mpai_message DROP CONSTRAINT "{name}"')
        for name, _definition in indexes:
            cur.execute(f'DROP INDEX "{name}"')
        t = time.perf_counter()
        columns = (
            "id, password, is_superuser, username, first_name, last_name, email,"
            " is_staff, is_active, date_joined"
        )
        with cur.copy(f"COPY auth_user ({columns}) FROM STDIN") as copy:
            for pk in range(1, users + 1):
                name = {HEAVY_OLD: "heavy_old", HEAVY_SPREAD: "heavy_spread"}.get(pk, f"u{pk}")
                copy.write_row((pk, "!", False, f"bench_{name}", "", "", "", False, True, start))
        with cur.copy(
            "COPY mpai_conversation (id, owner_id, title, created_at, updated_at) FROM STDIN"
        ) as copy:
            for pk, (owner, first, last) in enumerate(conversations, start=1):
                title = texts["user"][pk % len(texts["user"])][:60]
                copy.write_row((pk, owner, title, at(first), at(last)))
        times["copy users+conversations"] = time.perf_counter() - t
        t = time.perf_counter()
        columns = (
            "id, conversation_id, owner_id, role, content, status, model, finish_reason,"
            " error_code, cached, created_at"
        )
        turn: dict[int, int] = {}
        with cur.copy(f"COPY mpai_message ({columns}) FROM STDIN") as copy:
            for row in range(messages):
                conv = conv_of_row[row]
                n = turn.get(conv, 0)
                turn[conv] = n + 1
                role = "user" if n % 2 == 0 else "assistant"
                pool = texts[role]
                copy.write_row(
                    (
                        row + 1,
                        conv,
                        owners[row],
                        role,
                        pool[row % len(pool)],
                        "complete",
                        "" if role == "user" else "offline-1",
                        "" if role == "user" else "stop",
                        "",
                        False,
                        at(row),
                    )
                )
        times["copy messages"] = time.perf_counter() - t
        t = time.perf_counter()
        for _name, definition in indexes:
            cur.execute(definition)
        for name, definition in fks:
            cur.execute(f'ALTER TABLE mpai_message ADD CONSTRAINT "{name}" {definition}')
        for table in ("auth_user", "mpai_conversation", "mpai_message"):
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" (SELECT max(id) FROM {table}))"
            )
        times["indexes+foreign keys"] = time.perf_counter() - t
        t = time.perf_counter()
        cur.execute("VACUUM ANALYZE")
        times["vacuum analyze"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - started
    return times


def make_tokens(url: str, user_ids: list[int]) -> dict[int, str]:
    import psycopg

    keys = {pk: secrets.token_hex(20) for pk in user_ids}
    with psycopg.connect(url, autocommit=True) as conn:
        for pk, key in keys.items():
            conn.execute(
                "INSERT INTO authtoken_token (key, created, user_id) VALUES (%s, now(), %s)",
                [key, pk],
            )
    return keys


# -- the server -------------------------------------------------------------------------


def _bare_view() -> Any:
    from rest_framework.authentication import SessionAuthentication, TokenAuthentication
    from rest_framework.permissions import IsAuthenticated
    from rest_framework.request import Request
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from mpai.models import Message

    class BareView(APIView):
        """The baseline: auth, one indexed query for 10 ids, a tiny JSON response."""

        authentication_classes = [SessionAuthentication, TokenAuthentication]
        permission_classes = [IsAuthenticated]

        def get(self, request: Request) -> Response:
            ids = list(
                Message.objects.filter(owner_id=request.user.pk)
                .order_by("-created_at", "-id")
                .values_list("id", flat=True)[:PER_PAGE]
            )
            return Response({"results": ids})

    return BareView


def __getattr__(name: str) -> Any:
    """``urlpatterns``, when the benchmark server uses this module as its URLconf: the
    bare view at ``bench/bare/`` and the project's own URLconf."""
    if name != "urlpatterns":
        raise AttributeError(name)
    from django.urls import include, path

    root = os.environ.get("MPAI_BENCH_ROOT_URLCONF", "config.urls")
    return [path("bench/bare/", _bare_view().as_view()), path("", include(root))]


def bench_asgi() -> Any:
    """The benchmark server's ASGI app (uvicorn ``--factory``): the project's app, its
    URLconf wrapped by this module's ``urlpatterns``."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SUBPROCESS_SETTINGS)
    from mpai.asgi import get_asgi_application

    application = get_asgi_application()
    from django.conf import settings
    from django.urls import clear_url_caches

    os.environ["MPAI_BENCH_ROOT_URLCONF"] = settings.ROOT_URLCONF
    settings.ROOT_URLCONF = __name__
    clear_url_caches()
    return application


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _child_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", ENV_URL}}
    env.update(
        DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE=os.environ.get("MPAI_BENCH_SETTINGS_MODULE", SUBPROCESS_SETTINGS),
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(40),
        PYTHONPATH=os.pathsep.join([str(Path.cwd()), *sys.path]),
        MPAI_LOG_LEVEL="WARNING",
    )
    return env


@contextmanager
def server(url: str) -> Iterator[str]:
    """uvicorn serving :func:`bench_asgi` on the benchmark database; yields its base URL."""
    import requests

    port = _free_port()
    log = open(f"/tmp/mpai-bench-history-{os.getpid()}-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            f"{__name__}:bench_asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            "--lifespan",
            "off",
        ],
        env=_child_env(url),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"uvicorn exited ({process.returncode}); see {log.name}")
            try:
                requests.get(f"{base}/api/mpai/v1/health/live/", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn did not start; see {log.name}") from None
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# -- measuring --------------------------------------------------------------------------


def history_cursor(position: datetime) -> str:
    """The chat-history cursor of the page after ``position`` (DRF's encoding:
    base64 of ``p=<str(position)>``)."""
    return b64encode(urlencode({"p": str(position)}).encode("ascii")).decode("ascii")


def time_requests(call: Callable[[], Any], iterations: int) -> list[float]:
    for _ in range(WARMUP):
        call()
    samples = []
    for _ in range(iterations):
        t = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - t) / 1000)
    return sorted(samples)


def _getter(session: Any, url: str) -> Callable[[], Any]:
    def call() -> Any:
        response = session.get(url, timeout=60)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
        return response

    return call


def _session(token: str) -> Any:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    return session


def run_cleanup(url: str) -> dict[str, Any]:
    """``cleanup_chat_history(days=CLEANUP_DAYS)`` in a subprocess on the bench database."""
    script = (
        "import json, django; django.setup();"
        "from mpai.chat.cleanup import cleanup_chat_history;"
        f"r = cleanup_chat_history(days={CLEANUP_DAYS});"
        "print(json.dumps({'messages_deleted': r.messages_deleted,"
        " 'conversations_deleted': r.conversations_deleted, 'batches': r.batches,"
        " 'duration_ms': r.duration_ms}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=_child_env(url),
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- EXPLAIN ----------------------------------------------------------------------------


def explain(conn: Any, run: Callable[[], Any]) -> tuple[str, str]:
    """Run ``run`` (a real queryset evaluation) on ``conn``; EXPLAIN (ANALYZE, BUFFERS)
    its last SQL statement. Returns ``(sql, plan)``."""
    from django.db import transaction
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(conn) as captured:
        run()
    sql = next(
        q["sql"] for q in reversed(captured.captured_queries) if q["sql"].startswith("SELECT")
    )
    # A search sent to the GIN index (mpai.chat.search.bounded_search) is explained
    # with the setting it ran under.
    fallback = any("enable_indexscan = 'off'" in q["sql"] for q in captured.captured_queries)
    with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
        if fallback:
            cursor.execute("SET LOCAL enable_indexscan = off")
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        plan = "\n".join(row[0] for row in cursor.fetchall())
    if fallback:
        plan = "-- (ran with enable_indexscan off, after the history walk timed out)\n" + plan
    return sql, plan


def _plan_summary(plan: str) -> str:
    used = sorted(
        set(re.findall(r"(?:Index|Index Only|Bitmap Index) Scan(?: Backward)? on (\w+)", plan))
    )
    using = sorted(set(re.findall(r"using (\w+)", plan)))
    seq = sorted(set(re.findall(r"Seq Scan on (\w+)", plan)))
    ms = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return (
        f"indexes {', '.join(using + used) or '-'}; seq scans {', '.join(seq) or '-'}; "
        f"execution {ms.group(1) if ms else '?'} ms"
    )


def _slice(qs: Any, start: int, stop: int) -> list[Any]:
    return list(qs[start:stop])


def _search_page(user: Any, query: str) -> list[Any]:
    from mpai.chat.search import bounded_search, search_messages

    qs = search_messages(user, query, vendor="postgresql").using(ALIAS)
    return bounded_search(user, lambda: list(qs[:21]), using=ALIAS)


def _conversation_page(conv: Any) -> list[Any]:
    from mpai.models import Message

    qs = Message.objects.using(ALIAS).filter(conversation_id=conv)
    return list(qs.order_by("created_at", "id")[:21])


def explain_all(conn: Any, out: Writer, query: str) -> dict[str, str]:
    from django.contrib.auth import get_user_model

    from mpai.chat.history import message_history
    from mpai.models import Message

    users = get_user_model()._default_manager.using(ALIAS)
    plans: dict[str, str] = {}
    offset = (_depth() - 1) * PER_PAGE
    for label, pk in (("spread", HEAVY_SPREAD), ("oldest", HEAVY_OLD)):
        user = users.get(pk=pk)
        qs = message_history(user=user).using(ALIAS)
        cases: list[tuple[str, Callable[[], Any]]] = [
            (f"COUNT(*) of heavy_{label}", qs.count),
            (f"history page 1 of heavy_{label}", partial(_slice, qs, 0, PER_PAGE)),
            (
                f"history page {_depth()} of heavy_{label}",
                partial(_slice, qs, offset, offset + PER_PAGE),
            ),
        ]
        edges = list(qs.values_list("created_at", flat=True)[offset - 1 : offset])
        edge = edges[0] if edges else None
        if edge is not None:
            cases.append(
                (
                    f"cursor page at depth {_depth()} of heavy_{label}",
                    partial(_slice, qs.filter(created_at__lt=edge), 0, PER_PAGE + 1),
                )
            )
        for words in (query, RARE_QUERY):
            cases.append((f"search {words!r} of heavy_{label}", partial(_search_page, user, words)))
        if label == "spread":
            conv = (
                Message.objects.using(ALIAS)
                .filter(owner=user)
                .values_list("conversation_id", flat=True)
                .first()
            )
            cases.append(
                (
                    f"conversation messages of heavy_{label}",
                    partial(_conversation_page, conv),
                )
            )
        for name, call in cases:
            sql, plan = explain(conn, call)
            plans[name] = plan
            out.write(f"\n-- EXPLAIN (ANALYZE, BUFFERS): {name}\n-- {_plan_summary(plan)}")
            out.write(f"-- SQL: {sql}")
            out.write(plan)
    return plans


# -- the suite --------------------------------------------------------------------------


def _ms(us: float) -> str:
    return f"{us / 1000:9.2f}"


def run(stdout: Writer, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the suite (see the module docstring); return its rows (times in µs)."""
    url = bench_database_url()
    messages = _env_int("MPAI_BENCH_HISTORY_MESSAGES", 1_000_000)
    users = max(_env_int("MPAI_BENCH_HISTORY_USERS", 10_000), 3)
    heavy = _env_int("MPAI_BENCH_HISTORY_HEAVY", messages * 6 // 10)
    spread = _env_int("MPAI_BENCH_HISTORY_SPREAD", messages // 20)
    query = os.environ.get("MPAI_BENCH_HISTORY_QUERY", "python")
    iterations = int(options.get("iterations") or DEFAULT_ITERATIONS)
    if heavy + spread > messages:
        raise BenchmarkRefused("MPAI_BENCH_HISTORY_HEAVY + _SPREAD exceed _MESSAGES.")
    rows: list[dict[str, Any]] = []
    create_database(url)
    try:
        with bench_connection(url) as conn:
            from django.core.management import call_command

            call_command("migrate", database=ALIAS, verbosity=0, interactive=False)
            conn.close()
            times = fill(url, messages=messages, users=users, heavy=heavy, spread=spread)
            stdout.write(
                f"history: filled {messages:,} messages, {users:,} users (heavy_old "
                f"{heavy:,} oldest rows, heavy_spread {spread:,} spread) in "
                f"{times['total']:.1f} s: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in times.items() if k != "total")
            )
            rows.append(
                summary_row(SUITE, "fill (COPY + indexes + ANALYZE)", [times["total"] * 1e6])
            )
            tokens = make_tokens(url, [HEAVY_OLD, HEAVY_SPREAD, REGULAR])
            with server(url) as base:
                http_rows = _measure(url, base, tokens, stdout, iterations, query)
                rows.extend(http_rows)
                stdout.write(
                    "\nEXPLAIN (ANALYZE, BUFFERS) of the main queries (before the cleanup)"
                )
                explain_all(conn, stdout, query)
                conn.close()
                rows.extend(
                    _cleanup_with_reader(
                        url, base, tokens[HEAVY_SPREAD], stdout, http_rows[0]["p50"]
                    )
                )
    finally:
        if os.environ.get("MPAI_BENCH_KEEP") != "1":
            drop_database(url)
    return rows


def _measure(
    url: str, base: str, tokens: dict[int, str], out: Writer, iterations: int, query: str
) -> list[dict[str, Any]]:
    import psycopg

    with psycopg.connect(url) as conn:
        edges: dict[int, Any] = {}
        for pk in (HEAVY_OLD, HEAVY_SPREAD):
            row = conn.execute(
                "SELECT created_at FROM mpai_message WHERE owner_id = %s"
                " ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
                [pk, (_depth() - 1) * PER_PAGE - 1],
            ).fetchone()
            edges[pk] = row[0] if row else None
        conv_row = conn.execute(
            "SELECT conversation_id FROM mpai_message WHERE owner_id = %s"
            " ORDER BY created_at DESC LIMIT 1",
            [HEAVY_SPREAD],
        ).fetchone()
    api = "/api/mpai/v1"
    depth = f"?page={_depth()}&per_page={PER_PAGE}"
    cases: list[tuple[str, int, str]] = [
        ("bare DRF view (token auth, 1 indexed query, 10 rows)", HEAVY_SPREAD, "/bench/bare/"),
        ("history page 1, regular user", REGULAR, f"{api}/chat-history/?page=1&per_page=10"),
    ]
    for label, pk in (("spread", HEAVY_SPREAD), ("oldest", HEAVY_OLD)):
        cases.append(
            (f"history page 1, heavy_{label}", pk, f"{api}/chat-history/?page=1&per_page=10")
        )
        cases.append(
            (
                f"history first cursor page (cursor=), heavy_{label}",
                pk,
                f"{api}/chat-history/?cursor=&per_page={PER_PAGE}",
            )
        )
        cases.append((f"history page {_depth()}, heavy_{label}", pk, f"{api}/chat-history/{depth}"))
        if edges[pk] is not None:
            cursor = history_cursor(edges[pk])
            cases.append(
                (
                    f"history cursor page at depth {_depth()}, heavy_{label}",
                    pk,
                    f"{api}/chat-history/?cursor={cursor}&per_page={PER_PAGE}",
                )
            )
    if conv_row:
        cases.append(
            (
                "conversation messages (20)",
                HEAVY_SPREAD,
                f"{api}/conversations/{conv_row[0]}/messages/",
            )
        )
    for words in (query, RARE_QUERY):
        for label, pk in (("spread", HEAVY_SPREAD), ("oldest", HEAVY_OLD)):
            cases.append((f"search q={words}, heavy_{label}", pk, f"{api}/search/?q={words}"))
    rows: list[dict[str, Any]] = []
    sessions = {pk: _session(key) for pk, key in tokens.items()}
    # The constructed cursor must give exactly the deep page's rows.
    for pk in (HEAVY_OLD, HEAVY_SPREAD):
        if edges[pk] is None:
            continue
        paged = sessions[pk].get(f"{base}{api}/chat-history/{depth}", timeout=60).json()
        cursored = (
            sessions[pk]
            .get(
                f"{base}{api}/chat-history/?cursor={history_cursor(edges[pk])}&per_page={PER_PAGE}",
                timeout=60,
            )
            .json()
        )
        same = [m["id"] for m in paged["results"]] == [m["id"] for m in cursored["results"]]
        out.write(f"history: user {pk}: cursor page == page {_depth()}: {same}")
    out.write(
        f"\nhistory over HTTP (uvicorn, token auth), {iterations} requests each after "
        f"{WARMUP} warm-up; ms"
    )
    out.write(f"{'operation':<58} {'p50':>9} {'p99':>9} {'x bare p50':>10}")
    bare = 0.0
    for name, pk, path in cases:
        samples = time_requests(_getter(sessions[pk], base + path), iterations)
        result = summary_row(SUITE, name, samples)
        rows.append(result)
        bare = bare or result["p50"]
        p50, p99 = result["p50"], result["p99"]
        out.write(f"{name:<58} {_ms(p50)} {_ms(p99)} {p50 / bare:10.1f}")
    out.write(f"bare p50 {_ms(bare)} ms is the 1.0 of the ratios")
    return rows


def _cleanup_with_reader(
    url: str, base: str, token: str, out: Writer, bare: float
) -> list[dict[str, Any]]:
    """Run the cleanup while a reader thread requests history page 1; print and return
    the cleanup's time and the reader's latencies."""
    session = _session(token)
    call = _getter(session, f"{base}/api/mpai/v1/chat-history/?page=1&per_page=10")
    waits: list[float] = []
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            t = time.perf_counter_ns()
            try:
                call()
            except Exception as exc:
                errors.append(repr(exc))
            waits.append((time.perf_counter_ns() - t) / 1000)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    t = time.perf_counter()
    result = run_cleanup(url)
    wall = time.perf_counter() - t
    stop.set()
    thread.join(60)
    rows = [
        summary_row(SUITE, "cleanup 10% (cleanup_chat_history)", [result["duration_ms"] * 1000])
    ]
    out.write(
        f"\nhistory cleanup (days={CLEANUP_DAYS}, the oldest 10%): "
        f"{result['messages_deleted']:,} messages, {result['conversations_deleted']:,} "
        f"conversations in {result['batches']} batches, {result['duration_ms'] / 1000:.2f} s "
        f"(subprocess wall {wall:.2f} s)"
    )
    if waits:
        reader_row = summary_row(SUITE, "reader history page 1 during cleanup", waits)
        rows.append(reader_row)
        out.write(
            f"concurrent reader (history page 1, heavy_spread): {len(waits)} requests, "
            f"p50 {_ms(reader_row['p50'])} ms, p99 {_ms(reader_row['p99'])} ms, longest wait "
            f"{_ms(reader_row['max'])} ms ({reader_row['max'] / bare:.1f}x bare p50), "
            f"errors {len(errors)} {errors[:3]}"
        )
    return rows


__all__ = ["BenchmarkRefused", "bench_asgi", "bench_database_url", "run"]
