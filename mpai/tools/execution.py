"""Running the model's tool calls: validated, concurrent, bounded in time and size.

:func:`run_tool_calls` takes the ``tool_calls`` of an assistant message (OpenAI Chat
Completions, function calling) and returns one :class:`ToolResult` per call, in the
calls' order; :func:`tool_messages` turns them into the ``tool`` messages of the next
request. Nothing a call does raises: every failure is a result whose content is
``{"error": {"code": "<code>", "message": "<one sentence>"}}``, so the model can
correct its call or tell the user. The codes:

===========================  ==========================================================
``unknown_tool``             no tool of that name is configured and allowed for the user
``invalid_json``             the arguments are not JSON, or too large or deep
                             (``MPAI["MAX_FRAME_BYTES"]``, ``MPAI["MAX_JSON_DEPTH"]``)
``invalid_arguments``        not a JSON object, or not valid against the tool's schema
                             (JSON Schema draft 2020-12, the ``jsonschema`` library)
``timeout``                  the tool ran longer than its timeout (s)
``tool_error``               the tool raised (only the exception's class is shown)
``<ToolError.code>``         the tool raised :class:`~mpai.tools.base.ToolError`
``result_not_serializable``  the result is not JSON (``DjangoJSONEncoder`` applied)
``result_too_large``         the JSON result is over ``MPAI["TOOL_RESULT_MAX_BYTES"]`` bytes
``cancelled``                ``cancel_event`` was set before the call finished
``unavailable``              no thread could be started for the call
===========================  ==========================================================

Calls run in a process-wide pool of reused daemon worker threads, at most
``max_concurrency`` of one run at once. Not a :class:`~concurrent.futures.ThreadPoolExecutor`:
Python cannot stop a thread, so a call past its timeout (or cancelled) is abandoned,
and its worker must neither keep a slot a later call waits for nor keep the process
from exiting, as executor threads (joined at exit) would. The pool therefore counts
only its *idle* workers: a call goes to an idle worker, or, when none is idle (all
busy, or stuck in abandoned calls), to a new worker thread; so a stuck worker never
shrinks the pool, it is simply not counted until its call returns. Then it waits for
the next call again, unless :func:`pool_idle_max` workers already wait (then it ends);
a worker idle for :data:`POOL_IDLE_SECONDS` ends too. An abandoned call's eventual
result is dropped. What a new thread per call gave for free is kept per call: each
call runs in a fresh :class:`contextvars.Context` (no context variable, e.g. Django's
active language or time zone, leaks between calls or users) and the Django database
connections it opened are closed in its worker when it ends. A forked child starts
with an empty pool.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import jsonschema
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.db.backends.signals import connection_created

from mpai.conf import mpai_settings
from mpai.exceptions import InvalidJson
from mpai.jsonlimits import loads_bounded
from mpai.tools.base import Tool, ToolError
from mpai.tools.registry import get_tool, may_use

__all__ = [
    "CANCEL_POLL_SECONDS",
    "POOL_IDLE_SECONDS",
    "WORKER_NAME",
    "ToolResult",
    "pool_idle_max",
    "run_tool_calls",
    "tool_messages",
]

logger = logging.getLogger(__name__)

#: How often (s) a run with a ``cancel_event`` looks at it while calls are running.
CANCEL_POLL_SECONDS = 0.02
#: The most characters of an error message given to the model.
MAX_MESSAGE_CHARS = 500
#: Seconds an idle worker of the pool waits for a call before its thread ends.
POOL_IDLE_SECONDS = 60.0
#: The fewest idle workers the pool may keep (see :func:`pool_idle_max`).
POOL_IDLE_MIN = 8
#: The name of the pool's worker threads.
WORKER_NAME = "mpai-tool-worker"

Status = Literal["ok", "error", "cancelled"]
#: A job of the worker pool: runs, and returns what to call once its worker is idle.
_Job = Callable[[], Callable[[], object] | None]


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call.

    Attributes:
        call_id: the call's ``id`` (the ``tool_call_id`` of its tool message).
        name: the function name the model called.
        status: ``"ok"``, ``"error"`` or ``"cancelled"``.
        content: JSON text of the tool message: the tool's result, or
            ``{"error": {"code": ..., "message": ...}}``.
        duration_ms: milliseconds from the call's start in a worker thread to its
            result, timeout or cancellation; for a call refused before it ran
            (unknown tool, bad arguments) the time its checks took; 0 for a call
            cancelled before it started.
        error_code: the error's code (see the module docstring), None when ``"ok"``.
    """

    call_id: str
    name: str
    status: Status
    content: str
    duration_ms: float
    error_code: str | None = None


