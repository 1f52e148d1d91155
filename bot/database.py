"""Runs the synchronous repository off the event loop, on one dedicated thread.

One thread means one SQLite connection doing every write in order, so the service never
contends with itself for the write lock, and the event loop never blocks on disk. Work is
taken by priority: a person waiting on ``submit`` or ``cancel`` goes before the runner's
background bookkeeping, so a busy runner does not slow down the answer to a slash command;
and background work waits while a request is being acked (``Foreground``), so this thread does
not take the GIL from the event loop at the moment an ack is due.

A store that refuses writes for a while (a read-only file, a full disk, a lost or restarting
PostgreSQL server) raises ``StoreUnavailable`` from every call that meets it, and
``unwritable`` says why until a write lands again. A person's call fails at once (they are told
nothing was charged); a write the runner must make goes through ``persist``, which waits and
retries it with backoff, so a job is never left half-moved because the disk was full for a few
seconds.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from bot.errors import StoreUnavailable
from bot.foreground import Foreground
from storage.repository import JobRepository

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_INTERACTIVE, _BACKGROUND, _STOP = 0, 1, 2

PERSIST_FIRST_WAIT_S = 0.25
PERSIST_MAX_WAIT_S = 5.0
HOLD_RECHECK_S = 0.02
"""While background work is held back for an ack, how often this thread looks for a person's query."""


class Database:
    def __init__(self, repo: JobRepository) -> None:
        self.repo = repo
        self.foreground = Foreground()
        """The process's one (see ``bot.foreground``): the adapters raise it while they ack; the
        runner and this thread's background work wait on it."""
        self._work: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self.unwritable: str | None = None
        """Why the store refused its last write, until a write succeeds again; None when fine."""
        self._thread = threading.Thread(target=self._serve, name="videobot-db", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` (normally a repository method) on the database thread, as background work."""
        return await self._submit(_BACKGROUND, functools.partial(fn, *args, **kwargs))

    async def interactive(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like ``run``, but ahead of any queued background work: someone is waiting for it."""
        return await self._submit(_INTERACTIVE, functools.partial(fn, *args, **kwargs))

    async def persist(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like ``run``, for a write that must land: while the store refuses writes it is retried
        with backoff (up to ``PERSIST_MAX_WAIT_S`` apart) until it succeeds or the caller is
        canceled. Other errors (``StaleTransition``) are raised as usual."""
        wait = PERSIST_FIRST_WAIT_S
        while True:
            try:
                result = await self._submit(_BACKGROUND, functools.partial(fn, *args, **kwargs))
            except StoreUnavailable:
                await asyncio.sleep(wait)
                wait = min(wait * 2, PERSIST_MAX_WAIT_S)
                continue
            self.writable()
            return result

    async def probe(self) -> str | None:
        """Try one small write now: None when the store takes writes, else why it does not."""
        try:
            await self.interactive(self.repo.probe_write)
        except StoreUnavailable as error:
            return error.reason
        self.writable()
        return None

    def writable(self) -> None:
        """Note that a write just landed."""
        if self.unwritable is not None:
            log.warning("The database takes writes again; waiting jobs go on.")
            self.unwritable = None

    def _refused(self, error: DBAPIError) -> StoreUnavailable:
        reason = str(error.orig) if error.orig is not None else str(error)
        if self.unwritable is None:
            log.error("The database refuses writes (%s); jobs wait and new ones are refused until it recovers.", reason)
        self.unwritable = reason
        return StoreUnavailable(reason)

    async def _submit(self, priority: int, call: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._work.put((priority, next(self._order), (call, future, loop)))
        return await future

    def _serve(self) -> None:
        while True:
            priority, order, item = self._work.get()
            if priority == _STOP:
                return
            if priority == _BACKGROUND and self.foreground.holding:
                self._work.put((priority, order, item))  # back in its place, behind any person's query
                self.foreground.wait_in_thread(HOLD_RECHECK_S)
                continue
            call, future, loop = item
            try:
                try:
                    result = call()
                except DBAPIError as refused:
                    if not _unavailable(refused):
                        raise
                    raise self._refused(refused) from refused  # the store's fault, not the call's
            except BaseException as error:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_settle, future, None, error)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    def close(self) -> None:
        self._work.put((_STOP, next(self._order), None))
        self._thread.join()
        self.repo.engine.dispose()


_UNAVAILABLE_SQLSTATES = ("08", "53", "57", "25006")
"""PostgreSQL's errors that say the server, not the statement, is at fault: the connection was
lost (class 08), it is out of disk, memory or connections (53), it is shutting down or not yet
up (57), or it is read-only now (25006: a standby after a failover)."""


def _unavailable(error: DBAPIError) -> bool:
    """Whether ``error`` means the store refuses work for now (retry later), not a bad call."""
    if isinstance(error, OperationalError) or error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None) or ""
    return sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
