"""How fast the admin pages answer with many jobs in the database (default 10,000).

Fills a fresh SQLite file with jobs spread over the last 60 days (most finished, some queued
and running, with their events), starts a core with the admin page on loopback, signs in and
times each page over HTTP: the server's whole answer, as a browser on the same machine waits
for it. Prints the median and 95th percentile per page.

    python benchmarks/admin_page.py [--jobs 10000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert

from adapters.admin import AdminSite
from bot.app import Core
from bot.settings import Settings
from storage.engine import make_engine, upgrade
from storage.tables import Job, JobEvent, utcnow

TOKEN = "benchmark-admin-token"
STATES = ["succeeded"] * 80 + ["failed"] * 10 + ["canceled"] * 6 + ["queued"] * 2 + ["running"] * 2
PROMPTS = ["a red fox in fresh snow", "waves on a black sand beach", "a city at night in the rain",
           "a paper boat on a puddle", "a heron taking off from the reeds"]


def fill(database: str, count: int) -> None:
    """``count`` jobs and three events each, written in bulk (not through the service: setup, not measured)."""
    engine = make_engine(database)
    upgrade(engine)
    rng = random.Random(7)
    now = utcnow()
    jobs, events = [], []
    for n in range(1, count + 1):
        created = now - timedelta(seconds=rng.uniform(0, 60 * 86400))
        state = rng.choice(STATES)
        user = f"U{rng.randrange(200):04d}"
        jobs.append({
            "id": n, "kind": "generate", "prompt": f"{rng.choice(PROMPTS)} #{n}", "mode": "t2v", "duration_s": 5,
            "width": 1280, "height": 720, "fps": 16, "seed": n, "quality": "standard",
            "platform": rng.choice(["slack", "discord"]), "workspace_id": f"T{rng.randrange(8)}",
            "channel_id": "C1", "user_id": user, "user_name": f"user {user}", "is_admin": False, "origin_extra": {},
            "state": state, "backend": "simulator", "model": "", "progress": 1.0 if state == "succeeded" else 0.3,
            "cost_usd": 0.5, "counts_toward_quota": True, "created_at": created, "updated_at": created,
            "finished_at": created + timedelta(minutes=3) if state in ("succeeded", "failed", "canceled") else None,
            "error": "The video service is busy (HTTP 429) — try again in a minute." if state == "failed" else None,
            "loop": False, "shots": "single", "audio": False, "segment_index": 0, "segment_count": 1,
            "negative_prompt": "",
        })
        for k, to in enumerate(("queued", "running", state)):
            events.append({"job_id": n, "at": created + timedelta(seconds=30 * k), "to_state": to, "detail": ""})
    with engine.begin() as connection:
        connection.execute(insert(Job), jobs)
        connection.execute(insert(JobEvent), events)
    engine.dispose()


async def measure(count: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        data.mkdir()
        settings = Settings(data_dir=data, limits_path=Path(folder) / "videobot.toml", http_port=0)
        started = time.perf_counter()
        fill(settings.database, count)
        print(f"{count:,} jobs written in {time.perf_counter() - started:.1f} s")
        core = await Core.create(settings)
        site = AdminSite(core, TOKEN)
        port = await core.serve_ops("127.0.0.1", 0, site.routes())
        pages = {
            "queue /admin": "/admin",
            "queue live part": "/admin/live/queue",
            "jobs, newest page": "/admin/jobs",
            "jobs, page 100": "/admin/jobs?page=100",
            "jobs by user+state": "/admin/jobs?user=U0042&state=succeeded",
            "jobs, prompt text": "/admin/jobs?q=heron",
            "one job": f"/admin/jobs/{count // 2}",
            "usage": "/admin/usage",
            "usage CSV": "/admin/usage.csv",
            "limits": "/admin/limits",
        }
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                assert (await client.post("/admin/login", data={"token": TOKEN})).status_code == 303
                print(f"{'page':<22}{'median ms':>10}{'p95 ms':>10}")
                worst = 0.0
                for name, path in pages.items():
                    await client.get(path)  # warm: templates compiled, caches filled
                    times = []
                    for _ in range(rounds):
                        t0 = time.perf_counter()
                        answer = await client.get(path)
                        times.append((time.perf_counter() - t0) * 1000)
                        assert answer.status_code == 200, (path, answer.status_code)
                    p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
                    worst = max(worst, p95)
                    print(f"{name:<22}{statistics.median(times):>10.1f}{p95:>10.1f}")
                print(f"slowest page p95: {worst:.1f} ms with {count:,} jobs (target: under 200 ms)")
        finally:
            await core.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(measure(args.jobs, args.rounds))


if __name__ == "__main__":
    main()
