"""VIDEOBOT_ENGINE=temporal: each job one workflow on a real Temporal dev server, its steps the
runner's own, delivered once; through a kill -9 of `videobot serve` too, submitted once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import threading

import httpx
import pytest

from bot.grammar import parse_request
from tests.conftest import webhook_origin
from tests.temporal_server import temporal_address  # noqa: F401  (fixture)
from tests.test_crash_recovery import Bot, _provider_tasks, simulator  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

SMALL = '[defaults]\nresolutions = ["832x480"]\nuser_concurrent_jobs = 0\nuser_daily_jobs = 0\n'


async def _terminal(core, job_id: int, timeout: float = 60):
    for _ in range(int(timeout / 0.05)):
        job = await core.service.status(job_id)
        if job.job_state.terminal:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} stuck in {job.state}")


def _temporal_core(make_core, address: str, limits: str = SMALL, **overrides):
    return make_core(limits, engine="temporal", temporal_address=address, temporal_heartbeat_timeout_s=3.0, **overrides)


async def test_a_job_runs_as_one_workflow_and_is_delivered_once(make_core, receiver, temporal_address: str) -> None:
    core = await _temporal_core(make_core, temporal_address)
    job = await core.service.submit(parse_request("a red fox --duration 1 --resolution 832x480"), webhook_origin(receiver))
    await receiver.wait_for(job.id, "delivered", 60)
    assert await core.engine.wait(job.id) == "succeeded"
    job = await _terminal(core, job.id)
    assert job.state == "succeeded" and job.delivered_ref
    assert len([d for d in receiver.deliveries.values() if d.job_id == job.id]) == 1
    assert receiver.delivery_posts == 1
    history = [e.to_state for e in core.service.db.repo.events(job.id)]
    assert history[0] == "queued" and history[-3:] == ["fetching", "delivering", "succeeded"]
    description = await core.engine.client.get_workflow_handle(f"videobot-job-{job.id}").describe()
    assert description.status.name == "COMPLETED"
    # starting it again (another replica, a resync) finds it closed and starts nothing
    await core.engine.start_workflow(job)
    assert (await core.engine.client.get_workflow_handle(f"videobot-job-{job.id}").describe()).run_id == description.run_id
    health = await core.health()
    assert health["engine"] == "temporal" and health["temporal"]["connected"] and health["status"] == "ok"
    seen = health["temporal"]["workers"]  # this process's own provider and chat workers, as Temporal saw them
    assert seen["videobot-provider"] and seen["videobot-chat"] and seen["videobot-gpu"] == []


async def test_a_backend_failure_fails_the_job_once_and_tells_the_person(make_core, receiver, temporal_address: str) -> None:
    core = await _temporal_core(make_core, temporal_address)
    job = await core.service.submit(parse_request("[sim:fail] a lake --duration 1 --resolution 832x480"), webhook_origin(receiver))
    await receiver.wait_for(job.id, "failed", 60)
    job = await _terminal(core, job.id)
    assert job.state == "failed" and "could not make this video" in (job.error or "")
    assert await core.engine.wait(job.id) == "failed"


async def test_a_canceled_job_cancels_its_workflow_and_the_step_stops(make_core, receiver, temporal_address: str) -> None:
    core = await _temporal_core(make_core, temporal_address)
    origin = webhook_origin(receiver)
    job = await core.service.submit(parse_request("[sim:slow=30] a lake --duration 1 --resolution 832x480"), origin)
    for _ in range(400):
        if (await core.service.status(job.id)).state == "running":
            break
        await asyncio.sleep(0.05)
    assert (await core.service.status(job.id)).state == "running"
    await core.service.cancel(job.id, origin)
    handle = core.engine.client.get_workflow_handle(f"videobot-job-{job.id}")
    for _ in range(100):
        if (await handle.describe()).status.name == "CANCELED":
            break
        await asyncio.sleep(0.05)
    assert (await handle.describe()).status.name == "CANCELED"
    assert (await core.service.status(job.id)).state == "canceled"
    assert not [d for d in receiver.deliveries.values() if d.job_id == job.id]


@pytest.mark.parametrize("state", ["running", "delivering"])
async def test_kill_9_of_serve_mid_job_then_delivered_once_and_submitted_once(
    tmp_path: Path, simulator: str, temporal_address: str, state: str  # noqa: F811
) -> None:
    from tests.fakes.webhook_receiver import WebhookReceiver

    receiver = await WebhookReceiver(tmp_path).start()
    prompt = "[sim:slow=2] a lake --duration 1 --resolution 832x480 a"
    if state == "delivering":
        receiver.delay_first_delivery_s = 3.0
        prompt = "a lake --duration 1 --resolution 832x480 a"
    bot = Bot(tmp_path, simulator, 1)
    bot.env.update(VIDEOBOT_ENGINE="temporal", TEMPORAL_ADDRESS=temporal_address, TEMPORAL_HEARTBEAT_TIMEOUT="2",
                   TEMPORAL_TASK_QUEUE_PREFIX="kill9")
    try:
        await bot.start()
        job_id = await bot.submit(prompt, receiver.url)
        await bot.wait_state(job_id, state)
        while state == "delivering" and receiver.delivery_posts == 0:  # cut the upload itself
            await asyncio.sleep(0.01)
        bot.kill()
        await bot.process.wait()
        await bot.start()
        await receiver.wait_for(job_id, "delivered", timeout=60)
        await bot.wait_state(job_id, "succeeded")
        assert len([d for d in receiver.deliveries.values() if d.job_id == job_id]) == 1
        assert len(await _provider_tasks(simulator)) == 1, "the provider task was resubmitted"
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"{bot.url}/healthz")).json()
        assert health["engine"] == "temporal" and health["temporal"]["connected"]
    finally:
        await bot.stop()
        await receiver.stop()


async def test_every_heartbeat_carries_the_latest_progress_reported_from_another_thread() -> None:
    """The SDK sends only the newest heartbeat of each throttle interval: a bare keep-alive beat
    landing last would erase the progress on the server (issue 11), so none is ever bare once
    progress is known; and the beating ends with the body, however the last report races it."""
    from temporalio.testing import ActivityEnvironment

    from bot.temporal._activities import Pulse, heartbeating

    beats: list[tuple] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)

    async def making() -> None:
        pulse = Pulse()

        def gpu() -> None:
            for step in range(1, 21):
                threading.Event().wait(0.01)
                pulse.report(step / 20)

        async with heartbeating(pulse, every_s=0.05):
            await asyncio.to_thread(gpu)
        await asyncio.sleep(0.1)

    for _ in range(5):
        beats.clear()
        await asyncio.wait_for(env.run(making), 10)
        first = next(i for i, details in enumerate(beats) if details)
        progress = [details[0] for details in beats[first:]]
        assert all(isinstance(p, float) for p in progress), beats
        assert progress == sorted(progress) and progress[-1] == 1.0


async def test_one_replica_removes_expired_media_as_the_embedded_runner_does(make_core, receiver, temporal_address: str) -> None:
    core = await _temporal_core(make_core, temporal_address, media_retention_days=0, start=False)
    core.engine.clean_media_every_s = 0.2
    await core.start()
    job = await core.service.submit(parse_request("a field --duration 1 --resolution 832x480"), webhook_origin(receiver))
    await receiver.wait_for(job.id, "delivered", 60)
    clip = core.service.media_dir / "jobs" / str(job.id)
    for _ in range(100):
        if not clip.exists():
            break
        await asyncio.sleep(0.1)
    assert not clip.exists()
    kept = await core.service.status(job.id)
    assert kept.state == "succeeded" and kept.output_path is None and kept.prompt == "a field"
    lease = core.service.db.repo.get_lease("temporal-housekeeping")
    assert lease is not None and lease.holder == core.engine._housekeeper.holder


async def test_two_databases_on_one_namespace_each_run_their_job_1(
    make_core, make_settings, receiver, temporal_address: str, tmp_path: Path, another_database
) -> None:
    """Both number their jobs from 1; the task-queue prefix keeps their workflows apart, so the
    second's job 1 does not find the first's closed workflow and wait forever."""
    first = await _temporal_core(make_core, temporal_address, temporal_task_queue_prefix="first")
    job = await first.service.submit(parse_request("a red fox --duration 1 --resolution 832x480"), webhook_origin(receiver))
    assert (await _terminal(first, job.id)).state == "succeeded"
    second = await _temporal_core(make_core, temporal_address, temporal_task_queue_prefix="second",
                                  data_dir=tmp_path / "other", database_url=another_database())
    again = await second.service.submit(parse_request("a blue fox --duration 1 --resolution 832x480"), webhook_origin(receiver))
    assert again.id == job.id
    assert (await _terminal(second, again.id)).state == "succeeded"
    assert await second.engine.wait(again.id) == "succeeded"
