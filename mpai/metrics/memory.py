"""Per-stage memory deltas of a turn, while ``MPAI["MEMORY_PROFILING"]`` is True.

Receivers of the first four measurement signals (``context_built``,
``api_request_sent``, ``api_response_received``, ``response_processed``) are always
connected (:func:`connect_memory_receivers`, one dispatch_uid each), and the metrics
receiver samples the fifth, ``request_complete``; all return at once while the setting
is False (read on each call, so ``override_settings`` works). While it is True each
one samples the process's resident memory (:func:`resident_bytes`: ``/proc/self/statm``,
resident pages × page size, bytes) under the trace's request id; at ``request_complete``
:func:`finish` turns the samples into deltas in KiB, which the metrics receiver puts in
``TurnRecord.memory_kib``.

Why resident memory and not ``tracemalloc``: reading ``/proc/self/statm`` costs a few
µs and changes nothing else, while ``tracemalloc`` slows every allocation of the whole
process while it traces. Resident memory is the process's, not the turn's: other
threads' allocations in the same interval count too, and memory freed to the
allocator's free lists is not given back to the system, so read the deltas as a
trend over many turns. Where ``/proc/self/statm`` does not exist (not Linux),
``memory_kib`` stays empty. Its cost per turn is in README, "Metrics".

Keys of ``memory_kib`` (KiB, the change between two points; absent when a point was
not reached, as on cached or replayed turns):

- ``request``: context built → request sent;
- ``api_wait``: request sent → response headers received;
- ``generation``: response headers → reply assembled (the stream read);
- ``processing``: reply assembled → saved and complete;
- ``total``: context built → complete.

There is no ``context`` stage: no signal is sent before the context is built.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from mpai.conf import mpai_settings

#: The points sampled, in order, and the stage each one ends.
POINTS: tuple[tuple[str, str | None], ...] = (
    ("context_built", None),
    ("api_request_sent", "request"),
    ("api_response_received", "api_wait"),
    ("response_processed", "generation"),
    ("request_complete", "processing"),
)

#: Most turns with samples kept at once; past it the oldest are dropped (a turn that
#: never sends ``request_complete`` must not leak).
MAX_TURNS = 10_000

_STATM = "/proc/self/statm"
_PAGE_BYTES: int = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

_lock = threading.Lock()
_samples: dict[str, dict[str, int]] = {}  # request id → point → resident bytes


def resident_bytes() -> int | None:
    """Return the process's resident memory in bytes (None where it cannot be read)."""
    try:
        with open(_STATM, "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


def sample(trace: Any, point: str) -> None:
    """Record the resident memory (bytes) at ``point`` of the turn of ``trace``."""
    now = resident_bytes()
    if now is None:
        return
    request_id = trace.request_id
    with _lock:
        turn = _samples.get(request_id)
        if turn is None:
            if len(_samples) >= MAX_TURNS:
                _samples.pop(next(iter(_samples)))
            turn = _samples[request_id] = {}
        turn[point] = now


def finish(trace: Any) -> dict[str, float]:
    """Sample ``request_complete``, forget the turn, return its stage deltas (KiB)."""
    sample(trace, "request_complete")
    with _lock:
        turn = _samples.pop(trace.request_id, None)
    return deltas_kib(turn or {})


def deltas_kib(turn: dict[str, int]) -> dict[str, float]:
    """Return stage → change in KiB between the points of ``turn`` (point → bytes)."""
    deltas: dict[str, float] = {}
    previous: int | None = None
    first: int | None = None
    last: int | None = None
    for point, stage in POINTS:
        if point not in turn:
            continue
        value = turn[point]
        if previous is not None and stage is not None:
            deltas[stage] = round((value - previous) / 1024, 1)
        previous = value
        first = value if first is None else first
        last = value
    if first is not None and last is not None and len(deltas):
        deltas["total"] = round((last - first) / 1024, 1)
    return deltas


def pending() -> int:
    """Turns with samples not yet finished (this process)."""
    return len(_samples)


def _receiver(point: str) -> Any:
    def on_point(*, trace: Any, **kwargs: Any) -> None:
        if mpai_settings.MEMORY_PROFILING:
            sample(trace, point)

    on_point.__name__ = on_point.__qualname__ = f"on_{point}"
    return on_point


#: The receivers of the four points before ``request_complete`` (kept referenced:
#: signals hold weak references by default).
RECEIVERS: dict[str, Any] = {point: _receiver(point) for point, _ in POINTS[:-1]}


def connect_memory_receivers() -> None:
    """Connect the receivers of the points before ``request_complete`` (idempotent).

    ``request_complete`` is sampled by :func:`finish`, called from the metrics
    receiver (``mpai.metrics.receivers.on_request_complete``), so the deltas are ready
    when the turn's record is built.
    """
    from mpai import signals

    for point, receiver in RECEIVERS.items():
        getattr(signals, point).connect(receiver, dispatch_uid=f"mpai.metrics.memory.on_{point}")
