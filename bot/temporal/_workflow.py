"""The job workflow: one per job, id ``videobot-job-<id>``, its steps activities on task queues.

This module runs inside Temporal's workflow sandbox, so it imports nothing of ours beyond plain
data: activities are named by string, and every fact a step needs is read from the job's row
by the activity itself (the jobs table stays the state of record; the workflow only orders the
steps and tells them apart by queue).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import Priority, RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

WORKFLOW = "VideobotJob"
GENERATE = "videobot.generate"
"""Make the clip: submit (once), poll, download, check; on the provider or the gpu queue."""
DELIVER = "videobot.deliver"
"""Post the clip into the chat, exactly once (the notifier's checkpoint); on the chat queue."""
FAIL = "videobot.fail"
"""Mark the job failed and tell the person; on the chat queue."""

UNEXPECTED = "Something went wrong on our side with job #{job_id}. It was not counted."


def workflow_id(job_id: int, prefix: str = "videobot") -> str:
    """``<prefix>-job-<id>``: the task-queue prefix keeps apart the jobs of databases that share
    a Temporal namespace (their ids both start at 1), as it keeps apart their queues."""
    return f"{prefix}-job-{job_id}"


@dataclass
class JobInput:
    job_id: int
    fairness_key: str
    """``platform:user``: the server's matching shares each queue's slots fairly between them."""
    generate_queue: str
    chat_queue: str
    heartbeat_timeout_s: float = 30.0
    job_timeout_s: float = 1800.0


@dataclass
class Outcome:
    """Where a step left the job: its state, or the error to fail it with (and whether the
    failure is refunded)."""

    state: str
    error: str | None = None
    refund: bool = True


@dataclass
class FailInput:
    job_id: int
    message: str
    refund: bool = True


@workflow.defn(name=WORKFLOW)
class JobWorkflow:
    @workflow.run
    async def run(self, job: JobInput) -> str:
        priority = Priority(fairness_key=job.fairness_key)
        heartbeat = timedelta(seconds=job.heartbeat_timeout_s)
        try:
            outcome = await workflow.execute_activity(
                GENERATE,
                job.job_id,
                result_type=Outcome,
                task_queue=job.generate_queue,
                start_to_close_timeout=timedelta(seconds=job.job_timeout_s + 600),
                heartbeat_timeout=heartbeat,
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5),
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                priority=priority,
            )
            if outcome.error is None and outcome.state == "delivering":
                outcome = await workflow.execute_activity(
                    DELIVER,
                    job.job_id,
                    result_type=Outcome,
                    task_queue=job.chat_queue,
                    start_to_close_timeout=timedelta(minutes=30),
                    heartbeat_timeout=heartbeat,
                    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5),
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    priority=priority,
                )
            if outcome.state == "canceled":  # ended by the cancel: the workflow is canceled too
                raise asyncio.CancelledError(f"job {job.job_id} was canceled")
        except ActivityError as error:
            if is_cancelled_exception(error):  # the job was canceled: its row says so already
                raise
            outcome = Outcome("failed", UNEXPECTED.format(job_id=job.job_id))
        if outcome.error is not None:
            await workflow.execute_activity(
                FAIL,
                FailInput(job.job_id, outcome.error, outcome.refund),
                task_queue=job.chat_queue,
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=10),
                priority=priority,
            )
            return "failed"
        return outcome.state
