"""``TemporalEngine``: the Dispatcher seam over Temporal, and this process's workers.

Each job is one workflow, id ``<prefix>-job-<id>`` (``videobot-job-<id>`` by default), started once its row is committed
(``wake(job)``) with ``USE_EXISTING`` on a running one and ``REJECT_DUPLICATE`` on a closed one,
so any number of ``serve`` replicas may start it, again and again, and one workflow runs.
At start every unfinished job's workflow is started the same way (a job whose start was lost
in a crash gets one), and again every ``resync_s``.

``videobot serve`` runs three workers here: the workflows (``<prefix>-jobs``), the provider
queue (``<prefix>-provider``: submit, poll, download against a hosted backend) and the chat
queue (``<prefix>-chat``: delivery and failure notices). GPU jobs go to ``<prefix>-gpu``, which
``videobot worker --engine temporal`` polls (``bot.temporal._gpu``). No engine lease: Temporal
hands each step to one worker at a time.

One replica at a time (the ``temporal-housekeeping`` lease in the database) also does what the
embedded runner does beside its steps: it shows the GPU workers' progress, which they write to
the jobs table, in each job's chat status message, and removes media past the retention hourly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import Priority, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bot.errors import ConfigurationError
from bot.lease import EngineLease
from bot.notifier import ProgressUpdate, Stage
from bot.runner import Runner
from bot.settings import Settings
from bot.temporal._activities import JobSteps
from bot.temporal._workflow import WORKFLOW, JobInput, JobWorkflow, workflow_id
from storage.tables import Job, JobState

log = logging.getLogger(__name__)

HEARTBEAT_THROTTLE = timedelta(seconds=1)
"""Heartbeats reach the server at least this often, so a cancel reaches the worker as fast."""


def heartbeat_throttle(settings: Settings) -> timedelta:
    """How often a worker's heartbeats reach the server: each second, or ten times per heartbeat
    timeout where that is shorter (the SDK's own default, 0.8 of the timeout, would let a single
    late beat time the activity out, and show a fast GPU's progress too seldom to follow)."""
    return min(HEARTBEAT_THROTTLE, timedelta(seconds=settings.temporal_heartbeat_timeout_s / 10))
HOUSEKEEPING = "temporal-housekeeping"
CLEAN_MEDIA_EVERY_S = 3600.0


@dataclass(frozen=True)
class TaskQueues:
    jobs: str
    provider: str
    chat: str
    gpu: str

    @classmethod
    def named(cls, prefix: str) -> "TaskQueues":
        return cls(f"{prefix}-jobs", f"{prefix}-provider", f"{prefix}-chat", f"{prefix}-gpu")


def fairness_key(job: Job) -> str:
    return f"{job.platform}:{job.user_id}"


async def connect(settings: Settings) -> Client:
    """The Temporal client; a server that cannot be reached is a configuration error naming it."""
    try:
        return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)
    except RuntimeError as error:
        raise ConfigurationError(
            f"Could not reach Temporal at TEMPORAL_ADDRESS={settings.temporal_address} "
            f"(namespace {settings.temporal_namespace}): {error}"
        ) from None


