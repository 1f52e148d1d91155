"""The Discord adapter end to end: real discord.py against the fake Discord, the real core and
the simulator backend, over loopback. Each test reads as what a person in a server sees."""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from adapters.discord import DiscordAdapter, build_adapter
from bot.app import Core
from bot.backends.http import HttpBackend
from bot.errors import ConfigurationError, JobNotFound
from tests.clips import lavfi_clip
from tests.conftest import this_database
from bot.media import probe
from bot.models import TaskState
from bot.provider.server import bound_port, build_provider_app, serve_provider
from bot.provider.simulator import SimulatorGenerator, SimulatorOptions
from bot.settings import Settings
from storage.tables import JobState
from tests.fakes.discord_server import (
    CREATE_PUBLIC_THREADS,
    DEFERRED_CHANNEL_MESSAGE,
    FakeChannel,
    FakeDiscord,
    FakeGuild,
    FakeInteraction,
    FakeUser,
    running_fake_discord,
)

MiB = 1024 * 1024


@dataclass
class World:
    """One server with a #general channel and a member, alice; the core; the adapter connected."""

    fake: FakeDiscord
    guild: FakeGuild
    channel: FakeChannel
    alice: FakeUser
    settings: Settings
    core: Core
    adapter: DiscordAdapter

    async def restart_adapter(self) -> None:
        """Stop the Discord client and start a fresh one, as a process restart would."""
        await self.adapter.stop()
        self.adapter = build_adapter(self.settings, self.core.service, guild_ready_timeout=0.05)
        await self.adapter.start()
        await self.adapter.wait_until_ready()

    def threads(self) -> list[FakeChannel]:
        return self.fake.threads_of(self.channel)

    async def clip_in(self, thread_id: int, *, after: int = 0) -> dict[str, Any]:
        """Wait for the bot's message with an mp4 in the thread (newer than message ``after``)."""

        def found() -> dict[str, Any] | None:
            for message in self.fake.channel_messages(thread_id):
                if (
                    int(message["id"]) > after
                    and message["attachments"]
                    and message["author"]["id"] == str(self.fake.bot.id)
                ):
                    return message
            return None

        return await self.fake.wait_for(found, timeout=30)

    async def status_of(self, job_id: int, state: JobState) -> None:
        async def reached() -> None:
            while (await self.core.service.status(job_id)).state != state.value:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(reached(), 30)


WorldFactory = Callable[..., Awaitable[World]]


@pytest.fixture
async def make_world(tmp_path: Path) -> AsyncIterator[WorldFactory]:
    async with AsyncExitStack() as stack:

        async def make(*, limits: str = "", backend: HttpBackend | None = None) -> World:
            fake = await stack.enter_async_context(running_fake_discord())
            guild = fake.add_guild()
            channel = fake.add_text_channel(guild)
            alice = fake.add_user("alice")
            fake.add_member(guild, alice)
            (tmp_path / "videobot.toml").write_text(limits)
            settings = Settings(
                data_dir=tmp_path / "data",
                database_url=this_database(),
                limits_path=tmp_path / "videobot.toml",
                discord_token=fake.bot_token,
                discord_guild_ids=(guild.id,),
                poll_interval_s=0.1,
                progress_interval_s=0.1,
            )
            core = await Core.create(settings, backend=backend)
            stack.push_async_callback(core.stop)
            await core.start()
            world = World(
                fake,
                guild,
                channel,
                alice,
                settings,
                core,
                build_adapter(settings, core.service, guild_ready_timeout=0.05),
            )
            stack.push_async_callback(lambda: world.adapter.stop())
            await world.adapter.start()
            await world.adapter.wait_until_ready()
            return world

        yield make


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(out, format="PNG")
    return out.getvalue()


def edits_of(fake: FakeDiscord, message_id: str) -> list[str]:
    """Every content the bot set on one message, through either API, in order."""
    return [
        c.json["content"]
        for c in fake.calls
        if c.method == "PATCH"
        and (c.path.endswith(f"/messages/{message_id}") or c.path.endswith("/@original"))
        and c.json
        and c.json.get("content")
    ]


def shown(fake: FakeDiscord, interaction: FakeInteraction) -> dict[str, Any]:
    """The interaction's original response as it stands now."""
    message = fake.original_response(interaction)
    assert message is not None, "the interaction has no response message"
    return message


async def answered(interaction: FakeInteraction) -> None:
    await asyncio.wait_for(interaction.responded.wait(), 3)


