"""The activities: each drives the runner's own idempotent steps on the job's stored row.

Nothing here knows how a clip is made or posted; ``Runner.step`` does, exactly as for the
embedded engine. A retried activity reads the row again and goes on from its state: a stored
provider task id is polled, never resubmitted, and delivery goes through the notifier's
checkpoint, so a repeat posts nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection

from temporalio import activity

from bot.errors import BackendError
from bot.runner import Runner
from bot.temporal._workflow import DELIVER, FAIL, GENERATE, FailInput, Outcome
from storage.repository import StaleTransition
from storage.tables import JobState

MAKING = (JobState.QUEUED, JobState.SUBMITTED, JobState.RUNNING, JobState.FETCHING)
HEARTBEAT_EVERY_S = 1.0


class Pulse:
    """A running activity's latest progress, reported from any thread (a GPU's step callback).

    Its heartbeats carry the newest value, every one of them: the SDK keeps only the latest
    heartbeat of each throttle interval, so a beat without it would erase it on the server."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        self.progress: float | None = None

    def report(self, fraction: float) -> None:
        """Record ``fraction`` and wake the heartbeat; safe from any thread."""
        self.progress = fraction
        with contextlib.suppress(RuntimeError):  # the loop closed: the worker is gone
            self._loop.call_soon_threadsafe(self.changed.set)


@contextlib.asynccontextmanager
async def heartbeating(pulse: Pulse | None = None, every_s: float = HEARTBEAT_EVERY_S) -> AsyncIterator[None]:
    """Heartbeat while the body runs, at least every ``every_s`` and at once when ``pulse``
    reports: the server learns the worker lives and how far it got, and the worker learns of a
    cancel (delivered as ``CancelledError`` into the activity). Only this task, in the
    activity's own context on its loop, calls ``activity.heartbeat``."""
    pulse = pulse or Pulse()

    async def beat() -> None:
        while True:
            pulse.changed.clear()  # before reading: a report from now on wakes the next beat
            activity.heartbeat(*(() if pulse.progress is None else (pulse.progress,)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every_s):  # not wait_for: on 3.11 it can swallow the cancel
                    await pulse.changed.wait()  # when the event is set in the same tick

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class JobSteps:
    """The provider-queue and chat-queue activities over one process's ``Runner``."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.db = runner.db

    @activity.defn(name=GENERATE)
    async def generate(self, job_id: int) -> Outcome:
        async with heartbeating():
            return await self.advance(job_id, MAKING)

    @activity.defn(name=DELIVER)
    async def deliver(self, job_id: int) -> Outcome:
        async with heartbeating():
            return await self.advance(job_id, (JobState.DELIVERING,))

    @activity.defn(name=FAIL)
    async def fail(self, failure: FailInput) -> None:
        await self.runner.fail(failure.job_id, failure.message, refund=failure.refund)

    async def advance(self, job_id: int, states: Collection[JobState]) -> Outcome:
        """Step the job while its row is in ``states``; a ``BackendError`` becomes the outcome's
        error (the workflow fails the job on the chat queue), anything else retries the activity."""
        job = await self.db.run(self.db.repo.get, job_id)
        if job is None:
            return Outcome("missing")
        try:
            while job.job_state in states:
                job = await self.runner.step(job)
        except StaleTransition:  # canceled (or moved) elsewhere meanwhile
            job = await self.db.run(self.db.repo.get, job_id) or job
        except BackendError as error:
            now = await self.db.run(self.db.repo.get, job_id) or job
            if now.job_state is JobState.CANCELED:  # the cancel stopped the provider's task
                return Outcome(now.state)
            received = bool(getattr(error, "received", False))
            return Outcome(job.state, str(error), refund=not received)
        finally:
            if job.job_state not in states:
                self.runner.forget(job_id)
        return Outcome(job.state)