class TemporalEngine:
    """What runs jobs under ``VIDEOBOT_ENGINE=temporal``; attached to the service as its dispatcher."""

    def __init__(self, settings: Settings, runner: Runner, *, resync_s: float = 30.0,
                 clean_media_every_s: float = CLEAN_MEDIA_EVERY_S) -> None:
        self.settings = settings
        self.runner = runner
        self.service = runner.service
        self.db = runner.db
        self.queues = TaskQueues.named(settings.temporal_task_queue_prefix)
        self.resync_s = resync_s
        self.client: Client | None = None
        self.steps = JobSteps(runner)
        self._workers: list[Worker] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started: set[int] = set()
        self._resync: asyncio.Task[None] | None = None
        self.clean_media_every_s = clean_media_every_s
        self.housekeeping_every_s = max(min(settings.progress_interval_s, 5.0), 0.1)
        self._housekeeper = EngineLease(self.db, max(10 * self.housekeeping_every_s, 10.0), name=HOUSEKEEPING)
        self._shown: dict[int, float] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        self.service.attach_dispatcher(self)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, *, workers: bool = True) -> None:
        """Connect, run this process's workers (unless ``workers`` is False: a process that only
        starts workflows) and start a workflow for every unfinished job."""
        self.client = await connect(self.settings)
        if workers:
            self._workers = self._build_workers(self.client)
            for worker in self._workers:
                self._spawn(worker.run())
        await self.resume()
        self._resync = asyncio.create_task(self._resync_loop(), name="videobot-temporal-resync")
        if workers:
            self._housekeeping = asyncio.create_task(self._housekeeping_loop(), name="videobot-temporal-housekeeping")

    async def stop(self) -> None:
        for loop in (self._resync, self._housekeeping):
            if loop is not None:
                loop.cancel()
                await asyncio.gather(loop, return_exceptions=True)
        if self._housekeeping is not None:
            await self._housekeeper.release()
        for worker in self._workers:
            await worker.shutdown()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._workers.clear()

    def _build_workers(self, client: Client) -> list[Worker]:
        slots = sum(g.backend.max_concurrency for g in self.service.generators.values() if _queue_kind(g.backend) == "provider")
        common: dict[str, Any] = {"max_heartbeat_throttle_interval": heartbeat_throttle(self.settings),
                                  "graceful_shutdown_timeout": timedelta(seconds=1)}
        workers = [
            Worker(client, task_queue=self.queues.jobs, workflows=[JobWorkflow],
                   workflow_runner=UnsandboxedWorkflowRunner()),
            Worker(client, task_queue=self.queues.chat, activities=[self.steps.deliver, self.steps.fail],
                   max_concurrent_activities=64, **common),
        ]
        if slots:
            workers.append(Worker(client, task_queue=self.queues.provider, activities=[self.steps.generate],
                                  max_concurrent_activities=slots, **common))
        return workers

    @property
    def connected(self) -> bool:
        return self.client is not None

    async def health(self) -> dict[str, Any]:
        """What /healthz shows of the engine: the server, whether it answers now, and the workers
        seen polling each task queue."""
        answer: dict[str, Any] = {
            "address": self.settings.temporal_address,
            "namespace": self.settings.temporal_namespace,
            "task_queues": [self.queues.provider, self.queues.chat, self.queues.gpu],
        }
        if self.client is None:
            return {**answer, "connected": False}
        try:
            await asyncio.wait_for(self.client.service_client.check_health(), 2.0)
            workers = {queue: await asyncio.wait_for(self._pollers(queue), 2.0) for queue in answer["task_queues"]}
            return {**answer, "connected": True, "workers": workers}
        except (RPCError, RuntimeError, TimeoutError) as error:
            return {**answer, "connected": False, "reason": str(error) or type(error).__name__}

    async def _pollers(self, queue: str) -> list[str]:
        """The worker identities (``pid@host:…``) that polled ``queue``'s activities lately, as
        Temporal saw them: an operator sees at a glance whether any GPU worker is there at all."""
        assert self.client is not None
        answer = await self.client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
            namespace=self.settings.temporal_namespace, task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        ))
        return sorted(poller.identity for poller in answer.pollers)

    # -- the Dispatcher seam ----------------------------------------------------------------

    def wake(self, job: Job | None = None) -> None:
        if job is not None:
            self._spawn(self.start_workflow(job))
        else:
            self._spawn(self.resume())

    async def cancel(self, job: Job) -> None:
        """Cancel the job's workflow (its running step stops at its next heartbeat) and the
        provider's task, as the embedded runner does."""
        if self.client is not None:
            try:
                await self.client.get_workflow_handle(self.workflow_id(job.id or 0)).cancel()
            except RPCError as error:  # already closed, or never started
                log.info("job %s: workflow not canceled (%s)", job.id, error.message)
        generator = self.service.generators.get(job.backend)
        if job.task_id and generator is not None and _queue_kind(generator.backend) == "provider":
            await generator.backend.cancel(job.task_id)

    # -- starting workflows -----------------------------------------------------------------

    def workflow_id(self, job_id: int) -> str:
        return workflow_id(job_id, self.settings.temporal_task_queue_prefix)

    def job_input(self, job: Job) -> JobInput:
        generator = self.service.generators.get(job.backend)
        kind = _queue_kind(generator.backend) if generator is not None else "provider"
        return JobInput(
            job_id=job.id or 0,
            fairness_key=fairness_key(job),
            generate_queue=self.queues.gpu if kind == "gpu" else self.queues.provider,
            chat_queue=self.queues.chat,
            heartbeat_timeout_s=self.settings.temporal_heartbeat_timeout_s,
            job_timeout_s=self.settings.job_timeout_s,
        )

    async def start_workflow(self, job: Job) -> None:
        """Start the job's workflow, or find it running; a closed one is left closed."""
        assert self.client is not None, "start() connects first"
        job_id = job.id or 0
        try:
            await self.client.start_workflow(
                WORKFLOW,
                self.job_input(job),
                id=self.workflow_id(job_id),
                task_queue=self.queues.jobs,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                priority=Priority(fairness_key=fairness_key(job)),
            )
        except WorkflowAlreadyStartedError:  # it ran and closed; the row says how it ended
            now = await self.db.run(self.db.repo.get, job_id)
            if now is not None and not now.job_state.terminal:
                log.warning("job %s is %s, yet its workflow %s already closed: does another database use "
                            "this Temporal namespace with TEMPORAL_TASK_QUEUE_PREFIX=%s too?",
                            job_id, now.state, self.workflow_id(job_id), self.settings.temporal_task_queue_prefix)
        except (RPCError, RuntimeError) as error:
            log.warning("job %s: could not start its workflow (%s); retrying within %g s", job_id, error, self.resync_s)
            return
        self._started.add(job_id)

    async def resume(self) -> None:
        """Start (or find) the workflow of every unfinished job this process has not yet started."""
        for job in await self.db.run(self.db.repo.in_flight, self.runner.platforms):
            if (job.id or 0) not in self._started:
                await self.start_workflow(job)

    async def wait(self, job_id: int) -> str:
        """The job's workflow result (tests and benchmarks)."""
        assert self.client is not None
        try:
            return await self.client.get_workflow_handle(self.workflow_id(job_id)).result()
        except WorkflowFailureError as error:
            return f"workflow failed: {error.cause}"

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_s)
            try:
                await self.resume()
            except Exception:
                log.warning("could not look for jobs without a workflow", exc_info=True)

    # -- housekeeping: one replica at a time ------------------------------------------------

    async def _housekeeping_loop(self) -> None:
        cleaned = asked = 0.0
        holding = False
        while True:
            try:
                if time.monotonic() - asked >= self._housekeeper.every_s:  # take or renew the lease
                    asked = time.monotonic()
                    holding = await self._housekeeper.acquire()
                if holding and self._housekeeper.fresh():
                    await self.show_gpu_progress()
                    if time.monotonic() - cleaned >= self.clean_media_every_s:
                        cleaned = time.monotonic()
                        await self.runner.clean_media()
            except Exception:
                log.warning("housekeeping failed; trying again in %g s", self.housekeeping_every_s, exc_info=True)
            await asyncio.sleep(self.housekeeping_every_s)

    async def show_gpu_progress(self) -> None:
        """Render each generating GPU job's stored progress in its chat status message, when it
        moved since this process last showed it. (A provider job's step, which runs here, shows
        its own, as the embedded runner does.)"""
        live: set[int] = set()
        for job in await self.db.run(self.db.repo.in_flight, self.runner.platforms):
            generator = self.service.generators.get(job.backend)
            if job.job_state not in (JobState.SUBMITTED, JobState.RUNNING) or generator is None \
                    or _queue_kind(generator.backend) != "gpu":
                continue
            job_id = job.id or 0
            live.add(job_id)
            notifier = self.service.notifiers.get(job.platform)
            if notifier is None or self._shown.get(job_id) == job.progress:
                continue
            self._shown[job_id] = job.progress
            update = ProgressUpdate(Stage.GENERATING, percent=int(job.progress * 100),
                                    segment=job.segment_index + 1, segments=job.segment_count)
            try:
                await notifier.progress(job, update)
            except Exception:
                log.warning("job %s: progress update failed", job_id, exc_info=True)
        for job_id in set(self._shown) - live:
            del self._shown[job_id]

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _queue_kind(backend: Any) -> str:
    """``gpu`` for a backend whose generation runs on GPU workers polling the gpu queue."""
    return str(getattr(backend, "task_queue", "provider"))
