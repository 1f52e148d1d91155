"""Discord adapter figures: how fast an interaction is deferred, and what fitting a clip costs.

    python benchmarks/discord_latency.py [--interactions 200]

1. Gateway event → deferred response. The real discord.py client, the adapter and the core
   (simulator backend) run against the fake Discord on loopback. The time runs from the fake
   writing INTERACTION_CREATE to the websocket until it receives the defer callback, so it
   covers decompression, parsing, command dispatch and the HTTP round trip. ``/video`` prompts
   carry ``[sim:hang]`` so generation costs no CPU: what is measured is the adapter, not ffmpeg.
   Two runs: one interaction at a time (each after the previous job's thread exists), and all
   at once (a burst, as when a busy server's members press Enter together).
2. Re-encoding a 10 s 1280x720 24 fps clip that is over Discord's 10 MiB limit, with the same
   ``fit_to_size`` call (and headroom) the notifier makes, and the size it ends at.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.discord import build_adapter
from adapters.discord.notifier import UPLOAD_HEADROOM_BYTES
from bot.app import Core
from tests.clips import lavfi_clip
from bot.media import fit_to_size, probe
from bot.settings import Settings
from tests.fakes.discord_server import FakeDiscord, FakeInteraction, running_fake_discord

MiB = 1024 * 1024
DISCORD_LIMIT = 10 * MiB


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(name: str, latencies: list[float]) -> str:
    ms = [v * 1000 for v in latencies]
    return (
        f"{name:<28} n={len(ms):<4} p50={percentile(ms, 50):7.2f} ms  p99={percentile(ms, 99):7.2f} ms  "
        f"max={max(ms):7.2f} ms  mean={statistics.fmean(ms):7.2f} ms"
    )


async def defer_latency(count: int, workdir: Path) -> None:
    async with running_fake_discord() as fake:
        guild = fake.add_guild()
        channel = fake.add_text_channel(guild)
        members = [fake.add_user(f"member{n}") for n in range(count)]
        for member in members:
            fake.add_member(guild, member)
        limits = workdir / "videobot.toml"
        limits.write_text(
            "queue_cap = 0\n[defaults]\nuser_daily_jobs = 0\nuser_concurrent_jobs = 0\nworkspace_daily_jobs = 0\n"
        )
        settings = Settings(
            data_dir=workdir / "data",
            limits_path=limits,
            discord_token=fake.bot_token,
            discord_guild_ids=(guild.id,),
        )
        core = await Core.create(settings)
        await core.start()
        adapter = build_adapter(settings, core.service, guild_ready_timeout=0.05)
        await adapter.start()
        await adapter.wait_until_ready()
        try:
            sequential: list[float] = []
            for member in members:
                interaction = await fake.slash_command(channel, member, "video", {"prompt": "a kite [sim:hang]"})
                await interaction.responded.wait()
                sequential.append(interaction.answer_latency)
                await fake.wait_for(functools.partial(_settled, fake, interaction))

            burst_started = [
                await fake.slash_command(channel, member, "video", {"prompt": "a kite [sim:hang]"})
                for member in members
            ]
            await asyncio.wait_for(asyncio.gather(*(i.responded.wait() for i in burst_started)), 60)
            burst = [i.answer_latency for i in burst_started]
            # let every handler finish its job's status message before shutting down
            await fake.wait_for(lambda: all(_settled(fake, i) for i in burst_started), timeout=120)
        finally:
            await adapter.stop()
            await core.stop()
    print(summary("/video one at a time", sequential))
    print(summary(f"/video burst of {count}", burst))
    late = sum(1 for v in sequential + burst if v > 3.0)
    print(f"{'answered after 3 s':<28} {late} of {len(sequential) + len(burst)}")


def _settled(fake: FakeDiscord, interaction: FakeInteraction) -> bool:
    """The handler is done: its status message has a thread, or it was refused."""
    return interaction.original_deleted or interaction.original_message_id in fake.channels


def reencode(workdir: Path) -> None:
    source = workdir / "clip-10s-720p-24fps.mp4"
    lavfi_clip(source, "testsrc2=s=1280x720:r=24:d=10,noise=alls=14:allf=t+u", options={"crf": "20"}, preset="veryfast")
    before = probe(source)
    out = workdir / "fitted.mp4"
    started = time.perf_counter()
    fitted = fit_to_size(source, out, DISCORD_LIMIT - UPLOAD_HEADROOM_BYTES)
    seconds = time.perf_counter() - started
    after = probe(fitted)
    print(
        f"re-encode 10 s 720p 24 fps    {before.size_bytes / MiB:.1f} MiB -> {after.size_bytes / MiB:.2f} MiB "
        f"in {seconds:.2f} s ({after.width}x{after.height}, {after.duration_s:.2f} s, {after.frames} frames, "
        f"limit {DISCORD_LIMIT / MiB:.0f} MiB)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interactions", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, loopback")
    with tempfile.TemporaryDirectory(prefix="videobot-bench-") as tmp:
        await defer_latency(args.interactions, Path(tmp))
        await asyncio.to_thread(reencode, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
