"""Runs the synchronous repository off the event loop, on one dedicated thread.

One thread means one SQLite connection doing every write in order, so the service never
contends with itself for the write lock, and the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from storage.repository import JobRepository

P = ParamSpec("P")
T = TypeVar("T")


class Database:
    def __init__(self, repo: JobRepository) -> None:
        self.repo = repo
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="videobot-db")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn`` (normally a repository method) on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.repo.engine.dispose()
