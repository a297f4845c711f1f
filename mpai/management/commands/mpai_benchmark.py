"""``python manage.py mpai_benchmark [suite ...]``: run benchmark suites, keep baselines.

Suites are the modules of :mod:`mpai.benchmarks` (e.g. ``cache``, ``ops``); each
prints its table (µs) and returns structured rows (:func:`mpai.benchmarks._stats.
summary_row`). Without a suite the default set runs (:data:`DEFAULT_SUITES`: no Redis
but the one of ``--redis-url`` or the settings, and no second process). The rows can
be written as JSON (``--json``), saved as a baseline (``--save-baseline``) and compared
with one (``--compare``: each operation's p50 against the baseline's, flagged when more
than ``--threshold`` slower; ``--fail-on-regression`` then fails the command). Nothing
is flushed: suites work under unique key prefixes and remove what they created.
"""

from __future__ import annotations

import sys
from contextlib import closing
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mpai.benchmarks import load_suite, suite_names
from mpai.benchmarks._results import (
    DEFAULT_THRESHOLD,
    compare,
    dumps_baseline,
    dumps_rows,
    format_comparisons,
    load_rows,
    progress_bar,
)

#: Suites run when none is named: in-process, database and settings' Redis only.
DEFAULT_SUITES = ("context", "ops")


class Command(BaseCommand):
    help = (
        "Run mpai benchmark suites (default: context and ops), print per-operation "
        "figures (us), and write, save or compare their results."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "suite",
            nargs="*",
            metavar="suite",
            help=(
                f"Suites to run, in order, among {', '.join(suite_names())} "
                f"(default: {' '.join(DEFAULT_SUITES)})."
            ),
        )
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
            help="Measured calls per operation (default: each suite's own).",
        )
        parser.add_argument(
            "--json",
            metavar="FILE",
            default=None,
            help="Write the result rows as a JSON array to FILE ('-': stdout, and the "
            "tables go to stderr).",
        )
        parser.add_argument(
            "--save-baseline",
            metavar="FILE",
            default=None,
            help="Write the result rows to FILE as a baseline for --compare.",
        )
        parser.add_argument(
            "--compare",
            metavar="FILE",
            default=None,
            help="Compare each operation's p50 with the baseline (or --json output) in FILE.",
        )
        parser.add_argument(
            "--threshold",
            type=float,
            default=DEFAULT_THRESHOLD,
            help="With --compare, flag an operation whose p50 is more than this fraction "
            "above the baseline's (default 0.10: 10%% slower).",
        )
        parser.add_argument(
            "--fail-on-regression",
            action="store_true",
            help="With --compare, exit with an error when any operation is flagged.",
        )
        parser.add_argument(
            "--from-json",
            metavar="FILE",
            default=None,
            help="Run nothing: take the rows from FILE (--json output or a baseline), "
            "e.g. to compare a CI run's results with a baseline.",
        )
        parser.add_argument(
            "--no-progress",
            action="store_true",
            help="No progress bar (it is also off when stderr is not a terminal).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["iterations"] is not None and options["iterations"] < 1:
            raise CommandError("--iterations must be at least 1.")
        if options["threshold"] < 0:
            raise CommandError("--threshold must not be negative.")
        if options["fail_on_regression"] and not options["compare"]:
            raise CommandError("--fail-on-regression needs --compare FILE.")
        baseline = self._read_rows(options["compare"]) if options["compare"] else None
        report = self.stderr if options["json"] == "-" else self.stdout
        if options["from_json"]:
            if options["suite"]:
                raise CommandError("Name no suite with --from-json (nothing is run).")
            rows = self._read_rows(options["from_json"])
        else:
            rows = self._run_suites(options, report)
        if options["json"]:
            self._write(options["json"], dumps_rows(rows))
        if options["save_baseline"]:
            self._write(options["save_baseline"], dumps_baseline(rows))
            report.write(f"baseline of {len(rows)} operations saved to {options['save_baseline']}")
        if baseline is not None:
            comparisons = compare(rows, baseline, options["threshold"])
            report.write(format_comparisons(comparisons), ending="")
            flagged = [item for item in comparisons if item.regressed]
            if flagged and options["fail_on_regression"]:
                names = ", ".join(f"{item.suite}/{item.operation}" for item in flagged)
                raise CommandError(
                    f"{len(flagged)} operation(s) more than {options['threshold']:.0%} "
                    f"slower than the baseline: {names}"
                )

    def _run_suites(self, options: dict[str, Any], report: Any) -> list[dict[str, Any]]:
        names = list(options["suite"]) or list(DEFAULT_SUITES)
        known = suite_names()
        for name in names:
            if name not in known:
                raise CommandError(
                    f"No benchmark suite named {name!r}; choose from {', '.join(known)}."
                )
        try:
            suites = [(name, load_suite(name)) for name in names]
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        suite_options = {**options, "progress": not options["no_progress"]}
        rows: list[dict[str, Any]] = []
        several = len(suites) > 1  # one suite: its own bar, if any, is enough
        bar = progress_bar(
            {**suite_options, "progress": several and suite_options["progress"]},
            total=len(suites),
            desc="suites",
        )
        with closing(bar):
            for name, suite in suites:
                if several:
                    report.write(f"== {name} ==")
                result = suite.run(report, suite_options)
                rows.extend(result or [])
                bar.update(1)
        return rows

    def _read_rows(self, path: str) -> list[dict[str, Any]]:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
            return load_rows(text)
        except (OSError, ValueError) as exc:
            raise CommandError(f"Cannot read benchmark rows from {path}: {exc}") from exc

    def _write(self, path: str, text: str) -> None:
        if path == "-":
            self.stdout.write(text, ending="")
            return
        try:
            Path(path).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot write {path}: {exc}") from exc