async def test_video_command_defers_opens_thread_edits_progress_and_posts_the_clip(
    make_world: WorldFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world = await make_world()
    fake = world.fake
    interaction = await fake.slash_command(
        world.channel, world.alice, "video", {"prompt": "a red fox in fresh snow [sim:slow=0.6]", "duration": 2}
    )
    await answered(interaction)
    assert interaction.response_type == DEFERRED_CHANNEL_MESSAGE
    assert interaction.answer_latency < 3.0

    (thread,) = await fake.wait_for(world.threads)
    status = fake.original_response(interaction)
    assert status is not None and thread.id == int(status["id"])  # the thread opens on the status message
    clip_message = await world.clip_in(thread.id)

    (attachment,) = clip_message["attachments"]
    assert attachment["filename"].endswith(".mp4") and attachment["content_type"] == "video/mp4"
    video = world.settings.data_dir / "got.mp4"
    video.write_bytes(fake.download(attachment))
    info = probe(video)
    assert (info.duration_s, info.width, info.height) == (2.0, 1280, 720)
    assert "a red fox in fresh snow" in clip_message["content"] and "2 s" in clip_message["content"]
    assert "seed" in clip_message["content"]
    buttons = [b["custom_id"] for row in clip_message["components"] for b in row["components"]]
    job_id = int(buttons[0].rsplit(":", 1)[1])
    assert buttons == [f"videobot:reroll:{job_id}", f"videobot:extend:{job_id}"]

    await fake.wait_for(lambda: "Done" in (fake.original_response(interaction) or {}).get("content", ""))
    contents = edits_of(fake, status["id"])
    assert any("Queued" in c for c in contents)
    assert any("Generating" in c and "%" in c for c in contents)
    assert contents[-1].endswith("the clip is in the thread")
    assert shown(fake, interaction)["components"] == []  # Cancel is gone once done

    everything = caplog.text + "".join(str(c.json) for c in fake.calls)
    assert fake.bot_token not in everything


async def test_video_command_with_an_image_animates_it_in_the_images_shape(make_world: WorldFactory) -> None:
    world = await make_world()
    fake = world.fake
    picture = fake.upload_attachment(world.channel, "portrait.png", png(300, 500), "image/png")
    interaction = await fake.slash_command(
        world.channel,
        world.alice,
        "video",
        {"prompt": "she turns and smiles", "duration": 1},
        attachments={"image": picture},
    )
    await answered(interaction)
    (thread,) = await fake.wait_for(world.threads)
    clip_message = await world.clip_in(thread.id)
    job = await world.core.service.status(1)
    assert job.mode == "i2v" and (job.width, job.height) == (720, 1280)
    assert "720x1280" in clip_message["content"]


async def test_options_typed_in_the_prompt_field_shape_the_clip(make_world: WorldFactory) -> None:
    world = await make_world()
    fake = world.fake
    interaction = await fake.slash_command(
        world.channel, world.alice, "video", {"prompt": "a fox in the snow --duration 2 --aspect 1:1"}
    )
    await answered(interaction)
    (thread,) = await fake.wait_for(world.threads)
    await world.clip_in(thread.id)
    job = await world.core.service.status(1)
    assert job.prompt == "a fox in the snow"  # the options are not sent to the model as text
    assert (job.duration_s, job.width, job.height) == (2, 960, 960)


async def test_a_field_and_a_typed_option_that_disagree_are_refused_privately(make_world: WorldFactory) -> None:
    world = await make_world()
    fake = world.fake
    interaction = await fake.slash_command(
        world.channel, world.alice, "video", {"prompt": "a fox --duration 8", "duration": 3}
    )
    await answered(interaction)
    (refusal,) = await fake.wait_for(lambda: fake.ephemeral_replies(interaction))
    assert "3 in the duration field, --duration 8 in the prompt. Keep one." in refusal["content"]
    assert world.threads() == []


async def test_the_resolution_field_works_like_slacks_option(make_world: WorldFactory) -> None:
    world = await make_world()
    fake = world.fake
    interaction = await fake.slash_command(
        world.channel, world.alice, "video", {"prompt": "a small fox", "duration": 1, "resolution": "832x480"}
    )
    await answered(interaction)
    (thread,) = await fake.wait_for(world.threads)
    await world.clip_in(thread.id)
    job = await world.core.service.status(1)
    assert (job.width, job.height) == (832, 480)


async def test_mention_with_an_image_starts_a_job_in_a_thread_on_the_message(make_world: WorldFactory) -> None:
    world = await make_world()
    fake = world.fake
    picture = fake.upload_attachment(world.channel, "cat.png", png(400, 400), "image/png")
    asked = await fake.post_user_message(
        world.channel, world.alice, f"{fake.mention()} the cat yawns --duration 1 --fps 24", attachments=[picture]
    )
    (thread,) = await fake.wait_for(world.threads)
    assert thread.id == int(asked["id"])  # the thread hangs off the person's own message
    clip_message = await world.clip_in(thread.id)
    job = await world.core.service.status(1)
    assert (job.prompt, job.mode, job.fps, job.duration_s) == ("the cat yawns", "i2v", 24, 1)
    assert (job.width, job.height) == (960, 960)
    assert f"<@{world.alice.id}>" in clip_message["content"]
    status = fake.channel_messages(thread.id)[0]
    assert status["content"].startswith(f"**#{job.id}**")
    # without the message-content intent, others' messages arrive blank: only mentions carry text
    assert world.adapter.client is not None and not world.adapter.client.intents.message_content


async def test_mention_inside_a_thread_keeps_the_job_in_that_thread(make_world: WorldFactory) -> None:
    world = await make_world()
    fake = world.fake
    thread = fake.add_thread(world.channel, "fox ideas", world.alice)
    await fake.dispatch("THREAD_CREATE", {**thread.payload(fake.bot.id), "newly_created": True})
    asked = await fake.post_user_message(thread, world.alice, f"{fake.mention()} a fox at dusk --duration 1")
    clip_message = await world.clip_in(thread.id)
    status = fake.channel_messages(thread.id)[1]
    assert status["message_reference"]["message_id"] == asked["id"] and status["content"].startswith("**#1**")
    assert "job #1" in clip_message["content"]
    job = await world.core.service.status(1)
    assert (job.channel_id, job.thread_id) == (str(world.channel.id), str(thread.id))
    assert world.threads() == [thread]


async def test_mention_without_the_bot_named_is_ignored_and_a_bad_option_is_answered(make_world: WorldFactory) -> None:
    world = await make_world()
    fake = world.fake
    await fake.post_user_message(world.channel, world.alice, "a fox running --duration 8")
    asked = await fake.post_user_message(world.channel, world.alice, f"{fake.mention()} a fox --durration 8")

    def reply() -> dict[str, Any] | None:
        return next((m for m in fake.channel_messages(world.channel.id) if m.get("message_reference")), None)

    answer = await fake.wait_for(reply)
    assert answer["message_reference"]["message_id"] == asked["id"]
    assert "Unknown option --durration" in answer["content"] and "--duration" in answer["content"]
    assert world.threads() == []
    with pytest.raises(JobNotFound):
        await world.core.service.status(1)


async def test_buttons_work_after_the_client_restarts(make_world: WorldFactory) -> None:
    world = await make_world()
    fake = world.fake
    first = await fake.slash_command(world.channel, world.alice, "video", {"prompt": "waves on a beach", "duration": 1})
    await answered(first)
    (thread,) = await fake.wait_for(world.threads)
    clip_message = await world.clip_in(thread.id)
    await world.status_of(1, JobState.SUCCEEDED)

    await world.restart_adapter()

    reroll = await fake.click_button(clip_message, "videobot:reroll:1", world.alice)
    await answered(reroll)
    second_clip = await world.clip_in(thread.id, after=int(clip_message["id"]))
    rerolled = await world.core.service.status(2)
    original = await world.core.service.status(1)
    assert (rerolled.kind, rerolled.parent_id, rerolled.prompt) == ("reroll", 1, "waves on a beach")
    assert rerolled.seed != original.seed and rerolled.thread_id == str(thread.id)
    assert "job #2" in second_clip["content"]

    hanging = await fake.slash_command(
        world.channel, world.alice, "video", {"prompt": "forever [sim:hang]", "duration": 1}
    )
    await answered(hanging)
    await world.status_of(3, JobState.RUNNING)
    await world.restart_adapter()
    status = fake.original_response(hanging)
    assert status is not None and status["components"][0]["components"][0]["custom_id"] == "videobot:cancel:3"
    cancel = await fake.click_button(status, "videobot:cancel:3", world.alice)
    await answered(cancel)
    await world.status_of(3, JobState.CANCELED)
    await fake.wait_for(lambda: any("Canceled job #3" in m["content"] for m in fake.ephemeral_replies(cancel)))
    await fake.wait_for(lambda: "Canceled" in shown(fake, hanging)["content"])

    extend = await fake.click_button(clip_message, "videobot:extend:1", world.alice)
    await answered(extend)
    await fake.wait_for(lambda: (fake.original_response(extend) or {}).get("content", "").startswith("**#4**"))
    extended = await world.core.service.status(4)
    assert (extended.kind, extended.parent_id, extended.mode, extended.thread_id) == (
        "extend",
        1,
        "i2v",
        str(thread.id),
    )


def make_big_clip(path: Path) -> Path:
    """An 18+ MiB, 5 s, 1280x720, 16 fps h264 clip: intra-only frames of fine grain."""
    lavfi_clip(path, "color=c=gray:s=1280x720:r=16:d=5,noise=alls=40:allf=u", options={"qp": "33", "g": "1"})
    return path


class BigClipBackend(HttpBackend):
    """The simulator runs the task; the finished file it hands over is the big clip."""

    def __init__(self, base_url: str, big: Path) -> None:
        super().__init__(base_url, name="simulator", label="simulator (no real model)")
        self.big = big

    async def fetch(self, state: TaskState, dest: Path, max_bytes: int) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.big, dest)
        return dest


