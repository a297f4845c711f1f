"""Benchmark suite ``ops``: the key operations of a chat turn, one by one.

Each operation is called ``iterations`` times (after 20 unmeasured warm-up calls) and
reported as mean, min, max, p50, p95 and p99 in µs (``time.perf_counter_ns``), plus the
memory it allocates: ``peak_bytes``, the largest ``tracemalloc`` peak of one call above
the memory traced before it, over a separate short pass of 50 calls run after the timed
pass, so tracing (which slows every allocation) never distorts the times
(https://docs.python.org/3/library/tracemalloc.html). The operations:

- ``validate_content``: :func:`mpai.chat.validation.validate_content` of a realistic
  multi-line user message (about 600 characters);
- ``context build``: :class:`mpai.chat.context.ContextBuilder` on a full live-memory
  window (45 messages, packaged real replies), the user-info section served from mpai's
  cache as in steady state; no database (as the ``context`` suite);
- ``memory turn (append/end_turn)``: one turn of :class:`mpai.chat.memory.ConversationMemory`
  (append the question and the reply, ``end_turn``), run past its thresholds so
  about one call in 22 trims the window;
- ``final frame + json.dumps``: :func:`mpai.frames.final_frame` of a completed turn and
  ``json.dumps`` of it (what the consumer's ``send_json`` sends);
- ``history query [:20] (database)``: ``list(message_history(user=...)[:20])`` for a
  user with 200 messages, created for the run and deleted after it. It needs the
  database: it is skipped, with the reason printed, when the database is unreachable;
- ``signal dispatch per turn``: the five measurement signals of :mod:`mpai.signals`
  (``context_built``, ``api_request_sent``, ``api_response_received``,
  ``response_processed``, ``request_complete``) sent once each through
  :func:`mpai.chat.pipeline.send_robust`, with whatever receivers are connected (mpai's
  own: the slow-operation log and the turn-metrics recorder). The metrics recorder is
  given a private queue for the run, so its cost on the streaming thread (building the
  record and queueing it) is measured but no record is stored;
- ``rate-limit check (Redis)``: an allowed :class:`RedisTokenBucket` check as the
  ``ratelimit`` suite does it, under a unique key prefix deleted after the run; skipped,
  with the reason printed, when Redis (``--redis-url`` or settings) does not answer.

Run with ``python manage.py mpai_benchmark ops [--iterations N]`` (default 2000).
"""

from __future__ import annotations

import gc
import json
import os
import queue
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from mpai.benchmarks import Writer, default_redis_url
from mpai.benchmarks._results import progress_bar
from mpai.benchmarks._stats import summary_row

SUITE = "ops"
DEFAULT_ITERATIONS = 2000
WARMUP = 20
#: Calls of the tracemalloc pass (after the timed pass).
MEMORY_CALLS = 50
#: Messages of the history query's user.
HISTORY_MESSAGES = 200
#: Progress-bar updates every this many measured calls (never inside a timed call).
TICK = 100

MESSAGE = (
    "Hi! I ordered the annual plan last week and was charged twice on my card.\n"
    "Could you check what happened and tell me how long a refund usually takes?\n"
    "The order number is 10442-B, and the second charge shows as pending. "
    "I also wanted to ask whether the plan includes the premium courses or if "
    "those are billed separately — the pricing page wasn't clear to me.\n\n"
    "Thanks in advance, and sorry for the long message: I'd rather sort it out "
    "before the pending charge goes through. Is there anything I should do on my "
    "side, like cancelling the duplicate order, or will you take care of it?"
)


@dataclass
class Operation:
    name: str
    call: Callable[[], object]
    needs_database: bool = False


def _time_samples(call: Callable[[], object], iterations: int, bar: Any) -> list[float]:
    for _ in range(WARMUP):
        call()
    samples = []
    for index in range(iterations):
        start = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - start) / 1000)
        if (index + 1) % TICK == 0:
            bar.update(TICK)
    bar.update(iterations % TICK)
    return samples


def _peak_bytes(call: Callable[[], object], calls: int) -> int:
    """The largest allocation peak (bytes) of one call, above what was traced before it."""
    tracemalloc.start()
    try:
        peak = 0
        for _ in range(calls):
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            call()
            _, high = tracemalloc.get_traced_memory()
            peak = max(peak, high - before)
        return peak
    finally:
        tracemalloc.stop()


def _validation() -> Operation:
    from mpai.chat.validation import validate_content

    return Operation("validate_content", lambda: validate_content(MESSAGE))


