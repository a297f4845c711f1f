"""``manage.py mpai_health [--json]``: run the health checks once and print them.

Exit status 0 when every check is ok, 1 on a warning or an error. The run is stored
as a snapshot (trigger ``"command"``) like a scheduled one.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from mpai.health.runner import results_of, run_checks


class Command(BaseCommand):
    help = "Run mpai's health checks once; exit 0 when healthy, 1 on a warning or an error."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the stored snapshot as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        snapshot = run_checks(trigger="command")
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "id": snapshot.pk,
                        "created_at": snapshot.created_at.isoformat(),
                        "status": snapshot.status,
                        "duration_ms": snapshot.duration_ms,
                        "trigger": snapshot.trigger,
                        "results": snapshot.results,
                    },
                    indent=2,
                    default=str,
                )
            )
        else:
            self._table(snapshot)
        if snapshot.status != "ok":
            raise SystemExit(1)

    def _table(self, snapshot: Any) -> None:
        results = results_of(snapshot)
        width = max([len(result.name) for result in results] + [5])
        styles = {
            "ok": self.style.SUCCESS,
            "warning": self.style.WARNING,
            "error": self.style.ERROR,
        }
        self.stdout.write(f"{'check':<{width}}  {'status':<7}  {'ms':>8}  message")
        for result in results:
            status = styles[str(result.status)](f"{result.status!s:<7}")
            self.stdout.write(
                f"{result.name:<{width}}  {status}  {result.duration_ms:>8.1f}  {result.message}"
            )
        overall = styles[snapshot.status](snapshot.status)
        self.stdout.write(f"\n{overall} in {snapshot.duration_ms:.0f} ms (snapshot {snapshot.pk})")
