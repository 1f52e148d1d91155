"""What videobot's Discord messages say: pure functions of a job, testable without a connection.

Discord caps a message at 2000 characters and a thread name at 100, so anything a person typed
is shortened before it is placed. Prompts are quoted as they were written; mentions inside them
cannot ping anyone because every message is sent with mentions allowed only where stated.
"""

from __future__ import annotations

from collections.abc import Iterable

from bot import Job, JobState
from bot.grammar import HELP_TEXT
from bot.notifier import ProgressUpdate, Stage

MESSAGE_LIMIT = 2000
THREAD_NAME_LIMIT = 100
_PROMPT_IN_STATUS = 300
_BAR_WIDTH = 12

_STAGE_LINES = {
    Stage.QUEUED: "⏳ **Queued**",
    Stage.GENERATING: "🎬 **Generating**",
    Stage.FETCHING: "📥 **Fetching the clip**",
    Stage.UPLOADING: "📤 **Uploading**",
    Stage.CANCELED: "🚫 **Canceled**",
}


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, with an ellipsis when it was cut."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _header(job: Job) -> str:
    return (
        f"**#{job.id}** · {job.duration_s} s · {job.width}x{job.height} · {job.fps} fps · "
        f"seed {job.seed} · <@{job.user_id}>\n> {shorten(job.prompt, _PROMPT_IN_STATUS)}"
    )


def progress_bar(percent: int) -> str:
    filled = round(_BAR_WIDTH * max(0, min(percent, 100)) / 100)
    return "█" * filled + "░" * (_BAR_WIDTH - filled)


def status(job: Job, update: ProgressUpdate) -> str:
    """The status message while a job is alive: one line of state under the job's header."""
    line = _STAGE_LINES[update.stage]
    if update.stage is Stage.QUEUED and update.queue_position > 0:
        line += f" · position {update.queue_position} in the queue"
    elif update.stage is Stage.GENERATING:
        line += f" `{progress_bar(update.percent)}` {update.percent}%"
        if update.segments > 1:
            line += f" · part {update.segment} of {update.segments}"
    elif update.stage is Stage.CANCELED and job.error:
        line = f"🚫 **{job.error}**"  # the core writes who canceled it: "Canceled by …"
    return f"{_header(job)}\n{line}"


def delivered_status(job: Job) -> str:
    return f"{_header(job)}\n✅ **Done** · the clip is in the thread"


def failed_status(job: Job, message: str) -> str:
    return f"{_header(job)}\n⚠️ **Failed** · {shorten(message, 500)}"


def accepted(job: Job) -> str:
    """Shown when the status message could not be set up but the job was accepted anyway."""
    return f"⏳ Job #{job.id} accepted; the clip will be posted here when it is ready."


def thread_name(job: Job) -> str:
    return shorten(f"🎬 #{job.id} {job.prompt}", THREAD_NAME_LIMIT)


def delivery(job: Job, caption: str, *, shrunk_to: int | None = None) -> str:
    """The message the clip is attached to: who asked, the caption (prompt, duration, seed …)."""
    text = f"<@{job.user_id}> your video is ready (job #{job.id}).\n{caption}"
    if shrunk_to is not None:
        text += f"\n-# Re-encoded to fit this server's {_mib(shrunk_to)} upload limit."
    return shorten_message(text)


def failure(job: Job, message: str) -> str:
    return shorten_message(f"<@{job.user_id}> job #{job.id} failed: {message}")


def refusal(message: str, usage: str | None = None) -> str:
    """An ephemeral refusal; a quota refusal carries the person's usage so they see where they stand."""
    return shorten_message(message if not usage else f"{message}\n\n{usage}")


def canceled_reply(job: Job) -> str:
    return f"🚫 Canceled job #{job.id}."


def job_line(job: Job) -> str:
    where = f" · <#{job.thread_id}>" if job.thread_id else ""
    percent = f" {int(job.progress * 100)}%" if job.state == JobState.RUNNING.value else ""
    return f"**#{job.id}** {job.state}{percent} · “{shorten(job.prompt, 80)}”{where}"


def job_status(job: Job) -> str:
    text = job_line(job)
    if job.error:
        text += f"\n{shorten(job.error, 500)}"
    return text


def active_jobs(jobs: Iterable[Job]) -> str:
    lines = [job_line(job) for job in jobs]
    if not lines:
        return "You have no videos in progress."
    return shorten_message("Videos in progress:\n" + "\n".join(lines))


def cannot_post(channel: str, missing: Iterable[str]) -> str:
    return (
        f"I can't post videos in {channel}: I'm missing {', '.join(missing)}. "
        "Ask a server admin to grant me those permissions there, or use another channel."
    )


def forbidden(channel: str) -> str:
    return (
        f"Discord won't let me post in {channel}. "
        "Ask a server admin to let me send messages, open threads and attach files there, or use another channel."
    )


def not_a_text_channel() -> str:
    return "I can only make videos in text channels and their threads; mention me in one of those."


def help_text(grammar_help: str = HELP_TEXT) -> str:
    """The grammar's help (with the model's options, from ``JobService.help_text``), framed for
    Discord's two ways in: the /video form and a mention."""
    return shorten_message(
        "Use **/video**: type the options below right after your prompt "
        "(`a fox running --duration 8`) or use its fields, and attach an image to animate it. "
        "Or mention me with the same words and options, e.g. `@videobot a fox running --duration 8`.\n"
        "Other commands: /video-status, /video-cancel, /video-usage.\n"
        f"```\n{grammar_help}\n```"
    )


def shorten_message(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):.0f} MiB"
