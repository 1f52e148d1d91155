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

    python benchmarks/slack_ack_latency.py --requests 200 --rounds 6

On a 2-core machine the noise floor (a bare app against itself) is a p99 ratio of about 0.9-1.3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
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
"""


# -- the child processes -----------------------------------------------------------------------


async def _serve_fake() -> None:
    from tests.fakes.slack_api import FakeSlack

    fake = await FakeSlack().start()
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


async def _serve_videobot(api_url: str, data_dir: Path) -> None:
    from adapters.slack import build_adapter
    from bot.app import Core, freeze_startup_heap
    from bot.settings import Settings

    (data_dir / "videobot.toml").write_text(UNLIMITED)
    settings = Settings(
        backend="simulator",
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
    freeze_startup_heap()  # as `videobot serve` does once every adapter has started
    print(json.dumps({"port": adapter.port}), flush=True)
    await asyncio.Event().wait()


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


async def _drive(requests: int, rounds: int, warmup: int, self_check: bool) -> None:
    children: list[subprocess.Popen[str]] = []
    try:
        fake, fake_info = _spawn("fake")
        children.append(fake)
        data_dir = Path(tempfile.mkdtemp(prefix="videobot-bench-"))
        bare, bare_info = _spawn("bare", "--api-url", fake_info["api_url"])
        if self_check:
            videobot, videobot_info = _spawn("bare", "--api-url", fake_info["api_url"])
        else:
            videobot, videobot_info = _spawn("videobot", "--api-url", fake_info["api_url"], "--data-dir", str(data_dir))
        children += [bare, videobot]
        ports = {"bare Bolt": bare_info["port"], "videobot": videobot_info["port"]}
        contender = "bare Bolt #2" if self_check else "videobot"
        posted = 0

        async def measure(app: str, count: int, round_no: int) -> list[float]:
            nonlocal posted
            latencies = await _burst(ports[app], count, round_no, app)
            if app == "videobot" and not self_check:
                posted += count
                await _settled(fake_info["counts_url"], posted)
            else:
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
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait()

    print(f"/video ack latency, {requests} concurrent signed requests per round, {rounds} rounds, loopback")
    print(f"{'':12} {'p50':>10} {'p99':>10} {'max':>10}")
    for app, values in results.items():
        name = contender if app == "videobot" else app
        print(f"{name:12} {_ms(_pct(values, 0.5)):>10} {_ms(_pct(values, 0.99)):>10} {_ms(max(values)):>10}")
    ratio_p50 = _pct(results["videobot"], 0.5) / _pct(results["bare Bolt"], 0.5)
    ratio_p99 = _pct(results["videobot"], 0.99) / _pct(results["bare Bolt"], 0.99)
    print(f"{contender} / bare Bolt: p50 {ratio_p50:.2f}x, p99 {ratio_p99:.2f}x")
    rounds_text = ", ".join(f"{r['videobot'] / r['bare Bolt']:.2f}" for r in per_round)
    print(
        f"p99 ratio per round: {rounds_text} (median {statistics.median(r['videobot'] / r['bare Bolt'] for r in per_round):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--self-check", action="store_true", help="measure a second bare Bolt app in videobot's place: the noise floor"
    )
    parser.add_argument("--serve", choices=("fake", "bare", "videobot"), help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.serve == "fake":
        asyncio.run(_serve_fake())
    elif args.serve == "bare":
        asyncio.run(_serve_bare(args.api_url))
    elif args.serve == "videobot":
        asyncio.run(_serve_videobot(args.api_url, args.data_dir))
    else:
        asyncio.run(_drive(args.requests, args.rounds, args.warmup, args.self_check))


if __name__ == "__main__":
    main()