async def test_clip_over_the_upload_limit_is_reencoded_to_fit_at_full_duration(
    make_world: WorldFactory, tmp_path: Path
) -> None:
    big = await asyncio.to_thread(make_big_clip, tmp_path / "big.mp4")
    assert big.stat().st_size > 18 * MiB
    files = tmp_path / "sim"
    files.mkdir()
    provider = await serve_provider(
        build_provider_app(SimulatorGenerator(SimulatorOptions()), files_dir=files, max_parallel=2), "127.0.0.1", 0
    )
    try:
        world = await make_world(backend=BigClipBackend(f"http://127.0.0.1:{bound_port(provider)}/v1", big))
        interaction = await world.fake.slash_command(
            world.channel, world.alice, "video", {"prompt": "grain", "duration": 5}
        )
        await answered(interaction)
        (thread,) = await world.fake.wait_for(world.threads)
        clip_message = await world.clip_in(thread.id)
    finally:
        await provider.cleanup()
    (attachment,) = clip_message["attachments"]
    assert attachment["size"] <= 10 * MiB == world.guild.filesize_limit
    got = tmp_path / "got.mp4"
    got.write_bytes(world.fake.download(attachment))
    info = probe(got)  # decodes every frame: playable to the end
    assert (info.duration_s, info.frames, info.fps) == (5.0, 80, 16.0)
    assert info.width / info.height == pytest.approx(16 / 9, rel=0.01)
    assert "Re-encoded to fit this server's 10 MiB upload limit" in clip_message["content"]


