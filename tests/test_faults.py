"""Faults injected into a real `videobot serve`: a store that refuses writes, a second serve on
the same database, a limits file emptied while people submit, a provider whose download trickles.

The store is made to refuse writes two real ways, since chmod does not stop root: ``chattr +i``
on the database file and its WAL (reads still work, writes fail with a disk I/O error), and the
database on a small tmpfs filled to the last byte ("database or disk is full"). Both need root;
without it those cases are skipped.

Like the crash-recovery tests, the bot is a subprocess talking to a simulator process (or a
fake provider in this process) over loopback; jobs come in through the webhook API and clips go
to a receiver that honours Idempotency-Key, so every delivery and provider task can be counted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fakes.provider import FakeProvider, Reply
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.test_crash_recovery import API_KEY, Bot, _provider_tasks, simulator  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

CHEAP = "--duration 1 --resolution 832x480"


class Serve(Bot):
    """A `videobot serve` whose answers the test reads in full, with its own log file."""

    def __init__(self, tmp_path: Path, provider: str, *, name: str = "serve", concurrency: int = 2, **env: str) -> None:
        super().__init__(tmp_path, provider, concurrency)
        self.env.update(env)
        self.log = tmp_path / f"{name}.log"

    async def post_job(self, prompt: str, callback: str, user: str = "ann") -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.post(
                f"{self.url}/v1/jobs",
                headers={"Authorization": f"Bearer {API_KEY}"},
                json={"prompt": prompt, "callback_url": callback, "user_id": user},
            )

    async def health(self) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.get(f"{self.url}/healthz")

    def logged(self) -> str:
        return self.log.read_text(errors="replace")


# --- 1. a store that refuses writes for a while strands nothing -------------------------------


class ReadOnly:
    """``chattr +i`` on the database and its WAL: even root cannot write them (chmod would not
    stop root). Not the -shm file: SQLite maps it into memory, and a write to an immutable
    mapping is SIGBUS."""

    def __init__(self, tmp_path: Path) -> None:
        database = tmp_path / "data" / "videobot.db"
        self.files = [database, database.with_name("videobot.db-wal")]
        self.env: dict[str, str] = {}
        self.usable = os.geteuid() == 0 and shutil.which("chattr") is not None and self._try(tmp_path)

    @staticmethod
    def _try(folder: Path) -> bool:
        probe = folder / "chattr-probe"
        probe.write_text("x")
        try:
            done = subprocess.run(["chattr", "+i", str(probe)], check=False, capture_output=True).returncode == 0
            if done:
                subprocess.run(["chattr", "-i", str(probe)], check=True)
            return done
        finally:
            probe.unlink()

    def refuse(self) -> None:
        for path in self.files:
            subprocess.run(["chattr", "+i", str(path)], check=True)

    def allow(self) -> None:
        for path in self.files:
            if path.exists():
                subprocess.run(["chattr", "-i", str(path)], check=True)

    def close(self) -> None:
        self.allow()


class DiskFull:
    """The database on a 16 MiB tmpfs of its own, filled up by a filler file and then freed."""

    def __init__(self, tmp_path: Path) -> None:
        self.mount = tmp_path / "db"
        self.mount.mkdir()
        self.filler = self.mount / "filler"
        self.env = {"DATABASE_URL": f"sqlite:///{self.mount / 'videobot.db'}"}
        self.usable = os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(self.mount)], check=False, capture_output=True
        ).returncode == 0

    def refuse(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, bytes(64 * 1024))
        except OSError:  # ENOSPC: the disk is full
            pass
        finally:
            os.close(fd)

    def allow(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.usable:
            subprocess.run(["umount", "-l", str(self.mount)], check=False)


@pytest.mark.sqlite  # a PostgreSQL server refusing writes: tests/test_postgres.py
@pytest.mark.parametrize("fault", [ReadOnly, DiskFull], ids=["read-only", "disk-full"])
async def test_a_database_refusing_writes_for_a_few_seconds_strands_no_job(
    tmp_path: Path, simulator: str, fault: type[ReadOnly | DiskFull]  # noqa: F811
) -> None:
    store = fault(tmp_path)
    if not store.usable:
        store.close()
        pytest.skip(f"{fault.__name__} needs root (chattr +i on this filesystem, or mount -t tmpfs)")
    receiver = await WebhookReceiver(tmp_path).start()
    bot = Serve(tmp_path, simulator, concurrency=1, **store.env)
    try:
        await bot.start()
        answer = await bot.post_job(f"[sim:slow=2] a lake {CHEAP}", receiver.url)
        job_id = answer.json()["job_id"]
        await bot.wait_state(job_id, "running")

        store.refuse()
        health = await bot.health()
        assert health.status_code == 503, health.text
        assert "the database refuses writes" in health.json()["reason"]
        refused = await bot.post_job(f"a pier {CHEAP}", receiver.url, user="bo")
        assert refused.status_code == 503, refused.text
        assert "temporarily unavailable" in refused.json()["error"]
        assert "Nothing was charged" in refused.json()["error"]
        await asyncio.sleep(4)  # the task finishes meanwhile: its move to "fetching" cannot be written
        assert await bot.state(job_id) == "running"
        assert "refuses writes" in bot.logged()

        store.allow()
        await receiver.wait_for(job_id, "delivered", timeout=30)
        await bot.wait_state(job_id, "succeeded")
        assert (await bot.health()).status_code == 200
        assert len([d for d in receiver.deliveries.values() if d.job_id == job_id]) == 1
        assert not [e for e in receiver.for_job(job_id) if e["event"] == "failed"]
        assert len(await _provider_tasks(simulator)) == 1  # resumed by polling, never resubmitted
        again = await bot.post_job(f"a pier {CHEAP}", receiver.url, user="bo")
        assert again.json()["job_id"] == job_id + 1  # the refused submit stored nothing
    finally:
        store.allow()
        await bot.stop()
        await receiver.stop()
        store.close()


# --- 3. limits never fail open while the bot runs ------------------------------------------------


async def test_limits_file_emptied_or_removed_while_a_user_submits_keeps_the_quota(
    tmp_path: Path, simulator: str  # noqa: F811
) -> None:
    limits = tmp_path / "videobot.toml"
    good = "[defaults]\nuser_daily_jobs = 2\nuser_concurrent_jobs = 0\n"
    limits.write_text(good)
    receiver = await WebhookReceiver(tmp_path).start()
    bot = Serve(tmp_path, simulator)
    try:
        await bot.start()
        answers = [await bot.post_job(f"a lake {CHEAP}", receiver.url) for _ in range(2)]
        assert [a.status_code for a in answers] == [202, 202]

        # an editor that truncates before it writes, and one that deletes and recreates
        for breakage in ("empty", "missing", "empty"):
            if breakage == "empty":
                limits.write_text("")
            else:
                limits.unlink()
            await asyncio.sleep(0.5)  # well past the store's 0.2 s look at the file
            for _ in range(3):
                answer = await bot.post_job(f"a pier {CHEAP}", receiver.url)
                assert answer.status_code == 429, (breakage, answer.text)
                assert "2 of your 2 videos" in answer.json()["error"]
            limits.write_text(good)
            await asyncio.sleep(0.5)
        assert (await bot.post_job(f"a pier {CHEAP}", receiver.url)).status_code == 429

        log = bot.logged()
        assert log.count("is empty") == 2, log  # once per broken edit, not once per request
        assert log.count("is missing") == 1, log
    finally:
        await bot.stop()
        await receiver.stop()


async def test_banner_says_the_builtin_defaults_apply_when_the_file_is_missing_at_start(
    tmp_path: Path, simulator: str  # noqa: F811
) -> None:
    bot = Serve(tmp_path, simulator)
    try:
        await bot.start()
        await asyncio.sleep(0.3)
        assert "not found: built-in defaults" in " ".join(bot.logged().split())
    finally:
        await bot.stop()


# --- 7. a download that trickles does not keep a job fetching forever ----------------------------


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"VIDEOBOT_DOWNLOAD_STALL_TIMEOUT": "1.5"}, "download stalled"),
        ({"VIDEOBOT_DOWNLOAD_STALL_TIMEOUT": "60", "VIDEOBOT_JOB_TIMEOUT": "3"}, "took longer than 3 s"),
    ],
    ids=["stall-timeout", "job-timeout"],
)
async def test_a_trickling_download_fails_the_job_and_tells_the_person(
    tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    receiver = await WebhookReceiver(tmp_path).start()
    async with FakeProvider() as provider:
        url = provider.serve_video(100_000, trickle_s=0.3)  # a byte every 0.3 s: 8 hours for the clip
        provider.queue("poll", Reply(json={"status": "succeeded", "progress": 1, "output": {"video_url": url}}))
        bot = Serve(tmp_path, provider.base_url, **env)
        try:
            await bot.start()
            answer = await bot.post_job(f"a lake {CHEAP}", receiver.url)
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job_id"]
            await bot.wait_state(job_id, "fetching", timeout=10)
            failed = await receiver.wait_for(job_id, "failed", timeout=20)
            assert reason in failed["message"]
            await bot.wait_state(job_id, "failed", timeout=5)
            assert len(provider.requests_to("video")) == 1
        finally:
            await bot.stop()
            await receiver.stop()


# --- 2. one serve drives a database; a second refuses, or stands by ------------------------------


async def test_a_second_serve_on_the_same_database_refuses_to_start_and_names_the_holder(
    tmp_path: Path, simulator: str  # noqa: F811
) -> None:
    first = Serve(tmp_path, simulator, name="first")
    second = Serve(tmp_path, simulator, name="second")
    try:
        await first.start()
        with second.log.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "serve", stdout=log, stderr=log, env=second.env
            )
            assert await asyncio.wait_for(process.wait(), 30) == 1
        said = " ".join(second.logged().split())
        assert "Another videobot serve drives this database" in said, said
        assert f"pid {first.process.pid}" in said
        assert "--standby" in said
        assert (await first.health()).status_code == 200
    finally:
        await first.stop()


async def _start_standby(serve: Serve) -> None:
    with serve.log.open("ab") as log:
        serve.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve", "--standby", stdout=log, stderr=log, env=serve.env
        )
    for _ in range(600):
        if "Standby:" in serve.logged():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no standby:\n{serve.logged()}")


async def _wait_until_healthy(serve: Serve, timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.1)):
        try:
            if (await serve.health()).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"never healthy:\n{serve.logged()[-3000:]}")


@pytest.mark.parametrize("fault", ["kill-9", "paused"])
async def test_a_standby_takes_over_the_jobs_and_no_job_is_driven_twice(
    tmp_path: Path, simulator: str, fault: str  # noqa: F811
) -> None:
    receiver = await WebhookReceiver(tmp_path).start()
    first = Serve(tmp_path, simulator, name="first", VIDEOBOT_LEASE_TTL="3")
    second = Serve(tmp_path, simulator, name="second", VIDEOBOT_LEASE_TTL="3")
    try:
        await first.start()
        await _start_standby(second)
        ids = []
        for n in range(3):
            answer = await first.post_job(f"[sim:slow=4] a lake {CHEAP}", receiver.url, user=f"u{n}")
            ids.append(answer.json()["job_id"])
        await first.wait_state(ids[0], "running")
        await asyncio.sleep(3)  # a standby that drove anything now would double the provider's tasks
        assert len(await _provider_tasks(simulator)) == 2  # concurrency 2: the third still queued
        assert "resuming" not in second.logged()

        if fault == "kill-9":
            first.kill()
            await first.process.wait()
        else:
            first.process.send_signal(signal.SIGSTOP)  # a holder that stalls past its lease
        await _wait_until_healthy(second)
        if fault == "paused":
            await asyncio.sleep(0.5)
            first.process.send_signal(signal.SIGCONT)  # it wakes up sure it still drives the jobs
        for job_id in ids:
            await receiver.wait_for(job_id, "delivered", timeout=60)
            await second.wait_state(job_id, "succeeded")
        await asyncio.sleep(1)
        for job_id in ids:
            delivered = [d for d in receiver.deliveries.values() if d.job_id == job_id]
            assert len(delivered) == 1, f"job {job_id} delivered {len(delivered)} times"
        assert len(await _provider_tasks(simulator)) == len(ids), "a job was submitted to the provider twice"
        assert "Took over the engine lease" in second.logged()
        if fault == "paused":
            assert "Lost the engine lease" in first.logged()
            assert (await first.health()).json()["status"] == "standby"
    finally:
        if first.process is not None and first.process.returncode is None:
            first.process.send_signal(signal.SIGCONT)
        await first.stop()
        await second.stop()
        await receiver.stop()


async def test_a_runner_whose_lease_lapsed_submits_and_delivers_nothing(make_core, receiver) -> None:
    from bot.grammar import parse_request
    from tests.conftest import webhook_origin

    core = await make_core("[defaults]\nresolutions = [\"832x480\"]\n", start=False)
    assert await core.lease.acquire()
    await core.drive()
    lapsed = [False]
    core.runner.may_drive = lambda: core.lease.fresh() and not lapsed[0]
    job = await core.service.submit(parse_request("[sim:slow=1] a lake --duration 1 --resolution 832x480"),
                                    webhook_origin(receiver))
    while (await core.service.status(job.id)).state != "running":
        await asyncio.sleep(0.02)
    lapsed[0] = True  # as if the process had stalled past its lease
    second = await core.service.submit(parse_request("a pier --duration 1 --resolution 832x480"),
                                       webhook_origin(receiver, user="bo"))
    await asyncio.sleep(2.5)
    assert (await core.service.status(job.id)).state == "running"  # left for the holder, not failed
    assert (await core.service.status(second.id)).state == "queued"  # never submitted
    assert not [e for e in receiver.events if e["event"] in ("delivered", "failed")]
    assert core.runner.active_count == 0


async def test_a_lease_renewed_late_drives_the_jobs_it_fenced_again(make_core, receiver, caplog) -> None:
    import logging

    from bot.grammar import parse_request
    from tests.conftest import webhook_origin

    core = await make_core("[defaults]\nresolutions = [\"832x480\"]\n", start=False, lease_ttl_s=2.0)
    assert await core.lease.acquire()
    await core.drive()
    job = await core.service.submit(parse_request("[sim:slow=1] a lake --duration 1 --resolution 832x480"),
                                    webhook_origin(receiver))
    while (await core.service.status(job.id)).state != "running":
        await asyncio.sleep(0.02)
    with caplog.at_level(logging.INFO):
        core.lease._renewed -= 10  # as if the process had stalled: the job stops at the fence
        await receiver.wait_for(job.id, "delivered", timeout=30)
    assert "renewed late" in caplog.text
    assert f"job {job.id}: left" in caplog.text and "no longer holds the engine lease" in caplog.text
    assert len([d for d in receiver.deliveries.values() if d.job_id == job.id]) == 1
