from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from mpai.chat.cleanup import cleanup_chat_history


class Command(BaseCommand):
    help = "Delete chat history older than the retention period (MPAI HISTORY_RETENTION_DAYS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=None, help="retention in days")

    def handle(self, *args: Any, days: int | None, **options: Any) -> None:
        result = cleanup_chat_history(days=days)
        self.stdout.write(
            f"Deleted {result.messages_deleted} messages and "
            f"{result.conversations_deleted} empty conversations; "
            f"closed {result.stale_streams_closed} stale streams."
        )