async def test_quota_refusal_is_private_and_says_usage_and_reset_time(make_world: WorldFactory) -> None:
    world = await make_world(limits="[defaults]\nuser_daily_jobs = 1\n")
    fake = world.fake
    first = await fake.slash_command(world.channel, world.alice, "video", {"prompt": "one", "duration": 1})
    await answered(first)
    await fake.wait_for(world.threads)
    second = await fake.slash_command(world.channel, world.alice, "video", {"prompt": "two", "duration": 1})
    await answered(second)
    (refusal,) = await fake.wait_for(lambda: fake.ephemeral_replies(second))
    assert "You've used 1 of your 1 videos for today" in refusal["content"]
    assert "resets at 00:00 UTC" in refusal["content"]
    assert "Your usage: 1 videos today of 1" in refusal["content"]
    assert second.original_deleted  # no public "thinking…" left behind
    assert len(world.threads()) == 1
    with pytest.raises(JobNotFound):
        await world.core.service.status(2)


async def test_a_pdf_given_as_the_image_is_refused(make_world: WorldFactory) -> None:
    world = await make_world()
    fake = world.fake
    pdf = fake.upload_attachment(
        world.channel, "brief.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "application/pdf"
    )
    interaction = await fake.slash_command(
        world.channel, world.alice, "video", {"prompt": "animate this"}, attachments={"image": pdf}
    )
    await answered(interaction)
    (refusal,) = await fake.wait_for(lambda: fake.ephemeral_replies(interaction))
    assert refusal["content"].startswith("That file is not an image (it looks like a PDF).")
    assert world.threads() == []
    with pytest.raises(JobNotFound):
        await world.core.service.status(1)


async def test_a_channel_the_bot_cannot_open_threads_in_is_explained_and_leaves_no_job(
    make_world: WorldFactory,
) -> None:
    world = await make_world()
    fake = world.fake
    closed = fake.add_text_channel(world.guild, "announcements", bot_deny=CREATE_PUBLIC_THREADS)
    interaction = await fake.slash_command(closed, world.alice, "video", {"prompt": "a fox", "duration": 1})
    await answered(interaction)
    (refusal,) = await fake.wait_for(lambda: fake.ephemeral_replies(interaction))
    assert (
        f"I can't post videos in <#{closed.id}>" in refusal["content"] and "Create Public Threads" in refusal["content"]
    )
    job = await world.core.service.status(1)
    assert job.state == JobState.FAILED.value and not job.counts_toward_quota
    assert fake.threads_of(closed) == []


