"""kill -9 of a real `videobot serve` at each job state; after a restart every job is delivered once.

The simulator runs as its own process (it is the provider, it survives the bot's crash), jobs
come in through the webhook API, and clips go to a receiver that honours Idempotency-Key, the
way Discord honours a nonce. Provider tasks are counted to show none was submitted twice.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bot.media import probe
from tests.conftest import start_serve, subprocess_env
from tests.fakes.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.timeout(150)

API_KEY = "vb-test-key-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return subprocess_env(tmp_path, VIDEOBOT_PROGRESS_INTERVAL="0.5", VIDEOBOT_LOG_LEVEL="INFO", **extra)


@pytest.fixture
async def simulator(tmp_path: Path) -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "simulator", "--port", "0", "--max-parallel", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=_env(tmp_path),
    )
    assert process.stdout is not None
    line = (await process.stdout.readline()).decode()
    assert "Simulator serving" in line, line
    yield line.split(" at ", 1)[1].split()[0]
    process.terminate()
    await process.wait()


class Bot:
    """One `videobot serve` process, restartable on the same data folder."""

    def __init__(self, tmp_path: Path, simulator: str, concurrency: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = _env(tmp_path, VIDEOBOT_BACKEND="http", WAN_API_BASE_URL=simulator, VIDEOBOT_API_KEY=API_KEY,
                        VIDEOBOT_ALLOWED_HOSTS="127.0.0.1",  # the webhook receiver on loopback
                        VIDEOBOT_HTTP_PORT=str(self.port), VIDEOBOT_MAX_CONCURRENCY=str(concurrency))
        self.log = tmp_path / "serve.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await start_serve(self.env, self.log, f"{self.url}/healthz")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    async def submit(self, prompt: str, callback: str) -> int:
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"{self.url}/v1/jobs", headers={"Authorization": f"Bearer {API_KEY}"},
                                       json={"prompt": prompt, "callback_url": callback, "user_id": prompt[-1]})
        assert answer.status_code == 202, answer.text
        return answer.json()["job_id"]

    async def state(self, job_id: int) -> str:
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{self.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {API_KEY}"})
        return answer.json()["state"]

    async def wait_state(self, job_id: int, state: str, timeout: float = 30) -> None:
        for _ in range(int(timeout / 0.02)):
            if await self.state(job_id) == state:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} never reached {state}; log:\n{self.log.read_text()[-3000:]}")


async def _provider_tasks(simulator: str) -> list[dict]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{simulator}/_simulator/tasks")).json()["tasks"]


# Each case: the bot's backend concurrency, the prompts, which job is watched, the state to kill in.
CASES = {
    "queued": (1, ["[sim:slow=2] a lake --duration 1 --resolution 832x480 a", "a pier --duration 1 --resolution 832x480 b"], 1, "queued"),
    "submitted": (2, ["[sim:slow=2] a lake --duration 1 --resolution 832x480 a", "a pier --duration 1 --resolution 832x480 b"], 1, "submitted"),
    "running": (1, ["[sim:slow=2] a lake --duration 1 --resolution 832x480 a"], 0, "running"),
    "fetching": (1, ["[sim:slow-download=3] a lake --duration 1 --resolution 832x480 a"], 0, "fetching"),
    "delivering": (1, ["a lake --duration 1 --resolution 832x480 a"], 0, "delivering"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_kill_9_at_each_state_then_every_job_is_delivered_exactly_once(tmp_path: Path, simulator: str, case: str) -> None:
    concurrency, prompts, watched, state = CASES[case]
    receiver = await WebhookReceiver(tmp_path).start()
    if case == "delivering":
        receiver.delay_first_delivery_s = 3.0
    bot = Bot(tmp_path, simulator, concurrency)
    try:
        await bot.start()
        ids = [await bot.submit(prompt, receiver.url) for prompt in prompts]
        await bot.wait_state(ids[watched], state)
        while case == "delivering" and receiver.delivery_posts == 0:  # cut the upload itself
            await asyncio.sleep(0.01)
        bot.kill()
        await bot.process.wait()
        await bot.start()
        for job_id in ids:
            await receiver.wait_for(job_id, "delivered", timeout=60)
            await bot.wait_state(job_id, "succeeded")
        for job_id in ids:
            delivered = [d for d in receiver.deliveries.values() if d.job_id == job_id]
            assert len(delivered) == 1, f"job {job_id} delivered {len(delivered)} times"
            assert probe(delivered[0].path).duration_s == pytest.approx(1, abs=0.1)
        tasks = await _provider_tasks(simulator)
        assert len(tasks) == len(prompts), f"a provider task was resubmitted: {tasks}"
        if case == "delivering":
            assert receiver.delivery_posts == 2  # the interrupted upload was repeated with the same key
        else:
            assert receiver.delivery_posts == len(prompts)
        assert "resuming from" in bot.log.read_text() or case == "queued"
    finally:
        await bot.stop()
        await receiver.stop()
