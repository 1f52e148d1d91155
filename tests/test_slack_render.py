"""What the Slack messages say, and that the app manifest matches what the code listens for."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from adapters.slack import render
from adapters.slack.listeners import COMMAND
from bot.notifier import ProgressUpdate, Stage
from storage.tables import Job

MANIFEST = Path(__file__).resolve().parents[1] / "adapters" / "slack" / "manifest.yaml"


def job(**fields: object) -> Job:
    values: dict[str, object] = {
        "id": 3,
        "prompt": "a fox",
        "duration_s": 8,
        "width": 720,
        "height": 1280,
        "platform": "slack",
        "workspace_id": "T1",
        "channel_id": "C1",
        "user_id": "U1",
    }
    values.update(fields)
    return Job(**values)  # type: ignore[arg-type]


def test_status_line_names_who_what_how_long_which_shape_and_the_queue() -> None:
    text, _ = render.status_message(job(), ProgressUpdate(Stage.QUEUED, queue_position=2))
    assert text == "<@U1> · a fox · 8 s · 9:16 — queued, 2 ahead"


def test_status_line_shows_percent_and_segment() -> None:
    text, _ = render.status_message(job(), ProgressUpdate(Stage.GENERATING, percent=40, segment=2, segments=3))
    assert text.endswith("— generating 40% (part 2 of 3)")


def test_a_prompt_cannot_ping_the_channel_or_forge_a_link() -> None:
    summary = render.job_summary(job(prompt="hi <!channel> <https://evil.example|click> & bye"))
    assert "<!channel>" not in summary and "<https://" not in summary
    assert "&lt;!channel&gt;" in summary and "&amp; bye" in summary


def test_a_long_prompt_is_shortened_in_the_status_line() -> None:
    summary = render.job_summary(job(prompt="word " * 100))
    assert len(summary) < 180 and summary.split(" · ")[1].endswith("…")


def test_sizes_without_a_simple_ratio_are_shown_as_they_are() -> None:
    assert [render.aspect_label(*s) for s in ((1280, 720), (960, 960), (832, 480))] == ["16:9", "1:1", "832x480"]


def test_modal_answers_become_the_same_text_grammar_as_the_command() -> None:
    values: dict[str, dict[str, Any]] = {
        "prompt": {"value": {"value": " leaves fall "}},
        "duration": {"value": {"selected_option": {"value": "8"}}},
        "aspect": {"value": {"selected_option": {"value": "9:16"}}},
    }
    assert render.animate_command_text(values) == "leaves fall --duration 8 --aspect 9:16"
    values["aspect"]["value"]["selected_option"]["value"] = "image"
    assert render.animate_command_text(values) == "leaves fall --duration 8"


def test_manifest_declares_exactly_the_command_shortcut_and_event_the_code_handles() -> None:
    manifest = MANIFEST.read_text()
    assert re.findall(r"- command: (\S+)", manifest) == [COMMAND]
    assert re.findall(r"callback_id: (\S+)", manifest) == [render.ANIMATE_CALLBACK]
    events = re.search(r"bot_events:\n((?:\s+- \S+\n)+)", manifest)
    assert events is not None and re.findall(r"- (\S+)", events.group(1)) == ["app_mention"]
    scopes = re.search(r"bot:\n((?:\s+- .*\n)+)", manifest)
    assert scopes is not None
    assert re.findall(r"- (\S+)", scopes.group(1)) == [
        "commands",
        "app_mentions:read",
        "chat:write",
        "files:read",
        "files:write",
        "channels:history",
        "groups:history",
    ]