@contextmanager
def _context_build() -> Iterator[Operation]:
    from mpai.benchmarks.context import conversation
    from mpai.chat.context import ContextBuilder, ContextRequest
    from mpai.chat.memory import ConversationMemory
    from mpai.chat.profile import delete_user_profile, store_user_profile

    user = SimpleNamespace(pk=f"bench-{uuid.uuid4().hex}")
    store_user_profile(user, {"username": "bench", "name": "Bench User"})
    window = ConversationMemory().safe_size
    history = conversation(long=True)[:window]
    request = ContextRequest(user=user, conversation=None, query="How do I get a refund?")
    builder = ContextBuilder()
    try:
        yield Operation("context build", lambda: builder.build(request, history))
    finally:
        delete_user_profile(user)


def _memory_turn() -> Operation:
    from mpai.chat.memory import ConversationMemory

    memory = ConversationMemory(max_pairs=20)
    reply = "Refunds take 5 to 10 business days. " * 6

    def turn() -> None:
        memory.append("user", MESSAGE)
        memory.append("assistant", reply)
        memory.end_turn()

    return Operation("memory turn (append/end_turn)", turn)


def _completed_result() -> Any:
    from mpai.chat.trace import Trace
    from mpai.chat.turns import TurnResult
    from mpai.models import Message
    from mpai.providers.base import Usage

    message = Message(
        id=4242,
        role=Message.Role.ASSISTANT,
        content="Refunds take 5 to 10 business days.",
        model="offline-1",
        prompt_tokens=812,
        completion_tokens=164,
        finish_reason="stop",
    )
    trace = Trace()
    for point in ("context_built", "api_request_sent", "api_response_received"):
        trace.mark(point)
    for point in ("first_delta", "last_delta", "response_processed", "saved"):
        trace.mark(point)
    trace.mark("request_complete")
    return TurnResult(
        message=message,
        status="complete",
        finish_reason="stop",
        usage=Usage(prompt_tokens=812, completion_tokens=164, total_tokens=976),
        cached=False,
        replayed=False,
        timings_ms=trace.timings_ms(),
    ), trace


def _final_frame() -> Operation:
    from mpai.frames import final_frame

    result, _ = _completed_result()
    return Operation("final frame + json.dumps", lambda: json.dumps(final_frame(result)))


@contextmanager
def _history_query() -> Iterator[Operation]:
    from django.contrib.auth import get_user_model

    from mpai.chat.history import message_history
    from mpai.models import Conversation, Message

    user = get_user_model()._default_manager.create_user(
        username=f"mpai-bench-{uuid.uuid4().hex[:12]}"
    )
    try:
        conversations = [
            Conversation.objects.create(owner=user, title=f"bench {n}") for n in range(10)
        ]
        Message.objects.bulk_create(
            Message(
                conversation=conversations[i % len(conversations)],
                owner=user,
                role=Message.Role.USER if i % 2 == 0 else Message.Role.ASSISTANT,
                content=f"message {i}: " + MESSAGE[: 80 + i % 200],
            )
            for i in range(HISTORY_MESSAGES)
        )
        yield Operation(
            "history query [:20] (database)",
            lambda: list(message_history(user=user)[:20]),
            needs_database=True,
        )
    finally:
        user.delete()  # cascades to its conversations and messages


@contextmanager
def _signal_dispatch() -> Iterator[tuple[Operation, list[str]]]:
    from mpai import signals
    from mpai.chat.pipeline import send_robust
    from mpai.metrics import receivers as metrics_receivers
    from mpai.providers import ChatRequest

    result, trace = _completed_result()
    user = SimpleNamespace(pk=0, username="bench")
    conversation = SimpleNamespace(pk=0)
    common = {"user": user, "conversation": conversation}
    messages = [{"role": "user", "content": MESSAGE}]
    request = ChatRequest(model="offline-1", messages=messages)
    sent = (
        signals.context_built,
        signals.api_request_sent,
        signals.api_response_received,
        signals.response_processed,
        signals.request_complete,
    )
    names = [
        f"{name}: {len(signal.receivers)}"
        for name, signal in zip(
            (
                "context_built",
                "api_request_sent",
                "api_response_received",
                "response_processed",
                "request_complete",
            ),
            sent,
            strict=True,
        )
    ]

    def turn() -> None:
        send_robust(
            signals.context_built, trace=trace, messages=messages, model="offline-1", **common
        )
        send_robust(signals.api_request_sent, trace=trace, request=request, **common)
        send_robust(signals.api_response_received, trace=trace, attempts=1, **common)
        send_robust(
            signals.response_processed,
            trace=trace,
            text=result.message.content,
            finish_reason="stop",
            usage=result.usage,
            **common,
        )
        send_robust(
            signals.request_complete,
            trace=trace,
            message=result.message,
            status=result.status,
            error_code=None,
            timings_ms=result.timings_ms,
            **common,
        )

    # The recorder's queue is swapped for a private one nobody reads (unbounded, so the
    # run never takes the "queue full" path): queued as in a turn, stored never.
    saved = (metrics_receivers._queue, metrics_receivers._pid)
    private: queue.Queue[Any] = queue.Queue()
    metrics_receivers._queue, metrics_receivers._pid = private, os.getpid()
    try:
        yield Operation("signal dispatch per turn (5 signals)", turn), names
    finally:
        metrics_receivers._queue, metrics_receivers._pid = saved


