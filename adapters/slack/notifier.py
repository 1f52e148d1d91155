"""``SlackNotifier``: the Notifier port for Slack.

A job's life shows in one status message that heads its thread and is edited in place; the clip
arrives as a file in that thread. Two Slack limits shape the code:

- ``chat.update`` allows about 50 calls a minute per workspace, however many jobs share it. The
  runner already spaces updates per job; ``_WorkspaceBudget`` spaces them per workspace, dropping
  a percent-only change when the budget is spent and waiting (briefly) for stage changes.
- An upload is three calls (``files.getUploadURLExternal``, the raw POST, then
  ``files.completeUploadExternal``, which shares it: the point of no return). They are made
  one by one here, not through ``files_upload_v2``, which makes the same three calls in one go:
  the file id has to be committed to the job *between* the first and the last, so that a
  delivery retried after a crash can ask Slack whether that file already reached the thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import render
from bot import Job
from bot.errors import NotAllowed
from bot.models import Clip
from bot.notifier import DeliveryCheckpoint, ProgressUpdate, Stage, StatusMessage

log = logging.getLogger(__name__)

PLATFORM = "slack"
_UPLOAD_TIMEOUT = aiohttp.ClientTimeout(total=600, sock_connect=10)


class _WorkspaceBudget:
    """A token bucket per workspace for ``chat.update`` (Slack's tier 3: ~50 a minute)."""

    def __init__(self, per_minute: float = 50.0, burst: float = 10.0) -> None:
        self._rate = per_minute / 60.0
        self._burst = burst
        self._tokens: dict[str, tuple[float, float]] = {}

    def _level(self, key: str, now: float) -> float:
        tokens, since = self._tokens.get(key, (self._burst, now))
        return min(self._burst, tokens + (now - since) * self._rate)

    def try_take(self, key: str) -> bool:
        now = time.monotonic()
        level = self._level(key, now)
        if level < 1.0:
            self._tokens[key] = (level, now)
            return False
        self._tokens[key] = (level - 1.0, now)
        return True

    async def take(self, key: str, max_wait_s: float) -> bool:
        """Wait up to ``max_wait_s`` for a token; False if none came."""
        deadline = time.monotonic() + max_wait_s
        while not self.try_take(key):
            now = time.monotonic()
            wait = (1.0 - self._level(key, now)) / self._rate
            if now + wait > deadline:
                return False
            await asyncio.sleep(wait)
        return True


class SlackNotifier:
    """Posts and edits the job's status message and delivers the clip into its thread."""

    platform = PLATFORM

    def __init__(self, client: AsyncWebClient, *, stage_wait_s: float = 10.0) -> None:
        self._client = client
        self._budget = _WorkspaceBudget()
        self._stage_wait_s = stage_wait_s
        self._last_stage: dict[int, str] = {}

    # -- the port ---------------------------------------------------------------------------

    async def acknowledge(self, job: Job, queue_position: int) -> StatusMessage | None:
        """Post the status message; in the job's thread if it came from one, else it starts one."""
        text, blocks = render.status_message(job, ProgressUpdate(Stage.QUEUED, queue_position=queue_position))
        try:
            response = await self._client.chat_postMessage(
                channel=job.channel_id, thread_ts=job.thread_id, text=text, blocks=blocks
            )
        except SlackApiError as error:
            code = _error_code(error)
            if code in render.CANNOT_POST:
                raise NotAllowed(render.cannot_post_text(code)) from None
            raise
        ts = str(response["ts"])
        self._last_stage[job.id or 0] = Stage.QUEUED.value
        return StatusMessage(ref=ts, thread_id=job.thread_id or ts)

    async def progress(self, job: Job, update: ProgressUpdate) -> None:
        """Edit the status message. Best effort: a lost edit is replaced by the next one."""
        if not job.status_ref:
            return
        key = job.id or 0
        stage_changed = self._last_stage.get(key) != update.stage.value
        if update.stage is Stage.CANCELED:
            self._last_stage.pop(key, None)
            text, blocks = render.status_message(job, update)
            await self._final_update(job, text, blocks)
            return
        if stage_changed:
            if not await self._budget.take(job.workspace_id, self._stage_wait_s):
                return
            self._last_stage[key] = update.stage.value
        elif not self._budget.try_take(job.workspace_id):
            return
        text, blocks = render.status_message(job, update)
        await self._update(job, text, blocks)

    async def deliver(self, job: Job, clip: Clip, checkpoint: DeliveryCheckpoint) -> str:
        """Upload the clip into the thread exactly once, then put Reroll/Extend under it.

        On a retry (``checkpoint.pending_ref`` holds a file id) Slack is asked first whether
        that file was already shared into the thread; only if not is the clip uploaded again.
        Returns the file id.
        """
        self._last_stage.pop(job.id or 0, None)
        thread_ts = job.thread_id or job.status_ref
        file_id = checkpoint.pending_ref
        retrying = file_id is not None
        if file_id is None or not await self._already_shared(job, file_id, thread_ts):
            file_id = await self._upload(job, clip, thread_ts, checkpoint)
        text, blocks = render.delivery_actions(job)
        if not (retrying and await self._actions_posted(job, thread_ts)):
            await self._client.chat_postMessage(channel=job.channel_id, thread_ts=thread_ts, text=text, blocks=blocks)
        done_text, done_blocks = render.finished_status(job, "done, the clip is in the thread")
        await self._final_update(job, done_text, done_blocks)
        return file_id

    async def fail(self, job: Job, message: str) -> None:
        """Say why in the thread (or the channel), and mark the status message failed."""
        self._last_stage.pop(job.id or 0, None)
        try:
            await self._client.chat_postMessage(
                channel=job.channel_id,
                thread_ts=job.thread_id or job.status_ref,
                text=render.failure_text(job, message),
            )
        except SlackApiError as error:
            log.warning("job %s: could not post the failure (%s)", job.id, _error_code(error))
        text, blocks = render.finished_status(job, "failed")
        await self._final_update(job, text, blocks)

    # -- Slack calls ------------------------------------------------------------------------

    async def _final_update(self, job: Job, text: str, blocks: render.Blocks) -> None:
        """The last word on the status message (done, failed, canceled) is never dropped: it waits
        its turn in the workspace budget, and is sent even if that wait runs out."""
        await self._budget.take(job.workspace_id, self._stage_wait_s)
        await self._update(job, text, blocks)

    async def _update(self, job: Job, text: str, blocks: render.Blocks) -> None:
        if not job.status_ref:
            return
        try:
            await self._client.chat_update(channel=job.channel_id, ts=job.status_ref, text=text, blocks=blocks)
        except SlackApiError as error:
            log.warning("job %s: status update refused (%s)", job.id, _error_code(error))

    async def _upload(self, job: Job, clip: Clip, thread_ts: str | None, checkpoint: DeliveryCheckpoint) -> str:
        data = await asyncio.to_thread(Path(clip.path).read_bytes)
        filename = render.clip_filename(job)
        ticket = await self._client.files_getUploadURLExternal(filename=filename, length=len(data))
        file_id = str(ticket["file_id"])
        await checkpoint.save(file_id)
        async with (
            aiohttp.ClientSession(timeout=_UPLOAD_TIMEOUT) as session,
            session.post(str(ticket["upload_url"]), data=data) as response,
        ):
            if response.status != 200:
                raise RuntimeError(f"Slack refused the clip upload (HTTP {response.status})")
        await self._client.files_completeUploadExternal(
            files=[{"id": file_id, "title": f"videobot #{job.id}"}],
            channel_id=job.channel_id,
            thread_ts=thread_ts,
            initial_comment=render.clip_comment(job, clip.caption),
        )
        return file_id

    async def _already_shared(self, job: Job, file_id: str, thread_ts: str | None) -> bool:
        """Did an earlier attempt's file reach the thread? ``files.info`` shares first, then the
        thread itself (a share can lag behind the message that carries it)."""
        try:
            info = await self._client.files_info(file=file_id)
        except SlackApiError:
            return False
        if _shared_in(info["file"], job.channel_id, thread_ts):
            return True
        return any(file_id in _file_ids(m) for m in await self._thread(job, thread_ts))

    async def _actions_posted(self, job: Job, thread_ts: str | None) -> bool:
        block_id = render.delivery_block_id(job)
        return any(
            any(b.get("block_id") == block_id for b in (m.get("blocks") or []))
            for m in await self._thread(job, thread_ts)
        )

    async def _thread(self, job: Job, thread_ts: str | None) -> list[Mapping[str, Any]]:
        if not thread_ts:
            return []
        try:
            response = await self._client.conversations_replies(channel=job.channel_id, ts=thread_ts, limit=200)
        except SlackApiError:
            return []
        return list(response.get("messages") or [])


def _error_code(error: SlackApiError) -> str:
    return str(error.response.get("error", "unknown_error"))


def _file_ids(message: Mapping[str, Any]) -> set[str]:
    return {str(f.get("id")) for f in message.get("files") or []}


def _shared_in(file: Mapping[str, Any], channel: str, thread_ts: str | None) -> bool:
    shares = file.get("shares") or {}
    for scope in ("public", "private"):
        for share in (shares.get(scope) or {}).get(channel, []):
            if thread_ts is None or thread_ts in (share.get("thread_ts"), share.get("ts")):
                return True
    return False
