"""One finished chat turn, as the metrics record it (built from ``request_complete``).

Shared by the storage of histograms (:mod:`mpai.metrics.storage`) and the Prometheus
exposition (:mod:`mpai.metrics.prometheus`). No user or conversation ids: metric
labels must not grow without bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The stages of a turn, in ``chat.completed``'s ``timings_ms`` (README, "Websocket").
STAGES = ("context", "api_wait", "first_token", "generation", "processing", "total")


@dataclass(frozen=True)
class TurnRecord:
    """A finished turn's figures.

    Attributes:
        timings_ms: stage → duration in ms, for the stages of :data:`STAGES` present.
        outcome: ``complete``, ``cancelled``, or the error code (``provider_timeout``, …).
        model: the model asked (``""`` when the turn never reached a provider).
        cached: the reply came from the response cache.
        replayed: the turn replayed an earlier exchange (a resend).
        input_tokens / output_tokens: the provider's usage, or None when not sent.
        ended_at: wall-clock seconds (``time.time()``) when the turn ended.
        memory_kib: stage → change of the process's resident memory in KiB, while
            ``MPAI["MEMORY_PROFILING"]`` (keys in :mod:`mpai.metrics.memory`); else empty.
    """

    timings_ms: dict[str, float]
    outcome: str
    model: str
    cached: bool
    replayed: bool
    input_tokens: int | None
    output_tokens: int | None
    ended_at: float
    memory_kib: dict[str, float] = field(default_factory=dict)
