"""Acks first, work later: keeping the work that follows one ack from delaying the next ack.

Slack requests come in bursts (a channel trying /video at once, a batch of retries). Each
listener acks within a millisecond, but what it does next (a database write, a Web API call)
runs on the same event loop, and with a burst in progress that work would sit in front of the
acks still queued behind it. So the work after an ack waits for a quiet moment (no request
arrived for ``quiet_s``, or ``max_wait_s`` at most, so a steady stream cannot starve it) and
runs ``concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from slack_bolt.response import BoltResponse


class AckFirst:
    def __init__(self, *, quiet_s: float = 0.15, max_wait_s: float = 2.0, concurrency: int = 4) -> None:
        self._quiet_s = quiet_s
        self._max_wait_s = max_wait_s
        self._slots = asyncio.Semaphore(concurrency)
        self._last_arrival = 0.0

    async def note_arrival(self, next: Callable[[], Awaitable[BoltResponse | None]]) -> BoltResponse | None:
        """A Bolt global middleware (Bolt passes ``next`` by that name): every request that
        reaches the listeners passes here."""
        self._last_arrival = time.monotonic()
        return await next()

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for a quiet moment and a free slot, then hold the slot for the work."""
        deadline = time.monotonic() + self._max_wait_s
        while (now := time.monotonic()) < deadline:
            calm_in = self._last_arrival + self._quiet_s - now
            if calm_in <= 0:
                break
            await asyncio.sleep(min(calm_in, deadline - now))
        async with self._slots:
            yield
