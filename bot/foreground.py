"""Requests a person is waiting on go before the process's background work.

A Slack ack is due within 3 seconds, and a burst of requests is acked only as fast as the event
loop gets to each of them. The runner shares that loop (and the GIL) with the adapters: with a
few hundred jobs in flight, its polls, downloads, uploads and the database writes they cause
keep the loop and the database thread busy, and every step of every ack then waits behind a
queue of runner callbacks, several times over. Moving the media work to other processes did
not change that (benchmarks/README.md); holding the background work back does.

An adapter wraps the handling of each request that has a deadline in ``serving()``, and calls
``arrived()`` as soon as it knows one is coming (a connection accepted). Background work waits
for its turn before it starts its next piece: the runner's coroutines await ``turn()`` (before
a job's step, a poll, a dispatch), and the database thread puts a background query back in
line while ``holding`` (a person's query still goes first). While a request is being served,
and for ``quiet_s`` after the last one arrived or was answered (requests in a burst arrive a
little apart, and a busy loop takes a while from a connection to its request), no new piece
begins; pieces already begun go on. A busy spell holds background work back for ``max_wait_s``
at most (3 s: Slack's own deadline for an ack, past which holding back helps no one), then
lets it all run until the next calm moment, so a steady stream of requests slows jobs down but
never stalls them.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Foreground"]


class Foreground:
    def __init__(self, *, quiet_s: float = 0.2, max_wait_s: float = 3.0) -> None:
        self._quiet_s = quiet_s
        self._max_wait_s = max_wait_s
        self._serving = 0
        self._last_seen = float("-inf")
        self._busy_since = float("-inf")
        self._calm = asyncio.Event()
        self._calm.set()
        self._calm_for_threads = threading.Event()
        self._calm_for_threads.set()

    @property
    def busy(self) -> bool:
        """Whether a request is being served now, or arrived or was answered a moment ago."""
        return self._serving > 0 or time.monotonic() - self._last_seen < self._quiet_s

    def arrived(self) -> None:
        """A request is on its way (its connection was just accepted) but not being served yet:
        hold background work back from now on, for ``quiet_s`` unless ``serving`` takes over."""
        now = time.monotonic()
        if not self.busy:
            self._busy_since = now
        self._last_seen = max(self._last_seen, now)

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Hold background work back while the block runs: wrap everything from a request's
        arrival to its answer (the ack), not the work that follows it. Event loop only."""
        self._begin()
        try:
            yield
        finally:
            self._end()

    @contextmanager
    def serving_from_thread(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        """``serving()`` for a request served on another thread's event loop; ``loop`` is the
        one background work runs on. Holds at once (``arrived``), and counts the request on
        ``loop`` in order, whenever that loop gets to it."""
        self.arrived()
        loop.call_soon_threadsafe(self._begin)
        try:
            yield
        finally:
            self.arrived()
            loop.call_soon_threadsafe(self._end)

    def _begin(self) -> None:
        if not self.busy:
            self._busy_since = time.monotonic()
        self._serving += 1
        self._calm.clear()
        self._calm_for_threads.clear()

    def _end(self) -> None:
        self._serving -= 1
        self._last_seen = time.monotonic()
        if not self._serving:
            self._calm.set()
            self._calm_for_threads.set()

    @property
    def holding(self) -> bool:
        """Whether background work should wait now: ``busy``, in a spell not yet ``max_wait_s`` old."""
        return self.busy and time.monotonic() < self._busy_since + self._max_wait_s

    async def turn(self) -> None:
        """Return once nothing is being served and nothing was for ``quiet_s``, or once this
        busy spell is ``max_wait_s`` old; at once, without yielding to the loop, when calm.

        Work that was held resumes spread over ``quiet_s``, not all in one turn of the loop: a
        request arriving just then is not queued behind all of it, and what has not resumed
        yet waits again."""
        while self.holding:
            left = self._busy_since + self._max_wait_s - time.monotonic()
            if self._serving:
                try:
                    async with asyncio.timeout(left):
                        await self._calm.wait()
                except TimeoutError:
                    return
            else:
                await asyncio.sleep(min(self._last_seen + self._quiet_s - time.monotonic(), left))
            await asyncio.sleep(random.uniform(0, self._quiet_s))

    def wait_in_thread(self, at_most_s: float) -> None:
        """Block a thread other than the event loop's while ``holding``, for ``at_most_s`` at
        most, so it can look again at what else it has to do."""
        until = time.monotonic() + at_most_s
        while self.holding and (left := min(until, self._busy_since + self._max_wait_s) - time.monotonic()) > 0:
            if self._serving:
                self._calm_for_threads.wait(left)
            else:
                time.sleep(max(0.0, min(self._last_seen + self._quiet_s - time.monotonic(), left)))
