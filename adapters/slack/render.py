"""What videobot's Slack messages say and look like: text, Block Kit blocks and the modal.

Pure functions of a job, so they can be read (and tested) without a Slack connection. Every
``text`` is a complete message on its own: Slack shows it in notifications and to clients that
cannot draw blocks. Anything a person typed is escaped before it is put in mrkdwn, so a prompt
cannot ping ``@channel`` or forge a link.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from math import gcd
from typing import Any

from bot import Job, JobState
from bot.notifier import ProgressUpdate, Stage

CANCEL_ACTION = "videobot_cancel"
REROLL_ACTION = "videobot_reroll"
EXTEND_ACTION = "videobot_extend"
ANIMATE_CALLBACK = "videobot_animate"
ANIMATE_VIEW = "videobot_animate_view"
EXTEND_SECONDS = 5

_PROMPT_SHOWN = 120
_DURATIONS = (5, 8, 10)
_ASPECTS = ("16:9", "9:16", "1:1")
_MATCH_IMAGE = "image"

# Slack errors meaning "the bot may not post here"; anything else is a transient fault.
CANNOT_POST = frozenset(
    {
        "not_in_channel",
        "channel_not_found",
        "is_archived",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
        "cannot_dm_bot",
        "ekm_access_denied",
        "team_access_not_granted",
    }
)

Blocks = list[dict[str, Any]]


def escape(text: str) -> str:
    """Escape the three characters Slack treats as markup in message text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def aspect_label(width: int, height: int) -> str:
    """``1280x720`` → ``16:9``; sizes that reduce to no common ratio stay ``WxH``."""
    d = gcd(width, height) or 1
    w, h = width // d, height // d
    return f"{w}:{h}" if max(w, h) <= 21 else f"{width}x{height}"


def _short(prompt: str) -> str:
    flat = " ".join(prompt.split())
    return flat if len(flat) <= _PROMPT_SHOWN else flat[: _PROMPT_SHOWN - 1].rstrip() + "…"


def job_summary(job: Job) -> str:
    """``<@U1> · a fox in the snow · 8 s · 16:9`` — who asked for what, at a glance."""
    return (
        f"<@{job.user_id}> · {escape(_short(job.prompt))} · {job.duration_s} s · {aspect_label(job.width, job.height)}"
    )


def stage_text(update: ProgressUpdate) -> str:
    """The state part of the status line: queued, generating n %, uploading, canceled."""
    if update.stage is Stage.QUEUED:
        return f"queued, {update.queue_position} ahead" if update.queue_position else "queued, starting soon"
    if update.stage is Stage.GENERATING:
        part = f" (part {update.segment} of {update.segments})" if update.segments > 1 else ""
        return f"generating {update.percent}%{part}"
    if update.stage is Stage.FETCHING:
        return "fetching the clip"
    if update.stage is Stage.UPLOADING:
        return "uploading"
    return "canceled"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _button(text: str, action_id: str, job: Job, *, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": str(job.id),
    }
    if style:
        button["style"] = style
    return button


def status_message(job: Job, update: ProgressUpdate) -> tuple[str, Blocks]:
    """The status line that heads the job's thread, with Cancel while the job can still stop."""
    text = f"{job_summary(job)} — {stage_text(update)}"
    blocks: Blocks = [_section(f"{text}  `#{job.id}`")]
    if update.stage is not Stage.CANCELED:
        blocks.append(
            {
                "type": "actions",
                "block_id": f"status-{job.id}",
                "elements": [_button("Cancel", CANCEL_ACTION, job, style="danger")],
            }
        )
    return text, blocks


def finished_status(job: Job, outcome: str) -> tuple[str, Blocks]:
    """The status line once the job is over: no buttons left on it."""
    text = f"{job_summary(job)} — {outcome}"
    return text, [_section(f"{text}  `#{job.id}`")]


def delivery_actions(job: Job) -> tuple[str, Blocks]:
    """The message under a delivered clip: another take, or a longer one."""
    text = f"Clip #{job.id} is ready. Reroll for another take, or extend it by {EXTEND_SECONDS} s."
    blocks: Blocks = [
        {
            "type": "actions",
            "block_id": delivery_block_id(job),
            "elements": [
                _button("Reroll", REROLL_ACTION, job, style="primary"),
                _button(f"Extend +{EXTEND_SECONDS} s", EXTEND_ACTION, job),
            ],
        }
    ]
    return text, blocks