@contextmanager
def _rate_limit(redis_url: str, iterations: int) -> Iterator[Operation | str]:
    """Yield the check, or the reason it is skipped."""
    from redis import Redis

    from mpai.chat.ratelimit.redis_bucket import RedisTokenBucket

    client = Redis.from_url(
        redis_url, max_connections=1, socket_connect_timeout=0.5, socket_timeout=0.5
    )
    prefix = f"mpai:rl:bench:{uuid.uuid4().hex}:"
    try:
        try:
            client.ping()
        except Exception as exc:
            yield f"rate-limit check skipped: Redis at {redis_url} did not answer ({exc})"
            return
        capacity = iterations + WARMUP + MEMORY_CALLS + 1  # never runs dry: the allowed path
        bucket = RedisTokenBucket(client, capacity=capacity, refill_rate=1.0, key_prefix=prefix)
        yield Operation("rate-limit check (Redis)", lambda: bucket.check("allowing"))
    finally:
        with suppress(Exception):  # only this run's bucket; never a flush
            client.delete(prefix + "allowing")
        client.close()


def _database_reason() -> str | None:
    from django.db import connection

    try:
        connection.ensure_connection()
    except Exception as exc:
        return f"history query skipped: the database is unreachable ({exc})"
    return None


def run(stdout: Writer, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Measure every operation of the module docstring; print a table, return the rows.

    Args:
        options: ``iterations`` (int or None: 2000) per operation, ``redis_url`` (str or
            None: :func:`mpai.benchmarks.default_redis_url`), ``progress`` (bool,
            default True: a tqdm bar on stderr when it is a TTY).

    Returns:
        One :func:`mpai.benchmarks._stats.summary_row` per measured operation (µs,
        ``peak_bytes`` in bytes).

    Raises:
        ValueError: ``iterations`` < 1.
    """
    iterations = int(options.get("iterations") or DEFAULT_ITERATIONS)
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    redis_url = options.get("redis_url") or default_redis_url()
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with ExitStack() as stack:
        operations = [
            _validation(),
            stack.enter_context(_context_build()),
            _memory_turn(),
            _final_frame(),
        ]
        database_reason = _database_reason()
        if database_reason is None:
            operations.append(stack.enter_context(_history_query()))
        else:
            skipped.append(database_reason)
        signal_op, receivers = stack.enter_context(_signal_dispatch())
        operations.append(signal_op)
        rate_limit = stack.enter_context(_rate_limit(redis_url, iterations))
        if isinstance(rate_limit, str):
            skipped.append(rate_limit)
        else:
            operations.append(rate_limit)
        bar = stack.enter_context(
            closing(progress_bar(options, total=iterations * len(operations), desc="ops"))
        )
        for operation in operations:
            bar.set_postfix_str(operation.name, refresh=False)
            gc.collect()
            samples = _time_samples(operation.call, iterations, bar)
            peak = _peak_bytes(operation.call, min(MEMORY_CALLS, iterations))
            rows.append(summary_row(SUITE, operation.name, samples, peak_bytes=peak))
    _report(stdout, rows, iterations, skipped, receivers)
    return rows


def _report(
    stdout: Writer,
    rows: list[dict[str, Any]],
    iterations: int,
    skipped: list[str],
    receivers: list[str],
) -> None:
    stdout.write(
        f"key operations, {iterations} iterations each (µs; peak bytes from a separate "
        f"tracemalloc pass of {min(MEMORY_CALLS, iterations)} calls)\n"
    )
    stdout.write(
        f"{'operation':<38}{'mean':>9}{'min':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>10}"
        f"{'peak B':>9}\n"
    )
    for row in rows:
        stdout.write(
            f"{row['operation']:<38}{row['mean']:>9.1f}{row['min']:>9.1f}{row['p50']:>9.1f}"
            f"{row['p95']:>9.1f}{row['p99']:>9.1f}{row['max']:>10.1f}{row['peak_bytes']:>9}\n"
        )
    stdout.write(f"receivers connected per signal: {', '.join(receivers)}\n")
    for reason in skipped:
        stdout.write(f"{reason}\n")