async def test_a_backend_failure_is_told_in_the_thread_with_a_retry_button(make_world: WorldFactory) -> None:
    world = await make_world()
    fake = world.fake
    interaction = await fake.slash_command(
        world.channel, world.alice, "video", {"prompt": "doomed [sim:fail]", "duration": 1}
    )
    await answered(interaction)
    (thread,) = await fake.wait_for(world.threads)

    def failure() -> dict[str, Any] | None:
        return next((m for m in fake.channel_messages(thread.id) if "failed" in m["content"]), None)

    message = await fake.wait_for(failure)
    assert message["content"].startswith(f"<@{world.alice.id}> job #1 failed:")
    assert message["components"][0]["components"][0]["custom_id"] == "videobot:retry:1"
    await fake.wait_for(lambda: "Failed" in shown(fake, interaction)["content"])

    retry = await fake.click_button(message, "videobot:retry:1", world.alice)
    await answered(retry)
    await fake.wait_for(lambda: (fake.original_response(retry) or {}).get("content", "").startswith("**#2**"))
    retried = await world.core.service.status(2)
    assert (retried.kind, retried.parent_id, retried.thread_id) == ("retry", 1, str(thread.id))


async def test_status_edits_move_to_the_channel_api_once_the_token_expires(make_world: WorldFactory) -> None:
    world = await make_world()
    fake = world.fake
    interaction = await fake.slash_command(
        world.channel, world.alice, "video", {"prompt": "slow tide [sim:slow=1.0]", "duration": 1}
    )
    await answered(interaction)
    await fake.wait_for(world.threads)
    await world.status_of(1, JobState.RUNNING)
    fake.expire_token(interaction)
    status_id = str(interaction.original_message_id)
    channel_edit = f"/channels/{world.channel.id}/messages/{status_id}"
    await fake.wait_for(lambda: "Done" in shown(fake, interaction)["content"])
    refused = [c for c in fake.calls if c.path.startswith("/webhooks") and c.status == 401]
    assert len(refused) == 1  # tried once, then never again
    through_channel = [c for c in fake.calls if c.method == "PATCH" and c.path == channel_edit]
    assert through_channel and through_channel[-1].json["content"].endswith("the clip is in the thread")
    assert all(c.at > refused[0].at for c in through_channel)


async def test_private_commands_answer_only_the_asker(make_world: WorldFactory) -> None:
    world = await make_world()
    fake = world.fake
    started = await fake.slash_command(
        world.channel, world.alice, "video", {"prompt": "stay [sim:hang]", "duration": 1}
    )
    await answered(started)
    await world.status_of(1, JobState.RUNNING)

    async def ask(name: str, options: dict[str, Any] | None = None) -> str:
        interaction = await fake.slash_command(world.channel, world.alice, name, options)
        await answered(interaction)
        reply = await fake.wait_for(lambda: (fake.original_response(interaction) or {}).get("content"))
        assert shown(fake, interaction)["flags"] & 64  # ephemeral
        return reply

    assert "#1" in await ask("video-status") and "stay" in await ask("video-status", {"job": 1})
    assert "Your usage: 1 videos today" in await ask("video-usage")
    assert "--duration" in await ask("video-help")
    assert "There is no job #99" in await ask("video-cancel", {"job": 99})
    assert "Canceled job #1" in await ask("video-cancel", {"job": 1})
    await world.status_of(1, JobState.CANCELED)


async def test_a_wrong_token_stops_the_adapter_with_a_message_that_names_the_setting(make_world: WorldFactory) -> None:
    world = await make_world()
    adapter = build_adapter(replace(world.settings, discord_token="not-the-token"), world.core.service)
    with pytest.raises(ConfigurationError, match="DISCORD_TOKEN") as refused:
        await adapter.start()
    assert "not-the-token" not in str(refused.value)


async def test_without_guild_ids_the_commands_sync_globally(make_world: WorldFactory) -> None:
    world = await make_world()
    adapter = build_adapter(replace(world.settings, discord_guild_ids=()), world.core.service)
    await adapter.start()
    try:
        names = sorted(c["name"] for c in world.fake.commands["global"])
        assert names == ["video", "video-cancel", "video-help", "video-status", "video-usage"]
    finally:
        await adapter.stop()
