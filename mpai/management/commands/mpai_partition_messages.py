"""``python manage.py mpai_partition_messages [--months-ahead N] [--check]``.

Turns ``mpai_message`` into monthly range partitions on PostgreSQL
(:func:`mpai.chat.partitions.partition_table`; README, "Chat history at scale"), so the
daily cleanup drops whole months. Run once, in a quiet hour: the switch locks the table
while it builds the archive's new primary key. Later runs only add missing months.
``--check`` prints the layout and changes nothing.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mpai.chat import partitions


class Command(BaseCommand):
    help = "Partition mpai_message by month (PostgreSQL), or add the months missing ahead."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--months-ahead",
            type=int,
            default=partitions.MONTHS_AHEAD,
            help="months of partitions kept ready after this one "
            f"(default {partitions.MONTHS_AHEAD})",
        )
        parser.add_argument("--check", action="store_true", help="print the layout; change nothing")

    def handle(self, *args: Any, months_ahead: int, check: bool, **options: Any) -> None:
        if months_ahead < 0:
            raise CommandError("--months-ahead must be at least 0.")
        try:
            if check:
                self._print_layout()
                return
            was_partitioned = partitions.is_partitioned()
            created = partitions.partition_table(months_ahead=months_ahead)
        except partitions.NotPostgreSQL as exc:
            raise CommandError(str(exc)) from exc
        if not was_partitioned:
            self.stdout.write(f"{partitions.PARENT} is now partitioned by month.")
        self.stdout.write(
            f"Created {len(created)} partitions: {', '.join(created)}."
            if created
            else "No partition was missing."
        )

    def _print_layout(self) -> None:
        if not partitions.is_partitioned():
            self.stdout.write(f"{partitions.PARENT} is a plain table.")
            return
        for part in partitions.partitions():
            if part.upper is None:
                self.stdout.write(f"{part.name}: DEFAULT")
            else:
                lower = part.lower.isoformat() if part.lower else "MINVALUE"
                self.stdout.write(f"{part.name}: {lower} .. {part.upper.isoformat()}")
