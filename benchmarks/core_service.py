"""Figures for the core: submit latency, end-to-end throughput, peak RSS, overhead per job.

The simulator runs as its own process at zero latency serving a cached clip, so what is
measured is the service (validation, limits, SQLite writes, HTTP to the backend, download,
probe, delivery), not ffmpeg. The notifier only records deliveries.

    python benchmarks/core_service.py [--jobs 1000] [--users 50] [--sequential 50]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bot.app import Core
from bot.backends.http import HttpBackend
from bot.grammar import parse_request
from bot.models import Clip, GenerationSpec, Origin, TaskStatus
from bot.notifier import DeliveryCheckpoint, ProgressUpdate, StatusMessage
from bot.settings import Settings
from storage.tables import Job

LIMITS = """\
queue_cap = 0
[defaults]
user_daily_jobs = 0
user_concurrent_jobs = 0
workspace_daily_jobs = 0
resolutions = ["1280x720"]
"""
PROMPT = "a red fox running through fresh snow --duration 5 --resolution 1280x720"


class CountingNotifier:
    platform = "bench"

    def __init__(self) -> None:
        self.delivered: dict[int, float] = {}
        self.done = asyncio.Event()
        self.expected = 0

    async def acknowledge(self, job: Job, queue_position: int) -> StatusMessage | None:
        return None

    async def progress(self, job: Job, update: ProgressUpdate) -> None:
        return None

    async def deliver(self, job: Job, clip: Clip, checkpoint: DeliveryCheckpoint) -> str:
        self.delivered[job.id or 0] = time.perf_counter()
        if len(self.delivered) >= self.expected:
            self.done.set()
        return f"bench-{job.id}"

    async def fail(self, job: Job, message: str) -> None:
        raise SystemExit(f"job {job.id} failed: {message}")


def start_simulator(folder: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "simulator", "--port", "0", "--cache-clips", "--max-parallel", "64",
         "--files-dir", str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, line.split(" at ", 1)[1].split()[0]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def bare_round_trips(base_url: str, count: int, folder: Path) -> list[float]:
    """The backend alone: submit, poll until done, download; what any client must pay."""
    backend = HttpBackend(base_url, max_concurrency=4)
    spec = GenerationSpec(prompt="a red fox running through fresh snow", width=1280, height=720, duration_s=5, fps=16, seed=1)
    times = []
    for i in range(count):
        started = time.perf_counter()
        task = await backend.submit(spec)
        delay = 0.05
        while (state := await backend.poll(task)).status is not TaskStatus.SUCCEEDED:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        await backend.fetch(state, folder / f"bare-{i}.mp4", 200 * 1024 * 1024)
        times.append(time.perf_counter() - started)
    await backend.aclose()
    return times


async def run(jobs: int, users: int, sequential: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="videobot-bench-"))
    simulator, base_url = start_simulator(root / "sim")
    try:
        (root / "videobot.toml").write_text(LIMITS)
        settings = Settings(data_dir=root / "data", limits_path=root / "videobot.toml", poll_interval_s=0.2,
                            progress_interval_s=3.0, http_port=0)
        backend = HttpBackend(base_url, name="http", max_concurrency=32)
        core = await Core.create(settings, backend=backend)
        notifier = CountingNotifier()
        core.service.register_notifier(notifier)
        await core.start()
        request = parse_request(PROMPT)
        origins = [Origin("bench", "w1", "c1", f"user{u}", f"User {u}") for u in range(users)]

        # warm-up: the simulator renders its one cached clip, connections open
        notifier.expected = 5
        for i in range(5):
            await core.service.submit(request, origins[i % users])
        await notifier.done.wait()

        # sequential: the service's time per job next to the bare backend round trip
        bare = await bare_round_trips(base_url, sequential, root)
        service_times = []
        for i in range(sequential):
            notifier.done.clear()
            notifier.expected = len(notifier.delivered) + 1
            started = time.perf_counter()
            job = await core.service.submit(request, origins[i % users])
            await notifier.done.wait()
            service_times.append(notifier.delivered[job.id or 0] - started)

        # throughput: every user submits their share one after another, all users at once,
        # the way requests arrive from a busy workspace
        notifier.done.clear()
        notifier.expected = len(notifier.delivered) + jobs
        submit_latency: list[float] = []

        async def person(origin: Origin, count: int) -> None:
            for _ in range(count):
                started = time.perf_counter()
                await core.service.submit(request, origin)
                submit_latency.append(time.perf_counter() - started)

        first = time.perf_counter()
        await asyncio.gather(*(person(o, jobs // users + (i < jobs % users)) for i, o in enumerate(origins)))
        submitted = time.perf_counter()
        await notifier.done.wait()
        finished = time.perf_counter()
        burst_latency, submit_latency = submit_latency, []

        # steady: one request at a time while the runner is busy with the ones before it
        notifier.done.clear()
        notifier.expected = len(notifier.delivered) + jobs // 2
        await person(origins[0], jobs // 2)
        await notifier.done.wait()
        await core.stop()
    finally:
        simulator.terminate()
        simulator.wait()

    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bare_ms, service_ms = statistics.median(bare) * 1000, statistics.median(service_times) * 1000
    print(f"submit latency, steady stream ({jobs // 2} submits one after another, runner busy): "
          f"p50 {pct(submit_latency, 50) * 1000:.2f} ms, p99 {pct(submit_latency, 99) * 1000:.2f} ms")
    print(f"submit latency, burst ({jobs} submits from {users} users at once): "
          f"p50 {pct(burst_latency, 50) * 1000:.2f} ms, p99 {pct(burst_latency, 99) * 1000:.2f} ms")
    print(f"throughput: {jobs} jobs in {finished - first:.2f} s = {jobs / (finished - first):.1f} jobs/s end to end "
          f"(submitting took {submitted - first:.2f} s)")
    print(f"peak RSS of the bot process: {rss_mib:.0f} MiB")
    print(f"per job, one at a time ({sequential} each): bare backend round trip {bare_ms:.1f} ms, "
          f"through the service {service_ms:.1f} ms, overhead {service_ms - bare_ms:.1f} ms "
          f"({(service_ms - bare_ms) / bare_ms * 100:.1f}% of the round trip)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.users, args.sequential))


if __name__ == "__main__":
    main()
