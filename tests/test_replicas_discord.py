"""Discord across replicas: each `serve` connects its own shards of the gateway
(``DISCORD_SHARD_COUNT``, ``DISCORD_SHARD_IDS``), hears only its guilds, and a clip is delivered
over REST by whichever replica runs the job, also into a guild it does not hear.

Two cores in this process share one PostgreSQL database and one Temporal dev server
(``VIDEOBOT_ENGINE=temporal``); each runs the real discord.py client against the fake Discord,
whose gateway routes each guild's events to the shard that owns it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import discord
import pytest

from adapters.discord import DiscordAdapter, build_adapter
from adapters.discord.client import ShardedVideobotClient, VideobotClient, make_client
from adapters.discord.notifier import PendingInteractions
from bot.app import Core
from bot.errors import ConfigurationError
from bot.settings import Settings, SettingsError
from storage.tables import JobState
from tests.fakes.discord_server import FakeDiscord, FakeGuild, running_fake_discord, shard_of
from tests.temporal_server import temporal_address  # noqa: F401  (fixture)
from tests.test_settings import clean_env  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

SHARDS = 3
LIMITS = '[defaults]\nresolutions = ["832x480"]\nuser_concurrent_jobs = 0\nuser_daily_jobs = 0\n'


@dataclass
class Replica:
    name: str
    core: Core
    adapter: DiscordAdapter

    @property
    def client(self) -> discord.Client:
        assert self.adapter.client is not None
        return self.adapter.client


@dataclass
class Guild:
    guild: FakeGuild
    channel: Any
    member: Any


async def _replica(
    stack: AsyncExitStack, name: str, settings: Settings, *, workers: bool
) -> Replica:
    core = await Core.create(settings)
    stack.push_async_callback(core.stop)
    await core.engine.start(workers=workers)
    adapter = build_adapter(settings, core.service, guild_ready_timeout=0.05)
    stack.push_async_callback(adapter.stop)
    await adapter.start()
    await asyncio.wait_for(adapter.wait_until_ready(), 20)
    return Replica(name, core, adapter)


def _guild(fake: FakeDiscord, name: str, shard: int) -> Guild:
    guild = fake.add_guild(name, shard=(shard, SHARDS))
    channel = fake.add_text_channel(guild)
    member = fake.add_user(f"{name}-member")
    fake.add_member(guild, member)
    return Guild(guild, channel, member)


async def _clip_in_thread(fake: FakeDiscord, channel: Any) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for thread in fake.threads_of(channel):
            for message in fake.channel_messages(thread.id):
                if message["attachments"] and message["author"]["id"] == str(fake.bot.id):
                    return message
        return None

    return await fake.wait_for(found, timeout=60)


async def _settled(core: Core, count: int) -> list[Any]:
    """The jobs, once ``count`` of them have ended."""
    for _ in range(400):
        jobs = await core.service.db.run(core.service.db.repo.recent, 100)
        if len(jobs) >= count and all(j.job_state.terminal for j in jobs):
            return jobs
        await asyncio.sleep(0.05)
    raise AssertionError(f"jobs not settled: {[(j.id, j.state) for j in jobs]}")


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


@pytest.mark.parametrize("runs_jobs", ["a", "b"])
async def test_replicas_split_the_gateway_by_shard_and_either_delivers_over_rest(
    tmp_path: Path, postgres_url: str, temporal_address: str, stack: AsyncExitStack, runs_jobs: str  # noqa: F811
) -> None:
    fake = await stack.enter_async_context(running_fake_discord())
    one, two = _guild(fake, "one", shard=1), _guild(fake, "two", shard=2)
    (tmp_path / "videobot.toml").write_text(LIMITS)
    base = Settings(
        data_dir=tmp_path / "data",  # one media folder, as replicas share a volume
        limits_path=tmp_path / "videobot.toml",
        database_url=postgres_url,
        engine="temporal",
        temporal_address=temporal_address,
        temporal_task_queue_prefix=f"shards-{runs_jobs}",
        temporal_heartbeat_timeout_s=3.0,
        discord_token=fake.bot_token,
        discord_guild_ids=(one.guild.id, two.guild.id),
        discord_shard_count=SHARDS,
        poll_interval_s=0.1,
        progress_interval_s=0.1,
    )
    # replica a runs shards 0 and 1 (AutoShardedClient), replica b shard 2 (Client(shard_id=2));
    # only one of them runs Temporal workers, so every job is made and delivered there
    a = await _replica(stack, "a", replace(base, discord_shard_ids=(0, 1)), workers=runs_jobs == "a")
    b = await _replica(stack, "b", replace(base, discord_shard_ids=(2,)), workers=runs_jobs == "b")

    assert isinstance(a.client, ShardedVideobotClient) and not isinstance(b.client, ShardedVideobotClient)
    assert isinstance(b.client, VideobotClient) and b.client.shard_id == 2
    assert sorted(tuple(i["shard"]) for i in fake.identifies) == [(0, SHARDS), (1, SHARDS), (2, SHARDS)]
    assert [g.id for g in a.client.guilds] == [one.guild.id]  # shard 1 owns guild one
    assert [g.id for g in b.client.guilds] == [two.guild.id]
    assert shard_of(one.guild.id, SHARDS) == 1 and shard_of(two.guild.id, SHARDS) == 2

    fast = "--duration 1 --resolution 832x480"
    first = await fake.slash_command(one.channel, one.member, "video", {"prompt": f"a heron {fast}"})
    second = await fake.slash_command(two.channel, two.member, "video", {"prompt": f"a kite {fast}"})
    for interaction in (first, second):
        await asyncio.wait_for(interaction.responded.wait(), 3)

    clips = [await _clip_in_thread(fake, g.channel) for g in (one, two)]
    jobs = await _settled(a.core, 2)
    assert sorted((j.workspace_id, j.state) for j in jobs) == sorted(
        [(str(one.guild.id), JobState.SUCCEEDED.value), (str(two.guild.id), JobState.SUCCEEDED.value)]
    )
    assert [len(c["attachments"]) for c in clips] == [1, 1]
    for guild in (one, two):  # exactly one clip in each job's thread
        (thread,) = fake.threads_of(guild.channel)
        posted = [m for m in fake.channel_messages(thread.id) if m["attachments"]]
        assert len(posted) == 1
    worker = a if runs_jobs == "a" else b
    heard_elsewhere = two if runs_jobs == "a" else one
    assert worker.client.get_guild(heard_elsewhere.guild.id) is None  # delivered there over REST alone


@pytest.mark.parametrize(
    ("count", "ids", "problem"),
    [
        (
            "2",
            "0,2",
            "DISCORD_SHARD_IDS=0,2 is not valid: shard ids count from 0 and stay below DISCORD_SHARD_COUNT=2, "
            "so 2 cannot be one.",
        ),
        ("", "1", "DISCORD_SHARD_IDS=1 needs DISCORD_SHARD_COUNT (the total number of shards across every replica)."),
        ("3", "1,1", "DISCORD_SHARD_IDS=1,1 names a shard twice; list each shard once."),
        ("-1", "", "DISCORD_SHARD_COUNT='-1' is not valid: it takes the total number of shards across every replica"),
        ("2", "zero", "DISCORD_SHARD_IDS='zero' is not valid: it takes comma-separated shard numbers counted from 0"),
    ],
)
def test_shard_settings_are_checked_with_one_line_naming_them(
    clean_env: pytest.MonkeyPatch, count: str, ids: str, problem: str  # noqa: F811
) -> None:
    monkeypatch = clean_env
    monkeypatch.setenv("DISCORD_TOKEN", "fake-bot-token.abc.def")
    monkeypatch.setenv("DISCORD_SHARD_COUNT", count)
    monkeypatch.setenv("DISCORD_SHARD_IDS", ids)
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(dotenv=False)
    (line,) = refused.value.problems
    assert line.startswith(problem)


def test_shard_settings_are_read_and_the_adapter_refuses_ids_beyond_the_count(
    clean_env: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    monkeypatch = clean_env
    monkeypatch.setenv("DISCORD_SHARD_COUNT", "4")
    monkeypatch.setenv("DISCORD_SHARD_IDS", " 2, 3 ")
    settings = Settings.from_env(dotenv=False)
    assert (settings.discord_shard_count, settings.discord_shard_ids) == (4, (2, 3))

    class _Service:
        media = None

        def register_notifier(self, notifier: object) -> None: ...

    wrong = Settings(discord_token="t", discord_shard_count=2, discord_shard_ids=(5,))
    with pytest.raises(ConfigurationError, match="so 5 cannot be one"):
        DiscordAdapter(wrong, _Service())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("count", "ids", "sharded", "shard_ids"),
    [(0, (), False, None), (4, (), True, None), (4, (1, 3), True, [1, 3]), (4, (2,), False, None)],
)
async def test_the_client_kind_follows_the_shard_settings(
    count: int, ids: tuple[int, ...], sharded: bool, shard_ids: list[int] | None
) -> None:
    """No count: one unsharded connection; one id: a plain client on that shard; several ids, or
    a count alone (every shard in this process): an AutoShardedClient."""
    client = make_client(None, PendingInteractions(), shard_count=count, shard_ids=ids)  # type: ignore[arg-type]
    # never logged in, so nothing to close
    assert isinstance(client, ShardedVideobotClient) is sharded
    if sharded:
        assert (client.shard_count, client.shard_ids) == (count, shard_ids)
    else:
        assert (client.shard_id, client.shard_count) == ((ids[0], count) if ids else (None, None))
