"""Acks first: the work after an ack waits while a burst of requests is still arriving."""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters.slack.pacing import AckFirst

pytestmark = pytest.mark.timeout(10)


async def arrivals(pacing: AckFirst, count: int, every_s: float) -> float:
    async def next_() -> None:
        return None

    for _ in range(count):
        await pacing.note_arrival(next_)
        await asyncio.sleep(every_s)
    return time.monotonic()


async def test_work_starts_at_once_when_nothing_is_arriving() -> None:
    started = time.monotonic()
    async with AckFirst(quiet_s=0.2).turn():
        assert time.monotonic() - started < 0.05


async def test_work_waits_until_the_burst_is_over() -> None:
    pacing = AckFirst(quiet_s=0.1, max_wait_s=5)
    burst = asyncio.create_task(arrivals(pacing, 15, 0.02))
    await asyncio.sleep(0.01)

    async with pacing.turn():
        began = time.monotonic()
    last = await burst

    assert began >= last - 0.02 + 0.1 - 0.01  # after the last arrival, plus the quiet window


async def test_a_steady_stream_delays_work_by_at_most_max_wait() -> None:
    pacing = AckFirst(quiet_s=0.1, max_wait_s=0.3)
    stream = asyncio.create_task(arrivals(pacing, 60, 0.01))
    await asyncio.sleep(0.01)
    started = time.monotonic()

    async with pacing.turn():
        waited = time.monotonic() - started
    stream.cancel()

    assert 0.25 <= waited < 0.5


async def test_only_so_many_pieces_of_work_run_at_once() -> None:
    pacing = AckFirst(concurrency=2)
    running = peak = 0

    async def work() -> None:
        nonlocal running, peak
        async with pacing.turn():
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1

    await asyncio.gather(*(work() for _ in range(6)))
    assert peak == 2
