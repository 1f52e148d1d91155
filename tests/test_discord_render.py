"""The words of Discord messages, and reading a mention: pure functions, no connection."""

from __future__ import annotations

from typing import Any

from adapters.discord import render
from adapters.discord.mentions import request_text
from bot.notifier import ProgressUpdate, Stage
from storage.tables import Job

BOT = 1234567890


def job(**fields: Any) -> Job:
    values: dict[str, Any] = dict(
        id=12,
        prompt="a fox " * 100,
        duration_s=8,
        width=720,
        height=1280,
        fps=24,
        seed=7,
        platform="discord",
        workspace_id="1",
        channel_id="2",
        user_id="3",
    )
    values.update(fields)
    return Job(**values)


def test_only_a_written_mention_of_the_bot_is_a_request() -> None:
    assert request_text(f"<@{BOT}> a fox  running --duration 8", BOT) == "a fox running --duration 8"
    assert request_text(f"look <@!{BOT}>: a fox", BOT) == "look : a fox"
    assert request_text("a fox running", BOT) is None
    assert request_text("<@999> a fox", BOT) is None


def test_status_shows_stage_progress_and_parts() -> None:
    text = render.status(job(), ProgressUpdate(Stage.GENERATING, percent=50, segment=2, segments=3))
    assert "**#12** · 8 s · 720x1280 · 24 fps · seed 7 · <@3>" in text
    assert "██████░░░░░░` 50%" in text and "part 2 of 3" in text
    assert "position 4 in the queue" in render.status(job(), ProgressUpdate(Stage.QUEUED, queue_position=4))
    canceled = render.status(job(error="Canceled by alice"), ProgressUpdate(Stage.CANCELED))
    assert canceled.endswith("🚫 **Canceled by alice**")


def test_long_prompts_fit_discords_limits() -> None:
    name = render.thread_name(job())
    assert len(name) == render.THREAD_NAME_LIMIT and name.startswith("🎬 #12 a fox") and name.endswith("…")
    assert len(render.delivery(job(), "x" * 3000)) == render.MESSAGE_LIMIT
    assert len(render.help_text()) <= render.MESSAGE_LIMIT


def test_a_quota_refusal_carries_the_usage() -> None:
    assert render.refusal("No more today.", "Your usage: 20 videos today") == (
        "No more today.\n\nYour usage: 20 videos today"
    )
    assert render.refusal("That is not an image.") == "That is not an image."


def test_help_teaches_the_options_typed_in_the_video_prompt_field() -> None:
    text = render.help_text()
    assert "type the options below right after your prompt" in text and "--duration N" in text
