"""Live conversation memory: the sliding window a connection keeps per conversation.

Thresholds (README, "The chat pipeline"):
``safe size = 2 × max_pairs + 5`` messages; when the window passes ``1.5 × safe size``
it is trimmed, at the end of a turn, to its newest ``⌈1.2 × max_pairs⌉`` messages
starting at a user message; at ``2 × safe size`` it is trimmed at once, mid-turn if
need be. Trimming only drops messages from memory: saved messages are never deleted.
A window idle for ``MEMORY_IDLE_SECONDS`` (24 h) is dropped and rebuilt from the
database.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

ChatMessage = dict[str, str]


@dataclass
class ConversationMemory:
    """The in-memory history of one conversation.

    Attributes:
        messages: ``[{"role", "content"}, ...]`` oldest first.
        max_pairs: user/assistant pairs the window is sized for (default 20).
        clock: seconds, monotonic (injectable for tests).
    """

    messages: list[ChatMessage] = field(default_factory=list)
    max_pairs: int = 20
    clock: Callable[[], float] = time.monotonic
    last_activity: float = 0.0
    trims: int = 0
    # When the messages were last loaded or saved (wall clock, for comparing with the
    # conversation's updated_at); set by the pipeline.
    synced_at: datetime | None = None

    def __post_init__(self) -> None:
        self.last_activity = self.clock()

    @property
    def safe_size(self) -> int:
        return 2 * self.max_pairs + 5

    @property
    def trim_to(self) -> int:
        return math.ceil(1.2 * self.max_pairs)

    def idle_for(self) -> float:
        """Seconds since the last append."""
        return self.clock() - self.last_activity

    def append(self, role: str, content: str) -> None:
        """Add a message; trims at once when the window reaches 2 × safe size."""
        self.messages.append({"role": role, "content": content})
        self.last_activity = self.clock()
        if len(self.messages) >= 2 * self.safe_size:
            self.trim()

    def end_turn(self) -> None:
        """Trim when the window has passed 1.5 × safe size (call after each reply)."""
        if len(self.messages) > 1.5 * self.safe_size:
            self.trim()

    def trim(self) -> None:
        """Keep the newest ``trim_to`` messages, starting at a user message."""
        kept = self.messages[-self.trim_to :]
        while kept and kept[0]["role"] != "user":
            kept.pop(0)
        self.messages = kept
        self.trims += 1
