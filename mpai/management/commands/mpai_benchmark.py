"""``python manage.py mpai_benchmark <suite>``: run one benchmark suite.

Suites are the modules of :mod:`mpai.benchmarks` (e.g. ``cache``); each reports
medians and p99s in microseconds and the ratios to its baselines. Nothing is
flushed: suites work under unique key prefixes and remove what they created.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mpai.benchmarks import load_suite, suite_names


class Command(BaseCommand):
    help = "Run an mpai benchmark suite and print per-operation median and p99 (us)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("suite", choices=suite_names(), help="The benchmark suite to run.")
        parser.add_argument(
            "--redis-url",
            default=None,
            help=(
                "Redis server to measure against (default: settings.REDIS_URL, the "
                "REDIS_URL environment variable, or redis://127.0.0.1:6379/0). Only keys "
                "under a unique prefix are touched; nothing is flushed."
            ),
        )
        parser.add_argument(
            "--iterations",
            type=int,
            default=None,
            help="Measured calls per operation (default: the suite's own).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["iterations"] is not None and options["iterations"] < 1:
            raise CommandError("--iterations must be at least 1.")
        try:
            suite = load_suite(options["suite"])
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        suite.run(self.stdout, options)
