"""The gpu queue: ``videobot worker --engine temporal``, one process per GPU, and its serve side.

A worker keeps one model resident and takes one ``videobot.generate`` activity at a time from
``<prefix>-gpu``. The activity is the runner's own steps over an in-process ``DiffusersBackend``
(submit, poll, fetch, check, exactly as ``VIDEOBOT_BACKEND=diffusers`` runs them), with two
additions: every denoising step heartbeats (its progress as the detail), and a cancel, which
reaches the worker with its next heartbeat, stops the pipeline at the next step boundary, before
the VAE decode. A worker killed mid-job stops heartbeating; after the heartbeat timeout
Temporal hands the activity to another worker, which finds the row running on a task it never
issued and starts that segment again (a GPU task costs nothing to redo; a provider's is never
resubmitted). Workers need the database (``DATABASE_URL``) and the media folder the bot uses.

``GpuQueueBackend`` stands for the workers in ``serve``: it plans requests with the model table
and never generates; the engine routes its jobs to the gpu queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.worker import Worker

from bot.catalog import own_generator
from bot.errors import BackendError
from bot.models import GenerationSpec, Mode, TaskState, TaskStatus
from bot.settings import Settings
from bot.temporal._activities import MAKING, JobSteps, Pulse, heartbeating
from bot.temporal._engine import TaskQueues, connect, heartbeat_throttle
from bot.temporal._workflow import GENERATE, Outcome
from storage.tables import JobState

log = logging.getLogger(__name__)

GPU_LABEL = "Wan (GPU workers)"
STOP_WAIT_S = 10.0


class GpuQueueBackend:
    """The Backend port in ``serve`` for clips the GPU workers make; it makes none itself."""

    task_queue = "gpu"

    def __init__(self, name: str = "diffusers", *, label: str = GPU_LABEL, segment_s: int = 5,
                 max_concurrency: int = 1) -> None:
        self.name = name
        self.label = label
        self.max_concurrency = max_concurrency
        own = own_generator(label, segment_s)
        self.models = {Mode.TEXT_TO_VIDEO: own, Mode.IMAGE_TO_VIDEO: own}

    async def submit(self, spec: GenerationSpec) -> str:
        raise BackendError("This clip is made by a GPU worker (the gpu task queue), not by the bot.", retryable=False)

    async def poll(self, task_id: str) -> TaskState:
        return TaskState(TaskStatus.FAILED, error="made by a GPU worker")

    async def fetch(self, state: TaskState, dest: Path, max_bytes: int) -> Path:
        raise BackendError("This clip is fetched by the GPU worker that made it.", retryable=False)

    async def cancel(self, task_id: str) -> None:
        """A GPU job is canceled through its workflow; the worker stops at the next step."""

    async def aclose(self) -> None:
        pass


class _Beating:
    """The resident generator, with every progress callback (each denoising step, called on the
    GPU thread) also handed to ``listener``: the running activity's ``Pulse``."""

    def __init__(self, generator: Any) -> None:
        self._generator = generator
        self.listener: Callable[[float], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._generator, name)

    async def generate(self, spec: GenerationSpec, dest: Path, on_progress: Callable[[float], None],
                       cancel: asyncio.Event) -> None:
        listener = self.listener

        def progress(fraction: float) -> None:
            on_progress(fraction)
            if listener is not None:
                listener(fraction)

        await self._generator.generate(spec, dest, progress, cancel)


class GpuSteps:
    """The gpu-queue activity over a runner whose one generator is the resident model."""

    def __init__(self, runner: Any, backend: Any, beating: _Beating) -> None:
        self.runner = runner
        self.db = runner.db
        self.backend = backend
        self.beating = beating
        self.steps = JobSteps(runner)

    @activity.defn(name=GENERATE)
    async def generate(self, job_id: int) -> Outcome:
        """Make the clip, heartbeating each step's progress. However the cancel arrives (with a
        heartbeat's answer, or as the canceled row the runner's poll reads first), the activity
        ends only once the GPU has stopped."""
        pulse = Pulse()
        self.beating.listener = pulse.report
        try:
            async with heartbeating(pulse):
                try:
                    outcome = await self._make(job_id)
                except asyncio.CancelledError:
                    await self._stop_through(job_id)
                    raise
                if outcome.state == JobState.CANCELED.value:
                    await self._stop_through(job_id)
                return outcome
        finally:
            self.beating.listener = None

    async def _make(self, job_id: int) -> Outcome:
        job = await self.db.run(self.db.repo.get, job_id)
        if job is not None and job.job_state in (JobState.SUBMITTED, JobState.RUNNING):
            state = await self.backend.poll(job.task_id or "")
            if state.status is TaskStatus.FAILED:  # issued by a worker that died: make it here
                log.info("job %s: task %s died with its worker; starting it again here", job_id, job.task_id)
                await self.runner.resubmit(job)
        return await self.steps.advance(job_id, MAKING)

    async def _stop_through(self, job_id: int) -> None:
        """``_stop``, finished even when the other cancel path (the heartbeat's answer after the
        row's, or the reverse) cancels the activity meanwhile."""
        stopping = asyncio.create_task(self._stop(job_id))
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            await stopping
            raise

    async def _stop(self, job_id: int) -> None:
        """Stop the job's GPU task at its next step boundary and wait until the GPU is free."""
        job = await self.db.run(self.db.repo.get, job_id)
        if job is None or not job.task_id:
            return
        await self.backend.cancel(job.task_id)
        for _ in range(int(STOP_WAIT_S / 0.05)):
            if (await self.backend.poll(job.task_id)).status is not TaskStatus.RUNNING:
                break
            await asyncio.sleep(0.05)
        log.info("job %s: stopped on the GPU (task %s)", job_id, job.task_id)


async def run_gpu_worker(settings: Settings, model: str, options: Any, *, stop: asyncio.Event | None = None) -> None:
    """Load ``model``, then poll ``<prefix>-gpu`` one activity at a time until ``stop`` (or SIGTERM)."""
    from bot.app import Core
    from bot.gpu.backend import DiffusersBackend
    from bot.gpu.generator import DiffusersGenerator

    generator = await asyncio.to_thread(DiffusersGenerator.load, model, options)
    beating = _Beating(generator)
    backend = DiffusersBackend(beating, settings.media_dir / "gpu")  # type: ignore[arg-type]
    core = await Core.create(settings, backend=backend)
    # Polling the in-process model costs nothing: poll as often as progress is written to the
    # row, from which the bot's replicas show it in the chat.
    options = core.runner.options
    core.runner.options = replace(options, poll_interval_s=min(options.poll_interval_s, max(options.progress_interval_s, 0.1)))
    steps = GpuSteps(core.runner, backend, beating)
    client = await connect(settings)
    queue = TaskQueues.named(settings.temporal_task_queue_prefix).gpu
    worker = Worker(
        client,
        task_queue=queue,
        activities=[steps.generate],
        max_concurrent_activities=1,
        max_heartbeat_throttle_interval=heartbeat_throttle(settings),
        graceful_shutdown_timeout=timedelta(seconds=1),
        identity=f"videobot-gpu@{socket.gethostname()}:{os.getpid()}",
    )
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    running = asyncio.create_task(worker.run())
    log.info("GPU worker polling %s on %s with %s (pid %s)", queue, settings.temporal_address,
             generator.family_label, os.getpid())
    print(f"GPU worker ready: {queue} pid {os.getpid()}", flush=True)
    try:
        await stop.wait()
    finally:
        await worker.shutdown()
        await asyncio.gather(running, return_exceptions=True)
        await core.stop()  # closes the backend: frees the model
