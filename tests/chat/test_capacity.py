"""Stream slots: a ceiling on concurrent streams, a bounded wait, then ``overloaded``."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mpai.chat.capacity import StreamSlots, stream_slots
from mpai.exceptions import Overloaded
from tests.waiting import wait_until


def slots(limit: int = 1, queue: int = 4, wait_seconds: float = 5.0) -> StreamSlots:
    return StreamSlots(limit=limit, queue=queue, wait_seconds=wait_seconds)


def test_slots_are_taken_up_to_the_limit_and_come_back_on_release() -> None:
    gate = slots(limit=2)
    first, second = gate.acquire(), gate.acquire()
    assert gate.stats().in_use == 2
    first.release()
    first.release()  # idempotent: the slot is not given back twice
    assert gate.stats().in_use == 1
    second.release()
    assert gate.stats().in_use == 0
    assert gate.stats().admitted == 2


def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    gate = slots(limit=1, queue=0)
    held = gate.acquire()
    with pytest.raises(Overloaded) as caught:
        gate.acquire()
    assert caught.value.code == "overloaded"
    assert caught.value.retry_after >= 1
    assert caught.value.status_code == 503
    assert gate.stats().refused == 1
    held.release()


def test_a_waiter_whose_time_runs_out_is_refused_and_leaves_the_queue() -> None:
    gate = slots(limit=1, wait_seconds=0.05)
    held = gate.acquire()
    with pytest.raises(Overloaded):
        gate.acquire()
    assert gate.stats().waiting == 0
    held.release()
    assert gate.stats().in_use == 0  # no slot was handed to the departed waiter


def test_a_released_slot_goes_to_the_first_waiter_in_order() -> None:
    gate = slots(limit=1)
    held = gate.acquire()
    order: list[str] = []
    got: dict[str, object] = {}

    def wait(name: str) -> None:
        got[name] = gate.acquire()
        order.append(name)

    first = threading.Thread(target=wait, args=("first",))
    first.start()
    wait_until(lambda: gate.stats().waiting == 1, timeout=5)
    second = threading.Thread(target=wait, args=("second",))
    second.start()
    wait_until(lambda: gate.stats().waiting == 2, timeout=5)

    held.release()
    first.join(5)
    assert order == ["first"]
    got["first"].release()  # type: ignore[attr-defined]
    second.join(5)
    assert order == ["first", "second"]
    assert gate.stats().in_use == 1
    assert gate.stats().waited == 2
    got["second"].release()  # type: ignore[attr-defined]
    assert gate.stats().in_use == 0


def test_an_async_waiter_gets_a_slot_released_by_another_thread() -> None:
    gate = slots(limit=1)
    held = gate.acquire()

    async def main() -> int:
        waiting = asyncio.ensure_future(gate.acquire_async())
        await asyncio.sleep(0)  # let it join the queue
        assert gate.stats().waiting == 1
        threading.Thread(target=held.release).start()
        slot = await asyncio.wait_for(waiting, 5)
        in_use = gate.stats().in_use
        slot.release()
        return in_use

    assert asyncio.run(main()) == 1
    assert gate.stats().in_use == 0


def test_an_async_waiter_cancelled_while_waiting_keeps_no_slot() -> None:
    gate = slots(limit=1)
    held = gate.acquire()

    async def main() -> None:
        waiting = asyncio.ensure_future(gate.acquire_async())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(main())
    assert gate.stats().waiting == 0
    held.release()
    assert gate.stats().in_use == 0


def test_an_async_waiter_times_out_with_overloaded() -> None:
    gate = slots(limit=1, wait_seconds=0.05)
    held = gate.acquire()

    async def main() -> None:
        with pytest.raises(Overloaded):
            await gate.acquire_async()

    asyncio.run(main())
    assert gate.stats().waiting == 0
    held.release()


def test_the_process_slots_follow_the_settings(settings) -> None:
    settings.MPAI = {**settings.MPAI, "STREAM_WORKERS": 3, "STREAM_QUEUE": 7}
    gate = stream_slots()
    assert (gate.limit, gate.queue_limit) == (3, 7)
    settings.MPAI = {**settings.MPAI, "STREAM_WORKERS": 5}
    assert stream_slots().limit == 5
