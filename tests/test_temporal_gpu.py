"""GPU workers on the Temporal gpu queue (`videobot worker --engine temporal`) with the tiny CPU
Wan checkpoint: each denoising step heartbeats, a cancel stops the pipeline within 2 s before
the VAE decode, and a worker killed with -9 mid-job hands the job to another, delivered once."""

# ruff: noqa: E402
from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs the gpu extra: pip install -e '.[gpu,test]'")
pytest.importorskip("diffusers", reason="needs the gpu extra: pip install -e '.[gpu,test]'")

from bot.grammar import parse_request
from bot.temporal._gpu import GpuQueueBackend
from tests.conftest import subprocess_env, webhook_origin
from tests.gpu_fixtures import build_tiny_wan
from tests.temporal_server import temporal_address  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(300)

LIMITS = '[defaults]\nresolutions = ["32x32", "192x192"]\nfps = [16]\nuser_concurrent_jobs = 0\nuser_daily_jobs = 0\n'
PROMPT = "a fox in the snow --duration 4 --resolution 32x32 --fps 16"
SLOW_PROMPT = "a fox in the snow --duration 4 --resolution 192x192 --fps 16"
"""Denoises for seconds even on an idle machine (the 32x32 clip takes under one), so a cancel lands
mid-denoise."""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wan(tmp_path_factory.mktemp("wan"), "t2v")


class GpuWorkers:
    """`videobot worker --engine temporal` processes on the test's data folder."""

    def __init__(self, tmp_path: Path, address: str, checkpoint: Path) -> None:
        self.env = subprocess_env(tmp_path, VIDEOBOT_ENGINE="temporal", TEMPORAL_ADDRESS=address,
                                  TEMPORAL_HEARTBEAT_TIMEOUT="2", VIDEOBOT_PROGRESS_INTERVAL="0.2",
                                  VIDEOBOT_BACKEND="diffusers", VIDEOBOT_MODEL=str(checkpoint))
        self.tmp_path = tmp_path
        self.processes: list[asyncio.subprocess.Process] = []

    async def start(self, count: int) -> list[asyncio.subprocess.Process]:
        started = []
        for n in range(count):
            log = (self.tmp_path / f"worker-{len(self.processes)}.log").open("ab")
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "worker", "--engine", "temporal", "--dtype", "float32",
                stdout=asyncio.subprocess.PIPE, stderr=log, env=self.env,
            )
            self.processes.append(process)
            started.append(process)
        for process in started:
            assert process.stdout is not None
            line = (await asyncio.wait_for(process.stdout.readline(), 120)).decode()
            assert "GPU worker ready" in line, line + self.logs()
        return started

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.tmp_path.glob("worker-*.log")))

    async def stop(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.terminate()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()


@pytest.fixture
async def workers(tmp_path: Path, temporal_address: str, checkpoint: Path) -> AsyncIterator[GpuWorkers]:  # noqa: F811
    group = GpuWorkers(tmp_path, temporal_address, checkpoint)
    yield group
    await group.stop()


async def _serve(make_core: Callable, address: str):
    return await make_core(LIMITS, engine="temporal", temporal_address=address, temporal_heartbeat_timeout_s=2.0,
                           progress_interval_s=0.2, backend=GpuQueueBackend())


async def _pending(core, job_id: int):
    from temporalio.service import RPCError

    try:
        description = await core.engine.client.get_workflow_handle(f"videobot-job-{job_id}").describe()
    except RPCError:  # the workflow is started just after submit returns
        return []
    return description.raw_description.pending_activities


async def _wait_running(core, job_id: int, *, past: float = 0.0, timeout: float = 120):
    """The pending gpu activity once its heartbeats report progress beyond ``past``."""
    from temporalio.converter import DataConverter

    for _ in range(int(timeout / 0.1)):
        for pending in await _pending(core, job_id):
            if pending.heartbeat_details.payloads:
                progress = DataConverter.default.payload_converter.from_payload(pending.heartbeat_details.payloads[0])
                if isinstance(progress, float) and past < progress < 0.9:
                    return pending, progress
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} never reported denoising progress past {past}")


async def test_gpu_worker_heartbeats_each_step_and_a_cancel_stops_it_before_the_decode(
    make_core, receiver, workers: GpuWorkers, temporal_address: str, tmp_path: Path  # noqa: F811
) -> None:
    await workers.start(1)
    core = await _serve(make_core, temporal_address)
    origin = webhook_origin(receiver)
    first = await core.service.submit(parse_request(SLOW_PROMPT), origin)
    _, early = await _wait_running(core, first.id)
    _, later = await _wait_running(core, first.id, past=early)  # a heartbeat per step: the detail moves
    assert later > early
    for _ in range(50):  # progress reaches the database, throttled, and from there the bot's chat
        row = await core.service.status(first.id)  # status message (the worker has no chat of its own)
        shown = [e["percent"] for e in receiver.for_job(first.id) if e["event"] == "progress"]
        if row.progress > 0 and any(0 < percent < 100 for percent in shown):
            break
        await asyncio.sleep(0.05)
    assert row.progress > 0 and any(0 < percent < 100 for percent in shown), (row.progress, receiver.for_job(first.id))
    started = time.monotonic()
    await core.service.cancel(first.id, origin)
    handle = core.engine.client.get_workflow_handle(f"videobot-job-{first.id}")
    while (await handle.describe()).status.name != "CANCELED":
        assert time.monotonic() - started < 2.0, "the GPU step did not stop within 2 s"
        await asyncio.sleep(0.05)
    assert not list((tmp_path / "data" / "media" / "gpu").glob("*.mp4")), "the canceled job was decoded"
    # the model stays resident and usable: the next job is made and delivered once
    second = await core.service.submit(parse_request(PROMPT), origin)
    await receiver.wait_for(second.id, "delivered", 120)
    assert len([d for d in receiver.deliveries.values() if d.job_id == second.id]) == 1
    assert "stopped on the GPU" in workers.logs()


async def test_kill_9_of_the_gpu_worker_mid_job_finishes_on_another_delivered_once(
    make_core, receiver, workers: GpuWorkers, temporal_address: str  # noqa: F811
) -> None:
    processes = await workers.start(2)
    core = await _serve(make_core, temporal_address)
    job = await core.service.submit(parse_request(PROMPT), webhook_origin(receiver))
    pending, _ = await _wait_running(core, job.id)
    pid = int(pending.last_worker_identity.rsplit(":", 1)[1])
    assert pending.last_worker_identity in (await core.health())["temporal"]["workers"]["videobot-gpu"]  # /healthz sees it
    victim = next(p for p in processes if p.pid == pid)
    victim.send_signal(signal.SIGKILL)
    await victim.wait()
    await receiver.wait_for(job.id, "delivered", 120)
    assert await core.engine.wait(job.id) == "succeeded"
    assert len([d for d in receiver.deliveries.values() if d.job_id == job.id]) == 1
    assert receiver.delivery_posts == 1
    assert "died with its worker" in workers.logs()
