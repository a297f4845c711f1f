"""Benchmark suite ``turn``: a whole chat turn through the pipeline against its provider.

One process, the offline provider with no pacing and a fixed 200-delta reply, the
response cache and the rate limit off, on the project's database (a user and its
conversations are created and deleted again). Measured in one run:

- the provider alone: time to its first chunk, and cost per chunk (µs);
- mpai's turn: time from the call to the first event (``Started``: validated and
  saved) and to the first delta, and cost per delta (µs, the time between consecutive
  deltas, provider included);
- the provider's deltas relayed as the websocket relays them (a worker thread, the
  frame relay, which merges deltas the loop has not sent yet, the consumer's ``send``
  on an event loop), against the floor consumer, a bare Channels consumer handing
  each chunk to the loop and ``send_json``-ing it: µs per delta, start to last frame;
- one ``AsyncJsonWebsocketConsumer.send_json`` of a delta frame into a no-op ``send``
  (µs);
- CPU per turn (ms of this process's CPU, ``time.process_time``): mpai's relayed turn
  against the floor consumer, which streams the same provider's deltas from a worker
  thread to ``send_json`` on the loop with nothing else (no database, no cache), and
  the database statements of one turn.

Run with ``python manage.py mpai_benchmark turn [--iterations N]`` (turns, default 50).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import override_settings

from mpai.benchmarks import Writer
from mpai.benchmarks._stats import median_p99, nearest_rank, summary_row
from mpai.chat.pipeline import ChatPipeline
from mpai.chat.turns import Delta
from mpai.providers import ChatRequest
from mpai.providers.offline import OfflineProvider

DEFAULT_ITERATIONS = 50
#: Quota limits that never refuse (``MPAI["QUOTAS"]``).
UNLIMITED = {"messages_per_day": None, "tokens_per_day": None, "tokens_per_month": None}
DELTAS = 200


def _provider() -> OfflineProvider:
    reply = "".join(f"w{i} " for i in range(DELTAS))
    return OfflineProvider(first_token_ms=0, tokens_per_second=0, reply=reply)


def _provider_alone(provider: OfflineProvider) -> tuple[float, list[float]]:
    """Return (µs to the first chunk, µs per chunk) of one stream."""
    request = ChatRequest(model="offline-1", messages=[{"role": "user", "content": "hi"}])
    start = time.perf_counter_ns()
    stamps = [time.perf_counter_ns() for chunk in provider.open_stream(request) if chunk.text]
    return (stamps[0] - start) / 1000, _gaps(stamps)


def _gaps(stamps: list[int]) -> list[float]:
    return [(b - a) / 1000 for a, b in itertools.pairwise(stamps)]


def _turn(pipeline: ChatPipeline, user: Any) -> tuple[float, float, list[float]]:
    """Return (µs to the first event, µs to the first delta, µs per delta) of one turn."""
    start = time.perf_counter_ns()
    stamps: list[int] = []
    first_event = 0
    for event in pipeline.stream(user=user, content="Tell me a story", use_cache=False):
        now = time.perf_counter_ns()
        if not first_event:
            first_event = now
        if isinstance(event, Delta):
            stamps.append(now)
    return (first_event - start) / 1000, (stamps[0] - start) / 1000, _gaps(stamps)


def _null_consumer() -> Any:
    from channels.generic.websocket import AsyncJsonWebsocketConsumer

    consumer = AsyncJsonWebsocketConsumer()

    async def nothing(message: Any) -> None:
        return None

    consumer.base_send = nothing
    return consumer


def _relayed_turn(pipeline: ChatPipeline, user: Any) -> int:
    """Relay one turn as the websocket does: the turn in a worker thread, frames through
    :class:`mpai.relay.FrameRelay` to a consumer's ``send`` on the event loop (into a
    no-op ``send``); return the delta frames sent (the relay merges deltas the loop
    has not taken yet, so they may be fewer than the deltas)."""
    from mpai.exceptions import MpaiError
    from mpai.frames import error_frame, frame_for
    from mpai.relay import FrameRelay, relay_events

    async def relay_one() -> int:
        loop = asyncio.get_running_loop()
        consumer = _null_consumer()
        relay = FrameRelay(loop, max_bytes=256 * 1024, stall_seconds=15)

        def work() -> None:
            try:
                try:
                    events = pipeline.stream(user=user, content="Tell me a story", use_cache=False)
                except MpaiError as exc:  # refused: end the relay, then fail the run
                    relay.put_refusal(error_frame(exc), exc)
                    relay.finish()
                    raise
                relay_events(events, relay, frame_for, error_frame=error_frame(MpaiError()))
            finally:
                connection.close()  # back to the pool: this thread ends with the loop

        worker = loop.run_in_executor(None, work)
        frames = 0
        async for text, _final in relay.frames():
            await consumer.send(text_data=text)
            frames += 1
        await worker
        return frames - 2  # chat.started and the final frame

    return asyncio.run(relay_one())


def _stream_to_consumer(provider: OfflineProvider, *, relayed: bool) -> float:
    """Stream the provider's deltas from a worker thread to ``send`` on the loop; return
    µs per delta (from the start to the last frame sent, over the deltas).

    ``relayed``: through :class:`mpai.relay.FrameRelay` as mpai does; else the floor, a
    bare Channels consumer (each chunk handed to the loop, then ``send_json``).
    """
    from mpai.relay import FrameRelay

    request = ChatRequest(model="offline-1", messages=[{"role": "user", "content": "hi"}])

    async def stream_one() -> float:
        loop = asyncio.get_running_loop()
        consumer = _null_consumer()
        start = time.perf_counter_ns()
        if relayed:
            relay = FrameRelay(loop, max_bytes=256 * 1024, stall_seconds=15)

            def work() -> None:
                for chunk in provider.open_stream(request):
                    if chunk.text:
                        relay.put_delta(chunk.text)
                relay.finish()

            worker = loop.run_in_executor(None, work)
            async for frame, _final in relay.frames():
                await consumer.send(text_data=frame)
        else:
            queue: asyncio.Queue[str | None] = asyncio.Queue()

            def work() -> None:
                for chunk in provider.open_stream(request):
                    if chunk.text:
                        loop.call_soon_threadsafe(queue.put_nowait, chunk.text)
                loop.call_soon_threadsafe(queue.put_nowait, None)

            worker = loop.run_in_executor(None, work)
            while (text := await queue.get()) is not None:
                await consumer.send_json({"type": "chat.delta", "text": text})
        elapsed = time.perf_counter_ns() - start
        await worker
        return elapsed / 1000 / DELTAS

    return asyncio.run(stream_one())


def _cpu_ms_per_turn(turn: Any, turns: int) -> float:
    start = time.process_time()
    for _ in range(turns):
        turn()
    return (time.process_time() - start) * 1000 / turns


def _statements_per_turn(pipeline: ChatPipeline, user: Any) -> int:
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        _turn(pipeline, user)
    return len(queries)


def _send_json_floor(iterations: int) -> list[float]:
    async def measure() -> list[float]:
        consumer = _null_consumer()
        frame = {"type": "chat.delta", "text": "w1 "}
        samples = []
        for _ in range(iterations):
            start = time.perf_counter_ns()
            await consumer.send_json(frame)
            samples.append((time.perf_counter_ns() - start) / 1000)
        return samples

    return sorted(asyncio.run(measure()))


def run(stdout: Writer, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Print the figures of the module docstring, and their ratios; return one
    :func:`~mpai.benchmarks._stats.summary_row` per µs figure of the table."""
    iterations = int(options.get("iterations") or DEFAULT_ITERATIONS)
    # Neither the rate limit nor the site's quotas may refuse a benchmark's turns.
    mpai_options = {
        **getattr(settings, "MPAI", {}),
        "RATE_LIMIT": {"ENABLED": False},
        "QUOTAS": {"default": UNLIMITED},
    }
    provider = _provider()
    user = get_user_model()._default_manager.create_user(
        username=f"mpai-bench-{uuid.uuid4().hex[:12]}"
    )
    try:
        with override_settings(MPAI=mpai_options):
            pipeline = ChatPipeline(provider)
            for _ in range(3):  # warm-up: imports, estimator memo, connections
                _turn(pipeline, user)
                _provider_alone(provider)
            alone_first, alone_gaps, turn_first, turn_delta, turn_gaps = [], [], [], [], []
            relayed: list[float] = []
            delta_frames: list[int] = []
            floor_stream: list[float] = []
            for _ in range(iterations):
                first, gaps = _provider_alone(provider)
                alone_first.append(first)
                alone_gaps += gaps
                event, delta, gaps = _turn(pipeline, user)
                turn_first.append(event)
                turn_delta.append(delta)
                turn_gaps += gaps
                delta_frames.append(_relayed_turn(pipeline, user))
                relayed.append(_stream_to_consumer(provider, relayed=True))
                floor_stream.append(_stream_to_consumer(provider, relayed=False))
            cpu_turns = max(iterations // 2, 5)
            floor_cpu = _cpu_ms_per_turn(
                lambda: _stream_to_consumer(provider, relayed=False), cpu_turns
            )
            mpai_cpu = _cpu_ms_per_turn(lambda: _relayed_turn(pipeline, user), cpu_turns)
            statements = _statements_per_turn(pipeline, user)
    finally:
        user.delete()
    floor = _send_json_floor(iterations * DELTAS)
    rows = [
        ("provider alone: first chunk", alone_first),
        ("provider alone: per chunk", alone_gaps),
        ("mpai turn: first event (Started)", turn_first),
        ("mpai turn: first delta", turn_delta),
        ("mpai turn: per delta", turn_gaps),
        ("relay alone: per delta", relayed),
        ("floor consumer: per delta", floor_stream),
        ("send_json floor: per frame", floor),
    ]
    stdout.write(
        f"one chat turn, {DELTAS}-delta reply, offline provider unpaced, {iterations} turns (µs)\n"
    )
    stdout.write(f"{'figure':<36}{'median':>10}{'p99':>10}\n")
    medians = {}
    for name, samples in rows:
        samples.sort()
        median, p99 = median_p99(samples)
        medians[name] = median
        stdout.write(f"{name:<36}{median:>10.1f}{p99:>10.1f}\n")
    per_delta = medians["mpai turn: per delta"]
    overhead = per_delta - medians["provider alone: per chunk"]
    stdout.write(
        f"per delta, mpai / provider alone: {per_delta / medians['provider alone: per chunk']:.2f}x"
        f"; mpai's own cost per delta {overhead:.1f} µs = "
        f"{overhead / medians['send_json floor: per frame']:.2f}x a send_json\n"
    )
    stdout.write(
        f"relay per delta / floor consumer per delta: "
        f"{medians['relay alone: per delta'] / medians['floor consumer: per delta']:.2f}x; "
        f"/ send_json: "
        f"{medians['relay alone: per delta'] / medians['send_json floor: per frame']:.2f}x"
        f" (p99 {nearest_rank(sorted(relayed), 0.99):.1f} µs)\n"
    )
    stdout.write(
        f"CPU per turn ({DELTAS} deltas): mpai relayed {mpai_cpu:.2f} ms, floor consumer "
        f"{floor_cpu:.2f} ms: {mpai_cpu / floor_cpu:.2f}x; database statements per turn "
        f"{statements}; delta frames per relayed turn (merged) median "
        f"{sorted(delta_frames)[len(delta_frames) // 2]} of {DELTAS} deltas\n"
    )
    return [summary_row("turn", name, samples) for name, samples in rows]