@dataclass(eq=False)
class _Call:
    call_id: str
    name: str
    tool: Tool | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 0.0
    started: float | None = None
    result: ToolResult | None = None

    @property
    def deadline(self) -> float:
        """When the call times out (``time.monotonic()`` seconds)."""
        return (self.started or 0.0) + self.timeout_s

    def elapsed_ms(self, now: float | None = None) -> float:
        if self.started is None:
            return 0.0
        return ((now or time.monotonic()) - self.started) * 1000.0

    def error(self, code: str, message: str, status: Status = "error") -> ToolResult:
        return ToolResult(
            self.call_id,
            self.name,
            status,
            error_content(code, message),
            self.elapsed_ms(),
            code,
        )


def error_content(code: str, message: str) -> str:
    """The tool message content of an error: ``{"error": {"code", "message"}}`` as JSON."""
    return json.dumps({"error": {"code": code, "message": message[:MAX_MESSAGE_CHARS]}})


def run_tool_calls(
    user: Any,
    calls: Iterable[Mapping[str, Any]],
    *,
    max_concurrency: int | None = None,
    timeout_s: float | None = None,
    cancel_event: threading.Event | None = None,
) -> list[ToolResult]:
    """Run the model's tool calls for ``user`` and return their results in order.

    Args:
        user: the signed-in user, passed to every tool (never taken from arguments).
        calls: ``{"id", "name", "arguments"}`` mappings, ``arguments`` the JSON text
            the model sent (a dict is taken as already parsed; ``""`` as ``{}``).
            OpenAI's own shape, ``{"id", "type": "function", "function": {"name",
            "arguments"}}``, is accepted too.
        max_concurrency: most calls running at once; None = ``MPAI["TOOL_MAX_CONCURRENCY"]``.
        timeout_s: seconds a call may run when its tool sets no ``timeout_s``; None =
            ``MPAI["TOOL_TIMEOUT_SECONDS"]``. Counted from the call's start, not
            from the time it waited for a slot.
        cancel_event: when set, the run stops waiting: calls not finished are
            ``"cancelled"`` (looked at every :data:`CANCEL_POLL_SECONDS`).

    Returns:
        One :class:`ToolResult` per call, in the order of ``calls``.

    Raises:
        ValueError: ``max_concurrency`` below 1.
        ImproperlyConfigured: ``MPAI["TOOLS"]`` cannot be loaded (see
            :func:`~mpai.tools.registry.configured_tools`). Nothing a call does raises.
    """
    limit = max_concurrency if max_concurrency is not None else mpai_settings.TOOL_MAX_CONCURRENCY
    if limit < 1:
        raise ValueError(f"max_concurrency must be at least 1, not {limit}.")
    default_timeout = float(
        timeout_s if timeout_s is not None else mpai_settings.TOOL_TIMEOUT_SECONDS
    )
    max_bytes = int(mpai_settings.TOOL_RESULT_MAX_BYTES)
    prepared = [_prepare(user, call, default_timeout) for call in calls]
    runnable = deque(call for call in prepared if call.result is None)
    if runnable:
        _run(user, runnable, limit, max_bytes, cancel_event)
    return [call.result for call in prepared if call.result is not None]


def tool_messages(results: Iterable[ToolResult]) -> list[dict[str, Any]]:
    """The ``{"role": "tool", "tool_call_id": ..., "content": ...}`` message of each
    result, to append after the assistant message holding the calls."""
    return [
        {"role": "tool", "tool_call_id": result.call_id, "content": result.content}
        for result in results
    ]


