"""``python manage.py mpai_loadtest``: a websocket load test of a running mpai server.

Run it in the server's project and database: it creates (or reuses) the users
``mpai-load-<i>`` and a session for each, then runs ``--users`` concurrent clients of
``--messages`` turns each and prints counts, throughput and median/p95/p99 latencies
in ms. The logic and the report's fields are in :mod:`mpai.loadtest`.

It needs the ``websockets`` client, which mpai installs only with its ``loadtest``
extra (``pip install "mpai[loadtest]"``); without it the command stops with a
``CommandError`` saying so.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError, CommandParser

#: What the command needs beyond mpai's own dependencies (the ``loadtest`` extra).
MISSING_CLIENT = (
    "mpai_loadtest needs the websockets package, which mpai installs only with its "
    'loadtest extra: pip install "mpai[loadtest]"'
)


def import_loadtest() -> Any:
    """Import :mod:`mpai.loadtest`.

    Raises:
        CommandError: ``websockets`` is not installed (naming ``mpai[loadtest]``).
    """
    try:
        from mpai import loadtest
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "websockets":
            raise CommandError(MISSING_CLIENT) from exc
        raise
    return loadtest


class Command(BaseCommand):
    help = (
        "Load-test a running mpai server over its chat websocket and print turns ok/failed, "
        "throughput and median/p95/p99 latencies (ms). Each load-test user has its own "
        "rate-limit bucket (MPAI RATE_LIMIT CAPACITY, 10 by default): more --messages than "
        "that gives rate_limited errors unless the server's limit is raised."
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
            default=5,
            help="Messages per client, one after another (default %(default)s).",
        )
        parser.add_argument(
            "--corpus",
            default=None,
            help=(
                "A conversations.jsonl whose user turns are the prompts (hh-rlhf records "
                "skipped); default: the packaged offline prompts."
            ),
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
            "--fail-on-error",
            action="store_true",
            help="Exit non-zero when any turn failed.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        loadtest = import_loadtest()
        url = options["url"]
        if urlsplit(url).scheme not in ("ws", "wss"):
            raise CommandError("--url must start with ws:// or wss://.")
        for name in ("users", "messages"):
            if options[name] < 1:
                raise CommandError(f"--{name} must be at least 1.")
        if options["timeout"] <= 0 or options["think_ms"] < 0:
            raise CommandError("--timeout must be positive and --think-ms not negative.")
        try:
            prompts = loadtest.load_prompts(options["corpus"])
        except (OSError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        config = loadtest.LoadTestConfig(
            url=url,
            users=options["users"],
            messages=options["messages"],
            prompts=prompts,
            think_ms=options["think_ms"],
            origin=options["origin"],
            timeout=options["timeout"],
            cache=not options["no_cache"],
        )
        # Database work stays outside the event loop (no SynchronousOnlyOperation).
        keys = loadtest.prepare_sessions(config.users)
        try:
            report = asyncio.run(loadtest.run_load(config, keys))
        finally:
            loadtest.delete_sessions(keys)
        self.stdout.write(report.format())
        if report.failed and options["fail_on_error"]:
            raise CommandError(f"{report.failed} of {len(report.turns)} turns failed.")
