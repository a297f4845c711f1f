"""mpai.relay.FrameRelay: frames from a worker thread, bounded in bytes."""

from __future__ import annotations

import asyncio
import json

from mpai.relay import FrameRelay


async def test_frames_arrive_in_order_and_the_final_one_is_marked():
    loop = asyncio.get_running_loop()
    relay = FrameRelay(loop, max_bytes=1 << 20, stall_seconds=5)

    def work():
        for i in range(50):
            relay.put({"type": "chat.delta", "text": f"d{i} "})
        relay.put_final({"type": "chat.completed"})
        relay.finish()

    worker = loop.run_in_executor(None, work)
    received = [(json.loads(text), final) async for text, final in relay.frames()]
    await worker
    assert [frame.get("text") for frame, _ in received[:-1]] == [f"d{i} " for i in range(50)]
    assert received[-1] == ({"type": "chat.completed"}, True)


async def test_a_reader_that_stops_is_given_up_and_the_worker_goes_on():
    loop = asyncio.get_running_loop()
    stalled = asyncio.Event()
    relay = FrameRelay(loop, max_bytes=4096, stall_seconds=0.2, on_stall=stalled.set)
    delta = "x" * 1000

    def work() -> list[bool]:
        return [relay.put({"type": "chat.delta", "text": delta}) for _ in range(200)]

    accepted = await loop.run_in_executor(None, work)  # nobody reads
    await asyncio.wait_for(stalled.wait(), timeout=10)
    assert relay.stalled
    assert accepted.count(True) < 10  # what fits in 4 KiB, then nothing
    assert relay.peak_bytes <= 4096 + len(json.dumps({"type": "chat.delta", "text": delta}))


async def test_a_closed_relay_drops_frames_without_waiting():
    loop = asyncio.get_running_loop()
    relay = FrameRelay(loop, max_bytes=10, stall_seconds=60)
    relay.close()
    accepted = await loop.run_in_executor(
        None, lambda: [relay.put({"type": "chat.delta", "text": "x" * 100}) for _ in range(5)]
    )
    assert accepted == [False] * 5


async def test_deltas_the_loop_has_not_taken_leave_as_one_frame_with_exactly_their_text():
    loop = asyncio.get_running_loop()
    relay = FrameRelay(loop, max_bytes=1 << 20, stall_seconds=5)
    texts = [f"w{i} " for i in range(100)]

    def work() -> None:  # the loop is blocked awaiting this: nothing is taken meanwhile
        for text in texts:
            relay.put_delta(text)
        relay.put_final({"type": "chat.completed"})
        relay.finish()

    await loop.run_in_executor(None, work)
    received = [(json.loads(text), final) async for text, final in relay.frames()]
    assert received == [
        ({"type": "chat.delta", "text": "".join(texts)}, False),
        ({"type": "chat.completed"}, True),
    ]


async def test_a_delta_after_the_loop_took_the_last_ones_is_a_frame_of_its_own():
    loop = asyncio.get_running_loop()
    relay = FrameRelay(loop, max_bytes=1 << 20, stall_seconds=5)
    frames = relay.frames()
    relay.put_delta("Hello")
    assert json.loads((await anext(frames))[0]) == {"type": "chat.delta", "text": "Hello"}
    relay.put_delta(", world")
    relay.finish()
    assert json.loads((await anext(frames))[0]) == {"type": "chat.delta", "text": ", world"}
    assert [item async for item in frames] == []
    # A frame's bytes are held until the reader asks for the next frame (it was sent).
    assert relay.peak_bytes == len("Hello") + len(", world")
