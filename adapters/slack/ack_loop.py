"""Slack's HTTP requests served on an event loop of their own, so acks never queue behind the core.

With a few hundred jobs in flight, the core's event loop runs hundreds of the runner's callbacks
between any two turns of an ack (accept, read, dispatch, Bolt's 10 ms ack poll, write), and the
ack's p99 grows with the load (issue 14). In HTTP mode the adapter therefore runs its aiohttp
server and Bolt's ``AsyncApp`` on ``AckLoop``, a second event loop in a thread of its own: from
the accepted connection to the written ack, nothing waits on the core's loop.

The core assumes one event loop (its database, runner and ``Foreground`` are bound to it), so
the listeners reach the core through ``CoreBridge``: each coroutine of ``JobService`` they call
runs on the core's loop, and its result or error comes back to the listener. Listeners ack
before they call the core, so the ack never waits for it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["AckLoop", "CoreBridge", "finish_tasks"]

T = TypeVar("T")

STOP_GRACE_S = 5.0
"""How long ``AckLoop.stop`` lets work that follows an ack (a submit in progress) finish."""


class AckLoop:
    """An event loop running in a thread of its own, started and stopped from the core's loop."""

    def __init__(self, name: str = "slack-acks") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the thread and return once its loop runs."""
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this loop and await its result from the caller's loop."""
        assert self._loop is not None, "AckLoop.start() first"
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def stop(self) -> None:
        """Let the loop's remaining tasks finish (``STOP_GRACE_S`` at most, then cancel them),
        stop the loop and join the thread."""
        if self._thread is None or self._loop is None:
            return
        await self.call(finish_tasks())
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join)
        self._thread = self._loop = None


async def finish_tasks(grace_s: float = STOP_GRACE_S) -> None:
    """Wait for the running loop's other tasks, ``grace_s`` at most, then cancel the rest."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    if not others:
        return
    _, late = await asyncio.wait(others, timeout=grace_s)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)


class CoreBridge:
    """``JobService`` as the listeners on ``AckLoop`` see it: its coroutine methods run on the
    core's loop (``attach``), everything else (``help_text``, ``limits``: reads of settings
    and the limits file) is the service's own attribute. Pass it where a ``JobService`` is
    expected."""

    def __init__(self, service: Any) -> None:
        self._service = service
        self._core_loop: asyncio.AbstractEventLoop | None = None

    def attach(self, core_loop: asyncio.AbstractEventLoop) -> None:
        self._core_loop = core_loop

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._service, name)
        if not inspect.iscoroutinefunction(value):
            return value

        @functools.wraps(value)
        async def on_core_loop(*args: Any, **kwargs: Any) -> Any:
            assert self._core_loop is not None, "CoreBridge.attach() first"
            future = asyncio.run_coroutine_threadsafe(value(*args, **kwargs), self._core_loop)
            return await asyncio.wrap_future(future)

        return on_core_loop