def _prepare(user: Any, raw: Mapping[str, Any], default_timeout: float) -> _Call:
    """Resolve and validate one call; its ``result`` is set when it cannot run."""
    if not isinstance(raw, Mapping):
        call = _Call(call_id="", name="", started=time.monotonic())
        call.result = call.error("unknown_tool", "A tool call must name a tool.")
        return call
    function = raw.get("function")
    source: Mapping[str, Any] = function if isinstance(function, Mapping) else raw
    call = _Call(call_id=str(raw.get("id") or ""), name=str(source.get("name") or ""))
    call.started = time.monotonic()
    tool = get_tool(call.name)
    if tool is None or not may_use(tool, user):
        call.result = call.error("unknown_tool", f"No tool named {call.name!r} is available.")
        return call
    arguments = source.get("arguments")
    if isinstance(arguments, str | bytes) and arguments.strip():
        try:
            arguments = loads_bounded(
                arguments,
                max_bytes=mpai_settings.MAX_FRAME_BYTES,
                max_depth=mpai_settings.MAX_JSON_DEPTH,
                what="arguments text",
            )
        except InvalidJson as exc:
            call.result = call.error("invalid_json", str(exc))
            return call
    elif arguments is None or isinstance(arguments, str | bytes):
        arguments = {}
    if not isinstance(arguments, dict):
        kind = type(arguments).__name__
        message = f"The arguments must be a JSON object, not {kind}."
        call.result = call.error("invalid_arguments", message)
        return call
    problem = _schema_problem(tool, arguments)
    if problem:
        call.result = call.error("invalid_arguments", problem)
        return call
    call.tool, call.arguments, call.started = tool, arguments, None  # started when run
    call.timeout_s = float(tool.timeout_s) if tool.timeout_s is not None else default_timeout
    return call


def _schema_problem(tool: Tool, arguments: dict[str, Any]) -> str | None:
    """Why ``arguments`` do not match ``tool.parameters`` (one sentence), or None."""
    try:
        validator = jsonschema.Draft202012Validator(tool.parameters or {"type": "object"})
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    except jsonschema.exceptions.SchemaError:
        logger.exception("Tool %r has an invalid JSON Schema.", tool.name)
        return "The tool's own schema is invalid; do not call it again."
    if error is None:
        return None
    where = "".join(f"[{part!r}]" for part in error.absolute_path)
    return f"arguments{where}: {error.message}"


@dataclass(eq=False)
class _RunState:
    """What one run shares with its workers (under ``lock``): ``busy``, the calls handed
    to workers whose result is not set; ``queued``, whether calls wait for a slot. A
    worker wakes the run only when it must act: a slot freed for a queued call, or no
    call left running."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)
    busy: int = 0
    queued: bool = False


def _run(
    user: Any,
    pending: deque[_Call],
    limit: int,
    max_bytes: int,
    cancel_event: threading.Event | None,
) -> None:
    """Start calls as slots free up; collect results, timeouts and the cancellation."""
    state = _RunState()
    idle_max = pool_idle_max(limit)
    running: list[_Call] = []
    while pending or running:
        state.wake.clear()
        if cancel_event is not None and cancel_event.is_set():
            break
        now = time.monotonic()
        for call in list(running):
            with state.lock:
                if call.result is None and now >= call.deadline:
                    logger.warning("Tool %r timed out after %.3f s.", call.name, call.timeout_s)
                    call.result = call.error(
                        "timeout", f"The tool did not answer within {call.timeout_s:g} s."
                    )
                    state.busy -= 1
            if call.result is not None:
                running.remove(call)
        while pending and len(running) < limit:
            call = pending.popleft()
            call.started = time.monotonic()
            with state.lock:
                state.busy += 1
            try:
                _pool.submit(partial(_work, user, call, max_bytes, state), idle_max)
            except RuntimeError:  # no more threads: this call fails, the others go on
                logger.exception("Could not start a thread for tool %r.", call.name)
                with state.lock:
                    state.busy -= 1
                    call.result = call.error("unavailable", "The tool could not be started.")
                continue
            running.append(call)
        if not running:
            continue
        with state.lock:
            state.queued = bool(pending)
            if state.busy == 0 or (state.queued and state.busy < len(running)):
                continue  # results came in meanwhile: look again at once
        wait = min(call.deadline for call in running) - time.monotonic()
        if cancel_event is not None:
            wait = min(wait, CANCEL_POLL_SECONDS)
        state.wake.wait(max(wait, 0.0))
    with state.lock:
        for call in [*running, *pending]:
            if call.result is None:
                call.result = call.error("cancelled", "The call was cancelled.", "cancelled")


def _work(user: Any, call: _Call, max_bytes: int, state: _RunState) -> Callable[[], object] | None:
    """One call in a pool worker: run and encode in a fresh context, record (unless
    abandoned), close the worker's database connections; return the run's wake-up when
    the run must act on this result (the pool calls it once this worker is idle)."""
    try:
        status, code, content = contextvars.Context().run(_outcome, user, call, max_bytes)
    finally:
        if getattr(_connected, "since_call", False):  # else there is nothing to close
            _connected.since_call = False
            try:
                connections.close_all()
            except Exception:
                logger.exception("Closing the database connections of tool %r failed.", call.name)
    with state.lock:
        if call.result is not None:
            return None  # abandoned: timed out or cancelled
        call.result = ToolResult(call.call_id, call.name, status, content, call.elapsed_ms(), code)
        state.busy -= 1
        if state.busy and not state.queued:
            return None  # the run waits for the other calls
    return state.wake.set


def pool_idle_max(limit: int) -> int:
    """How many idle workers the pool keeps at most after a run of ``limit`` concurrent
    calls: ``max(POOL_IDLE_MIN, 2 × MPAI["TOOL_MAX_CONCURRENCY"], limit)`` (a count)."""
    return max(POOL_IDLE_MIN, 2 * int(mpai_settings.TOOL_MAX_CONCURRENCY), limit)


class _ToolWorkers:
    """The process-wide pool of tool-call worker threads (see the module docstring).

    ``_idle`` counts the workers waiting for a job that no :meth:`submit` has claimed;
    a submit claims one (and queues its job) or starts a new thread. Busy and stuck
    workers are not counted anywhere: the pool cannot run short of them. A job returns
    what to call once its worker is counted idle again (the run's wake-up), so a run
    that starts its next calls at once finds that worker idle.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._idle = 0
        self._idle_max = POOL_IDLE_MIN
        #: Worker threads started so far (tests and benchmarks read it).
        self.started = 0

    def submit(self, job: _Job, idle_max: int) -> None:
        """Run ``job`` in an idle worker, or in a new one when none is idle.

        Raises:
            RuntimeError: no idle worker and no thread can be started.
        """
        with self._lock:
            self._idle_max = idle_max
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)  # inside the lock: see _next
                return
            self.started += 1
        thread = threading.Thread(target=self._serve, args=(job,), name=WORKER_NAME, daemon=True)
        try:
            thread.start()
        except RuntimeError:
            with self._lock:
                self.started -= 1
            raise

    def _serve(self, job: _Job | None) -> None:
        while job is not None:
            done = None
            try:
                done = job()
            except Exception:  # _work catches what a tool raises: this is a bug
                logger.exception("A tool-call job failed.")
            job = self._next(done)

    def _next(self, done: Callable[[], object] | None) -> _Job | None:
        """Count this worker idle (unless enough are), call ``done``, then return the
        next job, or None when the worker should end (enough idle, or idle too long)."""
        with self._lock:
            keep = self._idle < self._idle_max
            if keep:
                self._idle += 1
        if done is not None:
            done()
        if not keep:
            return None
        try:
            return self._jobs.get(timeout=POOL_IDLE_SECONDS)
        except queue.Empty:
            with self._lock:  # a submit may have claimed this worker meanwhile
                try:
                    return self._jobs.get_nowait()
                except queue.Empty:
                    self._idle -= 1
                    return None


