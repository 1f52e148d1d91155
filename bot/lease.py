"""The engine lease: one `videobot serve` drives a database's jobs at a time.

Two processes driving the same jobs submit each to the provider twice (billed twice) and post
each clip twice. So the embedded engine holds a lease row in the database (``leases.engine``):
taken at start, renewed every quarter of ``ttl_s`` while the process lives, and taken over by
another process only once it has lapsed, or at once when its holder ran on the same host and
that process is gone (a restart after a crash). A second ``serve`` refuses to start with a
message naming the holder, or with ``--standby`` waits and takes over when the holder stops
(at once after a clean stop, which gives the lease up; ``ttl_s`` after a crash elsewhere).

The holder fences itself: it counts the lease as its own only for half of ``ttl_s`` after its
last successful renewal (by its own monotonic clock), so a process that was paused, or could
not write its renewal, stops submitting and delivering before anyone else may take over; it
then stops driving and waits for the lease like a standby.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from datetime import timezone
from typing import TYPE_CHECKING

from bot.database import Database
from bot.errors import StoreUnavailable, VideobotError
from storage.tables import Lease, utcnow

if TYPE_CHECKING:
    from bot.runner import Runner

log = logging.getLogger(__name__)

ENGINE = "engine"


class LeaseHeld(VideobotError):
    """Another process drives this database's jobs; the message names it."""


class EngineLease:
    def __init__(self, db: Database, ttl_s: float = 30.0, *, name: str = ENGINE) -> None:
        """``name`` the lease's row: ``engine`` for the embedded engine's driver, another name
        for a duty one process at a time does (the Temporal replicas' housekeeping)."""
        self.db = db
        self.ttl_s = ttl_s
        self.name = name
        self.holder = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.detail = f"{self.host} pid {os.getpid()}, started {utcnow():%Y-%m-%d %H:%M:%S} UTC"
        self.other: Lease | None = None
        """The lease as another process holds it, after a refused ``acquire``."""
        self._renewed: float | None = None

    @property
    def every_s(self) -> float:
        return self.ttl_s / 4

    def fresh(self) -> bool:
        """Whether this process may drive jobs now: it renewed the lease less than half a ttl ago."""
        return self._renewed is not None and time.monotonic() - self._renewed < self.ttl_s / 2

    async def acquire(self) -> bool:
        """Take the lease if it is free, lapsed or ours; else note who holds it in ``other``."""
        started = time.monotonic()
        claim = Lease(name=self.name, holder=self.holder, host=self.host, pid=os.getpid(), detail=self.detail)
        lease = await self.db.interactive(self.db.repo.acquire_lease, claim, self.ttl_s, gone=self._gone)
        if lease.holder != self.holder:
            self.other = lease
            return False
        self._renewed, self.other = started, None
        self.db.writable()
        return True

    def _gone(self, lease: Lease) -> bool:
        """Whether the holder ran on this host and its process has ended (a crash, then a
        restart): then its lease need not lapse first. Elsewhere only the clock can tell."""
        if not lease.host or lease.host != self.host or lease.pid <= 0:
            return False
        if lease.pid == os.getpid():  # an earlier life of this container, which reused the pid
            return True
        try:
            os.kill(lease.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def refusal(self) -> LeaseHeld:
        """The error a second ``serve`` without ``--standby`` stops with."""
        holder = self.other.detail if self.other is not None else "another process"
        return LeaseHeld(
            f"Another videobot serve drives this database ({holder}); it renews its lease every "
            f"{self.every_s:g} s, which lapses {self._lapses()}. Stop it first, or start this one "
            "with --standby to take over when it stops."
        )

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Wait as a standby until the lease is ours (True), or until ``stop`` is set (False)."""
        while True:
            try:
                if await self.acquire():
                    return True
            except StoreUnavailable:
                pass
            if stop is None:
                await asyncio.sleep(self.every_s)
                continue
            try:
                await asyncio.wait_for(stop.wait(), self.every_s)
                return False
            except TimeoutError:
                pass

    async def keep(self, runner: Runner) -> None:
        """Renew the lease while the process lives. If it is lost, stop ``runner`` until it is
        ours again; if it went stale before a renewal landed (jobs may have stopped at the
        fence), restart it. A restarted runner resumes every unfinished job from its row."""
        while True:
            await asyncio.sleep(self.every_s)
            stale = not self.fresh()
            if await self.renew():
                if stale:
                    log.warning("The engine lease was renewed late; driving unfinished jobs again.")
                    await runner.stop()
                    await runner.start()
                continue
            log.error(
                "Lost the engine lease (%s); this process stops driving jobs until it holds it again.",
                f"taken by {self.other.detail}" if self.other is not None else "it could not be renewed in time",
            )
            await runner.stop()
            await self.wait()
            log.warning("Holding the engine lease again; resuming unfinished jobs.")
            await runner.start()

    async def release(self) -> None:
        """Give the lease up (a clean stop), so a standby takes over at once."""
        if self._renewed is None:
            return
        self._renewed = None
        try:
            await self.db.interactive(self.db.repo.release_lease, self.name, self.holder)
        except StoreUnavailable:
            log.warning("Could not give the engine lease up; a standby takes over when it lapses.")

    async def renew(self) -> bool:
        """Extend the lease now; False when it was taken, or could not be written while stale."""
        started = time.monotonic()
        try:
            renewed = await self.db.interactive(self.db.repo.renew_lease, self.name, self.holder, self.ttl_s)
        except StoreUnavailable:
            return self.fresh()  # still safely ours for a while; the next renewal may land
        if not renewed:
            self._renewed = None
            self.other = await self.db.interactive(self.db.repo.get_lease, self.name)
            return False
        self._renewed = started
        self.db.writable()
        return True

    def _lapses(self) -> str:
        if self.other is None:
            return "soon"
        expires = self.other.expires_at
        expires = expires if expires.tzinfo else expires.replace(tzinfo=timezone.utc)
        seconds = max(0, round((expires - utcnow()).total_seconds()))
        return f"in {seconds} s unless renewed"
