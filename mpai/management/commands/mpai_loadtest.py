"""``python manage.py mpai_loadtest``: a websocket load test of a running mpai server.

Run it in the server's project and database: it creates (or reuses) the users
``mpai-load-<i>`` and a session for each, then runs ``--users`` concurrent clients of
``--messages`` turns each, or for ``--duration`` seconds (and ``--idle`` websockets that
send nothing), replaying recorded conversations turn by turn (``--corpus``; by default
``$MPAI_LOADTEST_CORPUS``, else ``<BASE_DIR>/../shared/data/conversations.jsonl`` when it
exists, else the packaged offline prompts), with a tqdm progress bar of turns done on
stderr (a TTY only; ``--no-progress``). Afterwards every reply a client saw complete is
read back from the database (``persistence: N of N replies saved as streamed``). It prints
counts, throughput and median/p95/p99 latencies in ms; with ``--provider-first-token-ms``
the time mpai adds to the first token, with ``--server-pid`` the server's CPU (s, ms per
turn) and memory (MiB, KiB per idle websocket and per open stream). The logic and the
report's fields are in :mod:`mpai.loadtest`.

It needs the ``websockets`` client and ``psutil``, which mpai installs only with its
``loadtest`` extra (``pip install "mpai[loadtest]"``); without them the command stops
with a ``CommandError`` saying so.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

#: What the command needs beyond mpai's own dependencies (the ``loadtest`` extra).
MISSING_CLIENT = (
    "mpai_loadtest needs the websockets and psutil packages, which mpai installs only "
    'with its loadtest extra: pip install "mpai[loadtest]"'
)
_EXTRA_MODULES = ("websockets", "psutil")
#: Messages per client without --messages or --duration.
DEFAULT_MESSAGES = 5


def import_loadtest() -> Any:
    """Import :mod:`mpai.loadtest`.

    Raises:
        CommandError: ``websockets`` or ``psutil`` is not installed (naming
            ``mpai[loadtest]``).
    """
    try:
        from mpai import loadtest
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] in _EXTRA_MODULES:
            raise CommandError(MISSING_CLIENT) from exc
        raise
    return loadtest


class Command(BaseCommand):
    help = (
        "Load-test a running mpai server over its chat websocket and print turns ok/failed, "
        "throughput and median/p95/p99 latencies (ms). Each load-test user has its own "
        "rate-limit bucket (MPAI RATE_LIMIT CAPACITY, 10 by default): more --messages than "
        "that gives rate_limited errors unless the server's limit is raised. "
        "--provider-first-token-ms adds the time mpai adds to the first token; --server-pid "
        "the server's CPU per turn and memory per idle websocket and per open stream. "
        "Recorded conversations are replayed turn by turn (--corpus), for --messages turns "
        "or --duration seconds; every complete reply is read back from the database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url",
            default="ws://127.0.0.1:8000/ws/mpai/chat/",
            help="The chat websocket (ws:// or wss://; default %(default)s).",
        )
        parser.add_argument(
            "--users", type=int, default=20, help="Concurrent clients (default %(default)s)."
        )
        parser.add_argument(
            "--messages",
            type=int,
            default=None,
            help=f"Messages per client, one after another (default {DEFAULT_MESSAGES}).",
        )
        parser.add_argument(
            "--duration",
            type=float,
            default=None,
            metavar="S",
            help=(
                "Instead of --messages: each client keeps sending until S seconds after the "
                "first message (and finishes the turn in flight)."
            ),
        )
        parser.add_argument(
            "--corpus",
            default=None,
            help=(
                "A conversations.jsonl whose conversations are replayed turn by turn "
                "(hh-rlhf records skipped); default: $MPAI_LOADTEST_CORPUS, else "
                "<BASE_DIR>/../shared/data/conversations.jsonl if it exists, else the "
                "packaged offline prompts (one conversation per client)."
            ),
        )
        parser.add_argument(
            "--no-progress",
            action="store_true",
            help="No progress bar (there is none anyway when stderr is not a terminal).",
        )
        parser.add_argument(
            "--think-ms",
            type=float,
            default=0.0,
            help="Pause between a reply's end and the client's next message, ms (default 0).",
        )
        parser.add_argument(
            "--origin",
            default=None,
            help="Origin header (default: http(s)://host:port of --url).",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            help="Seconds allowed for the handshake and for each turn (default %(default)s).",
        )
        parser.add_argument(
            "--no-cache",
            action="store_true",
            help='Send "cache": false so no reply comes from the response cache.',
        )
        parser.add_argument(
            "--idle",
            type=int,
            default=0,
            help=(
                "Extra websockets (own users and sessions) that send nothing and stay open "
                "for the whole run (default 0)."
            ),
        )
        parser.add_argument(
            "--provider-first-token-ms",
            type=float,
            default=None,
            metavar="MS",
            help=(
                "The provider's own time to first token, ms: the report adds each turn's "
                "first-token time minus MS (the time mpai adds)."
            ),
        )
        parser.add_argument(
            "--server-pid",
            type=int,
            default=None,
            metavar="PID",
            help=(
                "The server process (on this machine) to sample with psutil: CPU s and ms "
                "per turn, RSS MiB, KiB per idle websocket and per open stream."
            ),
        )
        parser.add_argument(
            "--fail-on-error",
            action="store_true",
            help="Exit non-zero when any turn failed or a reply was not saved as streamed.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        loadtest = import_loadtest()
        url = options["url"]
        if urlsplit(url).scheme not in ("ws", "wss"):
            raise CommandError("--url must start with ws:// or wss://.")
        duration = options["duration"]
        if options["messages"] is not None and duration is not None:
            raise CommandError("--messages and --duration are mutually exclusive.")
        messages = DEFAULT_MESSAGES if options["messages"] is None else options["messages"]
        if options["users"] < 1:
            raise CommandError("--users must be at least 1.")
        if messages < 1:
            raise CommandError("--messages must be at least 1.")
        if duration is not None and duration <= 0:
            raise CommandError("--duration must be positive.")
        if options["timeout"] <= 0 or options["think_ms"] < 0:
            raise CommandError("--timeout must be positive and --think-ms not negative.")
        if options["idle"] < 0:
            raise CommandError("--idle must not be negative.")
        first_token_ms = options["provider_first_token_ms"]
        if first_token_ms is not None and first_token_ms < 0:
            raise CommandError("--provider-first-token-ms must not be negative.")
        if options["server_pid"] is not None:
            try:
                loadtest.check_server_pid(options["server_pid"])
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
        corpus: Path | str | None = options["corpus"] or loadtest.default_corpus()
        try:
            if corpus is None:
                prompts, conversations = loadtest.load_prompts(), None
            else:
                prompts, conversations = [], loadtest.load_conversations(corpus)
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        config = loadtest.LoadTestConfig(
            url=url,
            users=options["users"],
            messages=messages,
            prompts=prompts,
            conversations=conversations,
            duration_s=duration,
            think_ms=options["think_ms"],
            origin=options["origin"],
            timeout=options["timeout"],
            cache=not options["no_cache"],
            idle=options["idle"],
            provider_first_token_ms=first_token_ms,
            server_pid=options["server_pid"],
            source="" if corpus is None else str(corpus),
        )
        stderr = getattr(self.stderr, "_out", self.stderr)
        show = not options["no_progress"] and self.stderr.isatty()
        # Database work stays outside the event loop (no SynchronousOnlyOperation).
        keys = loadtest.prepare_sessions(config.users + config.idle)
        try:
            with tqdm(
                total=None if duration is not None else config.users * messages,
                desc="turns",
                unit="turn",
                file=stderr,
                disable=not show,
                leave=False,
            ) as bar:
                report = asyncio.run(
                    loadtest.run_load(config, keys, on_turn=lambda _turn: bar.update())
                )
        finally:
            loadtest.delete_sessions(keys)
        report.persistence = loadtest.check_persistence(report.turns)
        self.stdout.write(report.format())
        if options["fail_on_error"]:
            problems = []
            if report.failed:
                problems.append(f"{report.failed} of {len(report.turns)} turns failed")
            lost = len(report.persistence.mismatches)
            if lost:
                problems.append(
                    f"{lost} of {report.persistence.checked} replies not saved as streamed"
                )
            if problems:
                raise CommandError("; ".join(problems) + ".")