_pool = _ToolWorkers()
#: ``since_call``: whether this thread opened a database connection since its last call.
_connected = threading.local()


def _note_connection(**kwargs: Any) -> None:
    """``connection_created`` receiver: a worker closes its connections only when it
    opened one (closing none still costs a look at every alias)."""
    _connected.since_call = True


def _new_pool_after_fork() -> None:
    global _pool
    _pool = _ToolWorkers()  # the parent's workers do not exist in the child


os.register_at_fork(after_in_child=_new_pool_after_fork)
connection_created.connect(_note_connection, dispatch_uid="mpai.tools.execution.connected")


def _outcome(user: Any, call: _Call, max_bytes: int) -> tuple[Status, str | None, str]:
    """``(status, error code, content)`` of running ``call`` and encoding its result."""
    assert call.tool is not None
    try:
        value = call.tool.run(user, **call.arguments)
    except ToolError as exc:
        return "error", exc.code, error_content(exc.code, exc.message)
    except Exception as exc:
        logger.exception("Tool %r raised.", call.name)
        message = f"The tool failed ({type(exc).__name__}); try other arguments or another way."
        return "error", "tool_error", error_content("tool_error", message)
    try:
        content = json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        logger.exception("The result of tool %r is not JSON.", call.name)
        message = f"The tool's result is not JSON ({type(exc).__name__})."
        return "error", "result_not_serializable", error_content("result_not_serializable", message)
    size = len(content.encode("utf-8"))
    if size > max_bytes:
        message = (
            f"The result is {size} bytes, more than the {max_bytes} allowed; "
            "ask for less (a narrower query or a smaller limit)."
        )
        return "error", "result_too_large", error_content("result_too_large", message)
    return "ok", None, content