def delivery_block_id(job: Job) -> str:
    """Names the buttons under job's clip, so a retried delivery can see they were posted."""
    return f"delivered-{job.id}"


def clip_filename(job: Job) -> str:
    return f"videobot-{job.id}.mp4"


def clip_comment(job: Job, caption: str) -> str:
    """The upload's comment: who asked, then the core's caption (prompt, duration, seed, model)."""
    return f"<@{job.user_id}> #{job.id}: {escape(caption)}"


def failure_text(job: Job, message: str) -> str:
    return f"<@{job.user_id}> video #{job.id} failed: {escape(message)}"


def cannot_post_text(error: str) -> str:
    """How to let the bot in, for each way Slack says it cannot post."""
    if error == "is_archived":
        return "This channel is archived, so videobot can't post here. Use /video in an active channel."
    if error in ("channel_not_found", "cannot_dm_bot"):
        return (
            "videobot can't post in this conversation (a private channel it isn't in, or a direct message). "
            "Add it to a channel with `/invite @videobot`, or use /video in a channel it is already in."
        )
    if error.startswith("restricted_action"):
        return "This channel doesn't allow videobot to post. Ask a channel manager, or use another channel."
    return "videobot isn't in this channel yet. Add it with `/invite @videobot`, then try again."


def job_line(job: Job) -> str:
    state = f"{job.state} {round(job.progress * 100)}%" if job.job_state is JobState.RUNNING else job.state
    return f"#{job.id} · {escape(_short(job.prompt))} · {job.duration_s} s — {state}"


def job_list(jobs: list[Job]) -> str:
    if not jobs:
        return "No videos in progress."
    return "Videos in progress:\n" + "\n".join(job_line(j) for j in jobs)


@dataclass(frozen=True)
class AnimateContext:
    """What the shortcut knew when it opened the modal, carried to the submission in
    ``private_metadata`` (Slack sends it back as it was, at most 3,000 characters)."""

    channel_id: str
    thread_ts: str
    file_id: str
    response_url: str
    end_file_id: str = ""
    """A second image on the message: the clip ends on it."""

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str) -> AnimateContext:
        return cls(**json.loads(raw))


def _option(text: str, value: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": text}, "value": value}


def animate_modal(context: AnimateContext) -> dict[str, Any]:
    """The "Animate with videobot" form: a prompt, a duration and a shape."""
    durations = [_option(f"{d} seconds", str(d)) for d in _DURATIONS]
    aspects = [_option("Same as the image", _MATCH_IMAGE)] + [_option(a, a) for a in _ASPECTS]
    return {
        "type": "modal",
        "callback_id": ANIMATE_VIEW,
        "private_metadata": context.dumps(),
        "title": {"type": "plain_text", "text": "Animate with videobot"},
        "submit": {"type": "plain_text", "text": "Animate"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": "prompt",
                "label": {"type": "plain_text", "text": "What should happen?"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": "value",
                    "multiline": True,
                    "placeholder": {"type": "plain_text", "text": "the leaves start to fall, slow camera push-in"},
                },
            },
            {
                "type": "input",
                "block_id": "duration",
                "label": {"type": "plain_text", "text": "Duration"},
                "element": {
                    "type": "static_select",
                    "action_id": "value",
                    "options": durations,
                    "initial_option": durations[0],
                },
            },
            {
                "type": "input",
                "block_id": "aspect",
                "label": {"type": "plain_text", "text": "Shape"},
                "element": {
                    "type": "static_select",
                    "action_id": "value",
                    "options": aspects,
                    "initial_option": aspects[0],
                },
            },
        ],
    }


def animate_command_text(values: dict[str, dict[str, Any]]) -> str:
    """Turn the submitted modal into the same text grammar ``/video`` takes."""
    prompt = (values["prompt"]["value"].get("value") or "").strip()
    duration = values["duration"]["value"]["selected_option"]["value"]
    aspect = values["aspect"]["value"]["selected_option"]["value"]
    text = f"{prompt} --duration {duration}"
    return text if aspect == _MATCH_IMAGE else f"{text} --aspect {aspect}"
