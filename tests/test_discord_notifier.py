"""DiscordNotifier against the fake Discord with a logged-in discord.py client: exactly-once
delivery, the switch from the interaction token to the channel API, and edit pacing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import discord
import pytest

from adapters.discord.notifier import DiscordNotifier, delivery_nonce
from bot.errors import BackendError
from tests.clips import lavfi_clip
from bot.media import probe
from bot.models import Clip
from bot.notifier import ProgressUpdate, Stage
from storage.tables import Job
from tests.fakes.discord_server import ATTACH_FILES, FakeChannel, FakeDiscord, FakeUser, running_fake_discord


class MemoryCheckpoint:
    """The runner's checkpoint, minus the database."""

    def __init__(self, pending_ref: str | None = None) -> None:
        self.pending_ref = pending_ref

    async def save(self, ref: str) -> None:
        self.pending_ref = ref


@dataclass
class Setup:
    fake: FakeDiscord
    channel: FakeChannel
    thread: FakeChannel
    alice: FakeUser
    notifier: DiscordNotifier
    clip: Clip
    now: list[float]

    def job(self, job_id: int = 7, **fields: Any) -> Job:
        values: dict[str, Any] = dict(
            id=job_id,
            prompt="a heron takes off",
            duration_s=1,
            seed=11,
            platform="discord",
            workspace_id=str(self.channel.guild_id),
            channel_id=str(self.channel.id),
            thread_id=str(self.thread.id),
            user_id=str(self.alice.id),
        )
        values.update(fields)
        return Job(**values)

    def clips(self) -> list[dict[str, object]]:
        return [m for m in self.fake.channel_messages(self.thread.id) if m["attachments"]]


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    lavfi_clip(path, "testsrc2=s=320x240:r=16:d=1")
    return Clip(path=path, info=probe(path), caption="“a heron takes off” · 1 s · seed 11")


@pytest.fixture
async def setup(small_clip: Clip) -> AsyncIterator[Setup]:
    async with running_fake_discord() as fake:
        guild = fake.add_guild()
        channel = fake.add_text_channel(guild)
        alice = fake.add_user("alice")
        fake.add_member(guild, alice)
        thread = fake.add_thread(channel, "job thread", alice)
        client = discord.Client(intents=discord.Intents.none())
        await client.login(fake.bot_token)
        now = [time.time()]
        notifier = DiscordNotifier(clock=lambda: now[0])
        notifier.attach(client)
        try:
            yield Setup(fake, channel, thread, alice, notifier, small_clip, now)
        finally:
            await client.close()


async def test_a_retried_delivery_finds_the_earlier_clip_instead_of_posting_again(setup: Setup) -> None:
    setup.fake.nonce_window_s = 0  # the retry comes after Discord has forgotten the nonce
    job = setup.job()
    checkpoint = MemoryCheckpoint()
    first = await setup.notifier.deliver(job, setup.clip, checkpoint)
    assert checkpoint.pending_ref == delivery_nonce(job)
    (sent,) = setup.fake.calls_to("POST", f"/channels/{setup.thread.id}/messages")
    assert sent.json["nonce"] == delivery_nonce(job) and sent.json["enforce_nonce"] is True

    again = await setup.notifier.deliver(job, setup.clip, MemoryCheckpoint(checkpoint.pending_ref))
    assert again == first
    assert len(setup.clips()) == 1
    assert len(setup.fake.calls_to("POST", f"/channels/{setup.thread.id}/messages")) == 1


async def test_past_the_recent_messages_the_nonce_still_stops_a_second_clip(setup: Setup) -> None:
    job = setup.job()
    first = await setup.notifier.deliver(job, setup.clip, MemoryCheckpoint())
    for n in range(60):  # a busy thread pushes the clip out of the messages a retry looks at
        await setup.fake.post_user_message(setup.thread, setup.alice, f"nice {n}")
    again = await setup.notifier.deliver(job, setup.clip, MemoryCheckpoint(delivery_nonce(job)))
    assert again == first
    assert len(setup.clips()) == 1
    assert len(setup.fake.calls_to("POST", f"/channels/{setup.thread.id}/messages")) == 2  # Discord deduplicated


async def test_another_job_is_not_mistaken_for_an_earlier_delivery(setup: Setup) -> None:
    await setup.notifier.deliver(setup.job(7), setup.clip, MemoryCheckpoint())
    await setup.notifier.deliver(setup.job(8), setup.clip, MemoryCheckpoint(delivery_nonce(setup.job(8))))
    assert len(setup.clips()) == 2


async def test_a_thread_without_attach_files_fails_the_delivery_with_a_reason(setup: Setup) -> None:
    setup.channel.bot_deny = ATTACH_FILES
    with pytest.raises(BackendError, match="won't let me post"):
        await setup.notifier.deliver(setup.job(), setup.clip, MemoryCheckpoint())
    assert setup.clips() == []


async def _status_job(setup: Setup) -> Job:
    """A job whose status message the bot posted in the channel, with a (fake) interaction token."""
    interaction = await setup.fake.slash_command(setup.channel, setup.alice, "video")
    status = setup.fake.respond_as_bot(interaction, "queued")
    return setup.job(
        status_ref=f"{setup.channel.id}:{status['id']}",
        origin_extra={
            "source": "interaction",
            "interaction_id": str(interaction.id),
            "interaction_token": interaction.token,
            "application_id": str(setup.fake.application_id),
            "interaction_at": f"{setup.now[0]:.3f}",
        },
    )


async def test_status_edits_use_the_token_for_15_minutes_then_the_channel(setup: Setup) -> None:
    job = await _status_job(setup)
    await setup.notifier.progress(job, ProgressUpdate(Stage.GENERATING, percent=10))
    assert [c.path.split("/")[1] for c in setup.fake.calls if c.method == "PATCH"] == ["webhooks"]
    setup.now[0] += 15 * 60
    await setup.notifier.progress(job, ProgressUpdate(Stage.FETCHING))
    patches = [c for c in setup.fake.calls if c.method == "PATCH"]
    assert [c.path.split("/")[1] for c in patches] == ["webhooks", "channels"]
    assert all(c.status == 200 for c in patches)  # the expired token was never tried


async def test_percent_only_edits_are_dropped_when_the_channel_is_busy_but_stage_changes_are_not(setup: Setup) -> None:
    job = await _status_job(setup)
    for percent in range(1, 11):
        await setup.notifier.progress(job, ProgressUpdate(Stage.GENERATING, percent=percent))
    await setup.notifier.progress(job, ProgressUpdate(Stage.UPLOADING, percent=100))
    edits = [c.json["content"] for c in setup.fake.calls if c.method == "PATCH"]
    assert len(edits) == 6 and "Uploading" in edits[-1]
