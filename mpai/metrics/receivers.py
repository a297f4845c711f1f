"""The ``request_complete`` receiver that feeds the turn metrics (and ``tool_called``'s).

:func:`on_request_complete` builds a :class:`~mpai.metrics.record.TurnRecord` and puts
it on a bounded queue; one daemon thread per process takes records off it and
stores them (:func:`mpai.metrics.storage.record`) and hands them to
``mpai.metrics.prometheus.observe_turn`` when that exists. So recording never runs on
the thread that streams a reply and never delays a delta; when the queue is full
(the store far behind) the record is dropped and counted in :data:`dropped`.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from mpai.conf import mpai_settings
from mpai.metrics import memory
from mpai.metrics.record import STAGES, TurnRecord

logger = logging.getLogger("mpai.metrics")

#: Most records waiting for the recorder thread; past it new ones are dropped.
QUEUE_SIZE = 10_000

#: Records dropped because the queue was full (this process).
dropped = 0

_lock = threading.Lock()
_queue: queue.Queue[TurnRecord] | None = None
_pid: int | None = None
_observe: Callable[[TurnRecord], Any] | bool | None = False  # False: not looked up yet


def outcome_of(status: str, error_code: str | None) -> str:
    """Return a TurnRecord outcome: ``complete``, ``cancelled``, or the error code."""
    if status == "error":
        return error_code or "error"
    return status


def record_of(
    *,
    trace: Any,
    message: Any,
    status: str,
    error_code: str | None,
    timings_ms: dict[str, float],
    memory_kib: dict[str, float] | None = None,
) -> TurnRecord:
    """Build the TurnRecord of one ``request_complete`` (timings in ms, memory in KiB)."""
    return TurnRecord(
        timings_ms={
            stage: float(timings_ms[stage]) for stage in STAGES if stage in (timings_ms or {})
        },
        outcome=outcome_of(status, error_code),
        model=getattr(message, "model", "") or "",
        cached=bool(getattr(trace, "cached", False)),
        replayed=bool(getattr(trace, "replayed", False)),
        input_tokens=getattr(message, "prompt_tokens", None),
        output_tokens=getattr(message, "completion_tokens", None),
        ended_at=time.time(),
        memory_kib=dict(memory_kib or {}),
    )


def on_request_complete(
    *,
    trace: Any,
    message: Any,
    status: str,
    error_code: str | None = None,
    timings_ms: dict[str, float],
    **kwargs: Any,
) -> None:
    """Receiver of ``request_complete``: queue the turn's record (never blocks).

    While ``MPAI["MEMORY_PROFILING"]``, the turn's memory deltas (KiB,
    :mod:`mpai.metrics.memory`) go in ``memory_kib``; its samples are dropped even when
    metrics are off.
    """
    memory_kib: dict[str, float] = {}
    if mpai_settings.MEMORY_PROFILING:
        try:
            memory_kib = memory.finish(trace)
        except Exception:
            logger.exception("mpai metrics: could not read the turn's memory deltas")
    if not mpai_settings.METRICS_ENABLED:
        return
    try:
        turn = record_of(
            trace=trace,
            message=message,
            status=status,
            error_code=error_code,
            timings_ms=timings_ms,
            memory_kib=memory_kib,
        )
    except Exception:
        logger.exception("mpai metrics: could not build the turn record")
        return
    submit(turn)


def on_tool_called(
    *,
    name: str,
    status: str,
    duration_ms: float,
    error_code: str | None = None,
    **kwargs: Any,
) -> None:
    """Receiver of ``tool_called``: count the call and its duration in the Prometheus
    metrics (``mpai.metrics.prometheus.observe_tool_call``, when it exists), unless
    ``MPAI["METRICS_ENABLED"]`` is off. Cheap (a counter and a histogram), so it runs
    in the turn's thread, not through the recorder queue."""
    if not mpai_settings.METRICS_ENABLED:
        return
    try:
        module = importlib.import_module("mpai.metrics.prometheus")
    except ImportError:
        return
    observe = getattr(module, "observe_tool_call", None)
    if callable(observe):
        observe(name, status, duration_ms, error_code)


def submit(turn: TurnRecord) -> bool:
    """Queue ``turn`` for the recorder thread; False (and counted) when the queue is full."""
    global dropped
    try:
        _recorder_queue().put_nowait(turn)
        return True
    except queue.Full:
        with _lock:
            dropped += 1
        return False


def _recorder_queue() -> queue.Queue[TurnRecord]:
    """Return this process's queue, starting its thread on first use (and after a fork)."""
    global _queue, _pid
    pid = os.getpid()
    if _queue is not None and _pid == pid:
        return _queue
    with _lock:
        if _queue is None or _pid != pid:
            new: queue.Queue[TurnRecord] = queue.Queue(maxsize=QUEUE_SIZE)
            threading.Thread(
                target=_run, args=(new,), name="mpai-metrics-recorder", daemon=True
            ).start()
            _queue, _pid = new, pid
        return _queue


def _observer() -> Callable[[TurnRecord], Any] | None:
    """Return ``mpai.metrics.prometheus.observe_turn`` if it exists (looked up once)."""
    global _observe
    if _observe is False:
        try:
            module = importlib.import_module("mpai.metrics.prometheus")
        except ImportError:
            _observe = None
        else:
            found = getattr(module, "observe_turn", None)
            _observe = found if callable(found) else None
    return _observe if callable(_observe) else None


def _run(work: queue.Queue[TurnRecord]) -> None:
    from django.db import close_old_connections

    from mpai.metrics import storage

    while True:
        turn = work.get()
        try:
            storage.record(turn)  # never raises
            observe = _observer()
            if observe is not None:
                try:
                    observe(turn)
                except Exception:
                    logger.exception("mpai metrics: observe_turn failed")
        finally:
            if work.empty():
                # As after a request: a connection past CONN_MAX_AGE (0 by default) is
                # closed, so an idle recorder holds no database connection.
                try:
                    close_old_connections()
                except Exception:
                    logger.debug("mpai metrics: closing connections failed", exc_info=True)
            work.task_done()


def flush(timeout: float = 5.0) -> bool:
    """Wait up to ``timeout`` s until every queued record is stored; True if drained."""
    work = _queue
    if work is None or _pid != os.getpid():
        return True
    deadline = time.monotonic() + timeout
    with work.all_tasks_done:
        while work.unfinished_tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            work.all_tasks_done.wait(remaining)
    return True


def connect() -> None:
    """Connect :func:`on_request_complete` and :func:`on_tool_called` (idempotent:
    one dispatch_uid each)."""
    from mpai import signals

    signals.request_complete.connect(
        on_request_complete, dispatch_uid="mpai.metrics.receivers.on_request_complete"
    )
    signals.tool_called.connect(
        on_tool_called, dispatch_uid="mpai.metrics.receivers.on_tool_called"
    )
