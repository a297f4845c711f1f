"""Per-request trace: a request id and monotonic timestamps (ns) at each point."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

# Points of a turn, in order (README, "Signals").
START = "start"
CONTEXT_BUILT = "context_built"
API_REQUEST_SENT = "api_request_sent"
API_RESPONSE_RECEIVED = "api_response_received"
FIRST_DELTA = "first_delta"
LAST_DELTA = "last_delta"
RESPONSE_PROCESSED = "response_processed"
SAVED = "saved"
REQUEST_COMPLETE = "request_complete"


@dataclass
class Trace:
    """What a chat request's receivers can read.

    Attributes:
        request_id: a random hex id for this request.
        marks: point name → ``time.monotonic_ns()`` when it was reached.
        attempts: HTTP requests made to the provider (1 + retries; 0 when cached;
            summed over the requests of a tool loop).
        cached: True when the reply came from the response cache.
        provider_name: the provider's ``provider_name`` once a request was sent
            (OpenTelemetry's ``gen_ai.provider.name``), else "".
        replayed: True when the reply is a replay of an earlier send (same client_id).
    """

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    marks: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    cached: bool = False
    provider_name: str = ""
    replayed: bool = False

    def __post_init__(self) -> None:
        self.marks.setdefault(START, time.monotonic_ns())

    def mark(self, point: str) -> int:
        """Record ``point`` now; returns the timestamp (ns)."""
        now = time.monotonic_ns()
        self.marks[point] = now
        return now

    def mark_once(self, point: str) -> None:
        if point not in self.marks:
            self.mark(point)

    def _ms(self, start: str, end: str) -> float:
        if start not in self.marks or end not in self.marks:
            return 0.0
        return round((self.marks[end] - self.marks[start]) / 1e6, 3)

    def timings_ms(self) -> dict[str, float]:
        """Return the stage timings of ``chat.completed`` in milliseconds.

        ``context``, ``api_wait`` (request sent → response received), ``first_token``
        (request sent → first delta; from the start of the turn when cached or
        replayed; in a tool loop both from the turn's first request, so
        ``first_token`` includes the tool calls before the first text), ``generation``
        (first → last delta), ``processing`` (last delta → saved) and ``total``
        (start → complete).
        """
        from_point = START if (self.cached or self.replayed) else API_REQUEST_SENT
        return {
            "context": self._ms(START, CONTEXT_BUILT),
            "api_wait": 0.0
            if (self.cached or self.replayed)
            else self._ms(API_REQUEST_SENT, API_RESPONSE_RECEIVED),
            "first_token": self._ms(from_point, FIRST_DELTA),
            "generation": self._ms(FIRST_DELTA, LAST_DELTA),
            "processing": self._ms(LAST_DELTA, SAVED),
            "total": self._ms(START, REQUEST_COMPLETE),
        }
