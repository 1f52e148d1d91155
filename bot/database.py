"""Runs the synchronous repository off the event loop, on one dedicated thread.

One thread means one SQLite connection doing every write in order, so the service never
contends with itself for the write lock, and the event loop never blocks on disk. Work is
taken by priority: a person waiting on ``submit`` or ``cancel`` goes before the runner's
background bookkeeping, so a busy runner does not slow down the answer to a slash command.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from storage.repository import JobRepository

P = ParamSpec("P")
T = TypeVar("T")

_INTERACTIVE, _BACKGROUND, _STOP = 0, 1, 2


class Database:
    def __init__(self, repo: JobRepository) -> None:
        self.repo = repo
        self._work: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._serve, name="videobot-db", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` (normally a repository method) on the database thread, as background work."""
        return await self._submit(_BACKGROUND, functools.partial(fn, *args, **kwargs))

    async def interactive(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like ``run``, but ahead of any queued background work: someone is waiting for it."""
        return await self._submit(_INTERACTIVE, functools.partial(fn, *args, **kwargs))

    async def _submit(self, priority: int, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._work.put((priority, next(self._order), (call, future, loop)))
        return await future

    def _serve(self) -> None:
        while True:
            priority, _, item = self._work.get()
            if priority == _STOP:
                return
            call, future, loop = item
            try:
                result = call()
            except BaseException as error:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, future, None, error)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    def close(self) -> None:
        self._work.put((_STOP, next(self._order), None))
        self._thread.join()
        self.repo.engine.dispose()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
