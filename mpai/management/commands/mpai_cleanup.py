"""``python manage.py mpai_cleanup [--dry-run] [--days N] [--batch-size N]``.

Deletes chat history past its retention (:func:`mpai.chat.cleanup.cleanup_chat_history`)
and prints what went: messages, empty conversations, stale streams closed, batches and
the duration in milliseconds. ``--dry-run`` prints the same counts and deletes nothing.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from mpai.chat.cleanup import cleanup_chat_history


class Command(BaseCommand):
    help = (
        "Delete chat history older than its retention period (MPAI HISTORY_RETENTION_DAYS "
        "and HISTORY_RETENTION_RULE) and the conversations left empty."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=int, default=None, help="retention in days for everyone (no rule)"
        )
        parser.add_argument(
            "--batch-size", type=int, default=None, help="rows per delete (CLEANUP_BATCH_SIZE)"
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be deleted; delete nothing"
        )

    def handle(
        self,
        *args: Any,
        days: int | None,
        batch_size: int | None,
        dry_run: bool,
        **options: Any,
    ) -> None:
        try:
            result = cleanup_chat_history(days=days, batch_size=batch_size, dry_run=dry_run)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if result.dry_run:
            self.stdout.write(
                f"Dry run: would delete {result.messages_deleted} messages and "
                f"{result.conversations_deleted} empty conversations; would close "
                f"{result.stale_streams_closed} stale streams ({result.duration_ms:.0f} ms)."
            )
            return
        self.stdout.write(
            f"Deleted {result.messages_deleted} messages and "
            f"{result.conversations_deleted} empty conversations; "
            f"closed {result.stale_streams_closed} stale streams "
            f"({result.batches} batches, {result.duration_ms:.0f} ms)."
        )
