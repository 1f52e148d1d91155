"""How fast does videobot acknowledge ``/video``, next to a Bolt app that does nothing but ack?

Slack gives an app 3 seconds to answer a slash command. videobot's listener acks before it
touches the database, a file or the Web API, so its ack latency should match a bare Bolt app's.
This script measures both on loopback, the same way, in the same run:

- three child processes: the fake Slack Web API (standing in for Slack's servers, so its work
  does not share a process with either app), videobot's real Slack adapter and core (the
  runner not started, so no clips are rendered; every request still becomes a stored job and a
  status message), and a bare Bolt ``AsyncApp`` whose ``/video`` handler only calls ``ack()``;
- each round sends ``--requests`` concurrent signed ``/video`` requests (fresh connections,
  signed beforehand with slack_sdk's ``SignatureVerifier``) to one app, then the other,
  alternating which goes first; after a videobot round it waits until every status message has
  been posted, so leftover work never spills into the next measurement;
- it prints p50/p99 per app over all rounds, each round's p99, and the ratio.

Two conditions, each with its own videobot process (``--mode idle``, ``busy`` or ``both``):

- **idle**: as above, the runner not started;
- **busy**: the runner started against a zero-latency simulator in its own process (cached
  clips), and videobot keeping ``--busy-jobs`` jobs in flight throughout (submitted for
  Slack users, so each one is fetched, probed, one in ten joined from two segments, and posted
  to the fake Slack); the measured ``/video`` requests arrive on top of that. The load submits
  after waiting its turn in the core's ``Foreground``, as submits from the Slack listeners do.

    python benchmarks/slack_ack_latency.py --requests 200 --rounds 6
    python benchmarks/slack_ack_latency.py --mode busy --busy-jobs 200

On a 2-core machine the noise floor (a bare app against itself) is a p99 ratio of about 0.9-1.3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.slack_api import BOT_TOKEN, SIGNING_SECRET, form_body, sign, slash_command

UNLIMITED = """
queue_cap = 0
[defaults]
user_daily_jobs = 0
user_concurrent_jobs = 0
workspace_daily_jobs = 0
max_duration_s = 20
"""


# -- the child processes -----------------------------------------------------------------------


async def _serve_fake() -> None:
    from tests.fakes.slack_api import FakeSlack

    class Forgetful(FakeSlack):
        """Keeps no clip bytes: a busy run uploads thousands."""

        async def _upload(self, request: Any) -> Any:
            response = await super()._upload(request)
            stored = self.files.get(request.match_info["file_id"])
            if stored is not None:
                stored.content = b""
            return response

    fake = await Forgetful().start()
    print(json.dumps({"api_url": fake.api_url, "counts_url": f"{fake.base_url}/_fake/counts"}), flush=True)
    await asyncio.Event().wait()


async def _serve_bare(api_url: str) -> None:
    from aiohttp import web
    from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
    from slack_bolt.async_app import AsyncAck, AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient

    app = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN, base_url=api_url), signing_secret=SIGNING_SECRET)

    @app.command("/video")
    async def only_ack(ack: AsyncAck) -> None:
        await ack()

    # Served exactly as videobot's adapter serves its app.
    async def handle(request: web.Request) -> web.Response:
        return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

    web_app = web.Application()
    web_app.router.add_post("/slack/events", handle)
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    await asyncio.Event().wait()


async def _serve_videobot(api_url: str, data_dir: Path, simulator_url: str | None, busy_jobs: int) -> None:
    from adapters.slack import build_adapter
    from bot.app import Core, freeze_startup_heap
    from bot.settings import Settings

    (data_dir / "videobot.toml").write_text(UNLIMITED)
    backend: dict[str, Any] = {"backend": "simulator"}
    if simulator_url:
        backend = {"backend": "http", "wan_api_base_url": simulator_url, "max_concurrency": busy_jobs + 50,
                   "poll_interval_s": 0.2}
    settings = Settings(
        **backend,
        data_dir=data_dir,
        limits_path=data_dir / "videobot.toml",
        http_host="127.0.0.1",
        slack_bot_token=BOT_TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_port=0,
        slack_api_url=api_url,
    )
    core = await Core.create(settings)
    adapter = build_adapter(settings, core.service)
    await adapter.start()
    if busy_jobs:
        await core.start()
        asyncio.create_task(_keep_in_flight(core, busy_jobs))
        while core.runner.active_count < busy_jobs:
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)  # past the first wave's submits: jobs at every stage
    freeze_startup_heap()  # as `videobot serve` does once every adapter has started
    print(json.dumps({"port": adapter.port}), flush=True)
    await asyncio.Event().wait()


async def _keep_in_flight(core: Any, target: int) -> None:
    """Submit Slack jobs whenever fewer than ``target`` are in flight; one in ten is two segments."""
    from bot.grammar import parse_request
    from bot.models import Origin
    from tests.fakes.slack_api import TEAM_ID

    short = parse_request("a fox in the snow --duration 5 --resolution 832x480")
    joined = parse_request("a fox in the snow --duration 15 --resolution 832x480")
    made = 0

    async def one(number: int) -> None:
        origin = Origin("slack", TEAM_ID, "C0LOAD", f"ULOAD{number % 50:03d}", "load")
        try:
            await core.service.submit(joined if number % 10 == 0 else short, origin)
        except Exception as error:  # noqa: BLE001 - the load must go on
            logging.getLogger("bench").error("load submit failed: %s", error)

    reported = time.perf_counter()
    while True:
        # Submits made through the Slack listeners wait for a quiet moment (pacing.AckFirst); so do these.
        await core.service.foreground.turn()
        missing = min(target - core.runner.active_count, 25)
        if missing > 0:
            await asyncio.gather(*(one(made + i) for i in range(missing)))
            made += missing
        await asyncio.sleep(0.05)
        if time.perf_counter() - reported > 10:
            reported = time.perf_counter()
            counts = await core.service.db.run(core.service.db.repo.count_by_state)
            print(f"busy videobot: {core.runner.active_count} in flight, {counts}", file=sys.stderr, flush=True)


# -- the driver --------------------------------------------------------------------------------


def _spawn(*args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    child = subprocess.Popen([sys.executable, __file__, "--serve", *args], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, json.loads(child.stdout.readline())


async def _burst(port: int, count: int, round_no: int, app: str) -> list[float]:
    """``count`` concurrent signed /video requests on fresh connections; each one's seconds to ack."""
    url = f"http://127.0.0.1:{port}/slack/events"
    bodies = [
        form_body(slash_command(f"a fox in the snow, take {i}", user=f"U{app[0].upper()}{round_no:02d}{i:04d}"))
        for i in range(count)
    ]
    signed = [(body, {"Content-Type": "application/x-www-form-urlencoded", **sign(body)}) for body in bodies]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:

        async def one(body: str, headers: dict[str, str]) -> float:
            started = time.perf_counter()
            async with session.post(url, data=body.encode(), headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{app}: HTTP {response.status}")
            return time.perf_counter() - started

        return list(await asyncio.gather(*(one(b, h) for b, h in signed)))


async def _settled(counts_url: str, posts: int, timeout_s: float = 120) -> float:
    """Wait until the fake Slack has seen ``posts`` status messages; return how long it took."""
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(counts_url) as response:
                counts = await response.json()
            if counts.get("chat.postMessage", 0) >= posts:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout_s:
                raise RuntimeError(f"only {counts.get('chat.postMessage', 0)} of {posts} status messages posted")
            await asyncio.sleep(0.05)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


async def _condition(
    busy_jobs: int, requests: int, rounds: int, warmup: int, self_check: bool
) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """Measure both apps over ``rounds`` rounds; videobot idle (``busy_jobs`` 0) or busy."""
    children: list[subprocess.Popen[str]] = []
    try:
        fake, fake_info = _spawn("fake")
        children.append(fake)
        data_dir = Path(tempfile.mkdtemp(prefix="videobot-bench-"))
        extra: list[str] = []
        if busy_jobs:
            simulator, simulator_url = _start_simulator(data_dir / "simulator")
            children.append(simulator)
            extra = ["--simulator-url", simulator_url, "--busy-jobs", str(busy_jobs)]
        bare, bare_info = _spawn("bare", "--api-url", fake_info["api_url"])
        if self_check:
            videobot, videobot_info = _spawn("bare", "--api-url", fake_info["api_url"])
        else:
            videobot, videobot_info = _spawn(
                "videobot", "--api-url", fake_info["api_url"], "--data-dir", str(data_dir), *extra
            )
        children += [bare, videobot]
        ports = {"bare Bolt": bare_info["port"], "videobot": videobot_info["port"]}
        posted = 0

        async def measure(app: str, count: int, round_no: int) -> list[float]:
            nonlocal posted
            latencies = await _burst(ports[app], count, round_no, app)
            if app == "videobot" and not self_check and not busy_jobs:
                posted += count
                await _settled(fake_info["counts_url"], posted)
            else:  # busy: the load keeps posting anyway; nothing to settle
                await asyncio.sleep(0.5)
            return latencies

        for app in ports:
            await measure(app, warmup, 0)
        results: dict[str, list[float]] = {app: [] for app in ports}
        per_round: list[dict[str, float]] = []
        for round_no in range(1, rounds + 1):
            order = list(ports) if round_no % 2 else list(reversed(ports))
            this_round: dict[str, float] = {}
            for app in order:
                latencies = await measure(app, requests, round_no)
                results[app] += latencies
                this_round[app] = _pct(latencies, 0.99)
            per_round.append(this_round)
        if busy_jobs and videobot.poll() is not None:
            raise RuntimeError("the busy videobot process died during the measurement")
        return results, per_round
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait()


def _start_simulator(folder: Path) -> tuple[subprocess.Popen[str], str]:
    """The zero-latency simulator in its own process, serving one cached clip per shape."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "simulator", "--port", "0", "--cache-clips", "--max-parallel", "512",
         "--files-dir", str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    return process, line.split(" at ", 1)[1].split()[0]


def _report(
    title: str, contender: str, results: dict[str, list[float]], per_round: list[dict[str, float]]
) -> tuple[float, float]:
    print(title)
    print(f"{'':12} {'p50':>10} {'p99':>10} {'max':>10}")
    for app, values in results.items():
        name = contender if app == "videobot" else app
        print(f"{name:12} {_ms(_pct(values, 0.5)):>10} {_ms(_pct(values, 0.99)):>10} {_ms(max(values)):>10}")
    ratio_p50 = _pct(results["videobot"], 0.5) / _pct(results["bare Bolt"], 0.5)
    ratio_p99 = _pct(results["videobot"], 0.99) / _pct(results["bare Bolt"], 0.99)
    print(f"{contender} / bare Bolt: p50 {ratio_p50:.2f}x, p99 {ratio_p99:.2f}x")
    ratios = [r["videobot"] / r["bare Bolt"] for r in per_round]
    print(f"p99 ratio per round: {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})")
    return ratio_p50, ratio_p99


async def _drive(requests: int, rounds: int, warmup: int, self_check: bool, mode: str, busy_jobs: int) -> None:
    contender = "bare Bolt #2" if self_check else "videobot"
    figures: dict[str, tuple[float, float]] = {}
    for condition in ("idle", "busy") if mode == "both" else (mode,):
        load = busy_jobs if condition == "busy" else 0
        results, per_round = await _condition(load, requests, rounds, warmup, self_check)
        where = f", videobot with {load} jobs in flight" if load else ", videobot idle"
        title = f"[{condition}] /video ack latency, {requests} concurrent signed requests per round, {rounds} rounds, loopback{where}"
        figures[condition] = _report(title, contender, results, per_round)
        print()
    for condition, (p50, p99) in figures.items():
        print(f"{condition:5} {contender} / bare Bolt: p50 {p50:.2f}x, p99 {p99:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--self-check", action="store_true", help="measure a second bare Bolt app in videobot's place: the noise floor"
    )
    parser.add_argument("--mode", choices=("idle", "busy", "both"), default="both",
                        help="videobot idle, busy with jobs in flight, or one after the other")
    parser.add_argument("--busy-jobs", type=int, default=200, help="jobs kept in flight in the busy mode")
    parser.add_argument("--serve", choices=("fake", "bare", "videobot"), help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--simulator-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.serve == "fake":
        asyncio.run(_serve_fake())
    elif args.serve == "bare":
        asyncio.run(_serve_bare(args.api_url))
    elif args.serve == "videobot":
        # Exit (not die) when the driver terminates it, so the media pool's workers exit too.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(_serve_videobot(args.api_url, args.data_dir, args.simulator_url, args.busy_jobs if args.simulator_url else 0))
    else:
        asyncio.run(_drive(args.requests, args.rounds, args.warmup, args.self_check, args.mode, args.busy_jobs))


if __name__ == "__main__":
    main()
