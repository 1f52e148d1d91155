"""The media pool: the CPU-heavy clip work (probe, join, shrink, strip, frames, thumbnails) runs
in a few worker processes, never in the serving process.

Decoding and demuxing hold the GIL for most of their time, so a thread would still take it from
the event loop that acknowledges Slack and Discord within their 3 s; another process cannot.
The pool is small and bounded (``workers``, 2 by default), so a burst of joins queues here
instead of taking every core from the process that must answer at once.

``run`` takes a module-level function (it is pickled by name) and its picklable arguments, the
functions of ``bot.media`` for instance. A worker that dies (a decoder crash, the kernel's OOM
killer) breaks a ``ProcessPoolExecutor`` for good; ``run`` then starts a fresh pool and tries the
call once more, and if that breaks it too, fails with a ``BackendError`` the person can read.
The Core owns one pool and closes it when it stops.

Workers start by forkserver (spawn off Linux), which re-imports the main module of a program run
as a script: a script that starts a Core keeps its work under ``if __name__ == "__main__":``
(``videobot`` and ``python -m bot`` need nothing).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

from bot.errors import BackendError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_WORKERS = 2
CLOSE_GRACE_S = 5.0
"""How long ``close`` waits for calls in progress before it ends the workers."""

_CRASHED = "The video could not be processed: the media worker stopped unexpectedly"


def _context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one (Linux): each worker forks from a clean server that has
    already imported PyAV and numpy, so it starts in milliseconds and inherits no event loop or
    threads; spawn elsewhere."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["bot.media"])
        return context
    return multiprocessing.get_context("spawn")


def _call(fn: Callable[..., T], args: tuple[object, ...], kwargs: dict[str, object]) -> T:
    """Run ``fn`` in the worker. An exception that cannot cross back as itself would break the
    whole pool (the parent fails to unpickle it), and a StopIteration cannot be set on an asyncio
    future, so those come back as a RuntimeError naming them."""
    try:
        return fn(*args, **kwargs)
    except StopIteration:
        raise RuntimeError(f"{_name(fn)} raised StopIteration") from None
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - whatever stops the round trip
            raise RuntimeError(f"{_name(fn)} failed: {type(exc).__name__}: {exc}") from None
        raise


def _ignore_interrupts() -> None:
    """A Ctrl-C is for the serving process, which closes the pool; workers don't print tracebacks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class MediaPool:
    """A bounded process pool for blocking media calls, started on first use."""

    def __init__(self, workers: int = DEFAULT_WORKERS) -> None:
        self.workers = max(1, workers)
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    def _current(self) -> ProcessPoolExecutor:
        if self._closed:
            raise RuntimeError("the media pool is closed")
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=_context(), initializer=_ignore_interrupts
            )
        return self._executor

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Drop a broken executor (once, however many calls saw it break)."""
        if self._executor is broken:
            self._executor = None
            broken.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a worker process; its exceptions pass through as raised there."""
        for attempt in (1, 2):
            executor = self._current()
            try:
                return await asyncio.wrap_future(executor.submit(_call, fn, args, kwargs))
            except BrokenProcessPool:
                self._replace(executor)
                if attempt == 2:
                    raise BackendError(_CRASHED) from None
                log.warning("a media worker died during %s; starting a fresh pool and trying once more", _name(fn))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Stop the workers: calls in progress get ``CLOSE_GRACE_S`` to end, queued ones are dropped."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list((executor._processes or {}).values())  # private: to end stragglers
        waiting = asyncio.create_task(asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True))
        done, _ = await asyncio.wait({waiting}, timeout=CLOSE_GRACE_S)
        if not done:
            for process in processes:
                if process.is_alive():
                    process.kill()
            await waiting

    def worker_pids(self) -> set[int]:
        """The worker processes' ids now (health and tests)."""
        executor = self._executor
        return {p.pid for p in (executor._processes or {}).values() if p.pid} if executor else set()


def _name(fn: Callable[..., object]) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def current_pid() -> int:
    """This process's id: run in the pool, the worker's (tests use it)."""
    return os.getpid()
