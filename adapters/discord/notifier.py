"""``DiscordNotifier``: the Notifier port for Discord.

A job's life shows in one status message that heads its thread and is edited in place; the clip
arrives as an attachment in that thread. What shapes the code:

- A slash command's status message is the interaction's own (deferred) response, opened into a
  thread. Its token edits it for 15 minutes; after that, or once Discord refuses the token, the
  same message is edited through the channel API (the bot authored it).
- Edits share a per-channel rate limit (about 5 per 5 s). The runner already spaces updates per
  job; ``_ChannelBudget`` drops a percent-only change when the channel's budget is spent, while
  stage changes always go through (discord.py waits out a 429 for them).
- Delivery is exactly once: the upload carries a nonce derived from the job id with
  ``enforce_nonce``, so Discord answers a repeat within minutes with the first message; a retry
  later than that finds the earlier message among the thread's recent ones by its buttons.
- A clip over the guild's upload limit is re-encoded to fit, off the event loop (ffmpeg blocks);
  if it cannot fit, the ``BackendError`` says why and the runner reports it in the thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord

from adapters.discord import render
from adapters.discord.origins import PLATFORM, SOURCE_INTERACTION
from adapters.discord.views import delivery_view, failure_view, status_view, view_job_ids
from bot import Job
from bot.errors import BackendError, NotAllowed
from bot.media import fit_to_size
from bot.media_pool import MediaPool
from bot.models import Clip
from bot.notifier import DeliveryCheckpoint, ProgressUpdate, Stage, StatusMessage

log = logging.getLogger(__name__)

INTERACTION_TOKEN_TTL_S = 15 * 60
TOKEN_SAFETY_S = 60
"""Stop using a token this long before Discord would, so an edit never races its expiry."""
UPLOAD_HEADROOM_BYTES = 64 * 1024
"""Room left under the upload limit for the multipart envelope and the message itself."""
RECENT_MESSAGES_CHECKED = 50
CHANNEL_EDITS_PER_WINDOW = 5
CHANNEL_EDIT_WINDOW_S = 5.0
CLIENT_WAIT_S = 60.0

_NO_MENTIONS = discord.AllowedMentions.none()
_REQUESTER_ONLY = discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=False)

# what the bot needs to run a job in a channel, by discord.Permissions attribute
_NEEDED_ALWAYS = ("view_channel", "send_messages_in_threads", "attach_files", "read_message_history")
_NEEDED_FOR_NEW_THREAD = ("create_public_threads",)


def delivery_nonce(job: Job) -> str:
    """The same for every attempt at one job's delivery, unique across jobs (Discord allows 25 chars)."""
    return f"videobot-{job.id}"


def _split_ref(ref: str) -> tuple[int, int]:
    channel_id, _, message_id = ref.partition(":")
    return int(channel_id), int(message_id)


def _ref(channel_id: int, message_id: int) -> str:
    return f"{channel_id}:{message_id}"


class PendingInteractions:
    """Interactions whose handler is still running, so ``acknowledge`` can answer through them.

    ``JobService.submit`` calls ``acknowledge`` before it returns, so the interaction that asked
    is always still here when its status message is made; nothing outlives its handler.
    """

    def __init__(self) -> None:
        self._live: dict[str, discord.Interaction] = {}

    @contextmanager
    def track(self, interaction: discord.Interaction) -> Iterator[None]:
        self._live[str(interaction.id)] = interaction
        try:
            yield
        finally:
            self._live.pop(str(interaction.id), None)

    def get(self, interaction_id: str | None) -> discord.Interaction | None:
        return self._live.get(interaction_id or "")


class _ChannelBudget:
    """A sliding window of recent edits in one channel."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def take(self, now: float) -> bool:
        while self._times and now - self._times[0] >= CHANNEL_EDIT_WINDOW_S:
            self._times.popleft()
        if len(self._times) >= CHANNEL_EDITS_PER_WINDOW:
            return False
        self._times.append(now)
        return True


@dataclass
class _Shown:
    stage: Stage
    content: str


class DiscordNotifier:
    platform = PLATFORM

    def __init__(self, *, clock: Callable[[], float] = time.time, media: MediaPool | None = None) -> None:
        """``clock`` is wall time (interaction tokens expire by it); tests move it forward.
        ``media`` shrinks clips over the upload cap out of process (the service's pool)."""
        self.pending = PendingInteractions()
        self._media = media or MediaPool()
        self._clock = clock
        self._client: discord.Client | None = None
        self._attached = asyncio.Event()
        self._shown: dict[int, _Shown] = {}
        self._budgets: dict[int, _ChannelBudget] = {}
        self._refused_tokens: set[str] = set()

    def attach(self, client: discord.Client) -> None:
        """Use ``client`` (logged in) from now on; calls made before this wait for it."""
        self._client = client
        self._attached.set()

    def detach(self) -> None:
        self._client = None
        self._attached.clear()

    async def _live_client(self) -> discord.Client:
        """The runner may resume a delivery before the adapter has logged in; wait a while for it."""
        try:
            await asyncio.wait_for(self._attached.wait(), CLIENT_WAIT_S)
        except TimeoutError:
            raise RuntimeError("the Discord client is not connected") from None
        assert self._client is not None
        return self._client

    # -- acknowledge -----------------------------------------------------------------------

    async def acknowledge(self, job: Job, queue_position: int) -> StatusMessage | None:
        content = render.status(job, ProgressUpdate(Stage.QUEUED, queue_position=queue_position))
        self._shown[job.id or 0] = _Shown(Stage.QUEUED, content)
        try:
            if job.origin_extra.get("source") == SOURCE_INTERACTION:
                interaction = self.pending.get(job.origin_extra.get("interaction_id"))
                if interaction is None:
                    raise RuntimeError(f"job {job.id}: acknowledged outside its interaction's handler")
                return await self._acknowledge_interaction(job, interaction, content)
            return await self._acknowledge_mention(job, content)
        except discord.Forbidden as exc:
            raise NotAllowed(render.forbidden(f"<#{job.channel_id}>")) from exc

    async def _acknowledge_interaction(self, job: Job, interaction: discord.Interaction, content: str) -> StatusMessage:
        """The deferred response becomes the status message; a thread opens on it unless we are in one."""
        _require(interaction.app_permissions, job, new_thread=job.thread_id is None)
        message = await interaction.edit_original_response(
            content=content, view=status_view(job.id or 0), allowed_mentions=_NO_MENTIONS
        )
        if job.thread_id is not None:
            return StatusMessage(ref=_ref(message.channel.id, message.id), thread_id=job.thread_id)
        thread = await message.create_thread(name=render.thread_name(job), auto_archive_duration=1440)
        return StatusMessage(ref=_ref(message.channel.id, message.id), thread_id=str(thread.id))

    async def _acknowledge_mention(self, job: Job, content: str) -> StatusMessage:
        """A thread opens on the person's message (or the thread they wrote in is used); the status goes inside."""
        client = await self._live_client()
        asked = int(job.origin_extra["message_id"])
        if job.thread_id is not None:
            thread = client.get_channel(int(job.thread_id))
            if isinstance(thread, discord.Thread):
                _require(thread.permissions_for(thread.guild.me), job, new_thread=False)
            target = client.get_partial_messageable(int(job.thread_id), guild_id=int(job.workspace_id))
            reference = discord.MessageReference(message_id=asked, channel_id=target.id, fail_if_not_exists=False)
            message = await target.send(
                content, view=status_view(job.id or 0), reference=reference, allowed_mentions=_NO_MENTIONS
            )
        else:
            channel = client.get_channel(int(job.channel_id))
            if not isinstance(channel, discord.TextChannel):
                raise NotAllowed(render.not_a_text_channel())
            _require(channel.permissions_for(channel.guild.me), job, new_thread=True)
            opened = await channel.get_partial_message(asked).create_thread(
                name=render.thread_name(job), auto_archive_duration=1440
            )
            message = await opened.send(content, view=status_view(job.id or 0), allowed_mentions=_NO_MENTIONS)
        return StatusMessage(ref=_ref(message.channel.id, message.id), thread_id=str(message.channel.id))

    # -- progress --------------------------------------------------------------------------

    async def progress(self, job: Job, update: ProgressUpdate) -> None:
        if job.status_ref is None:
            return
        content = render.status(job, update)
        shown = self._shown.get(job.id or 0)
        if shown is not None and shown.content == content:
            return
        stage_changed = shown is None or shown.stage is not update.stage
        channel_id, _ = _split_ref(job.status_ref)
        budget = self._budgets.setdefault(channel_id, _ChannelBudget())
        if not budget.take(time.monotonic()) and not stage_changed:
            return
        view = None if update.stage is Stage.CANCELED else status_view(job.id or 0)
        await self._edit_status(job, content, view)
        self._shown[job.id or 0] = _Shown(update.stage, content)
        if update.stage is Stage.CANCELED:
            self._forget(job)

    def _token_usable(self, job: Job) -> bool:
        extra = job.origin_extra
        if extra.get("source") != SOURCE_INTERACTION or extra.get("interaction_id") in self._refused_tokens:
            return False
        started = float(extra.get("interaction_at") or 0)
        return self._clock() - started < INTERACTION_TOKEN_TTL_S - TOKEN_SAFETY_S

    async def _edit_status(self, job: Job, content: str, view: discord.ui.View | None) -> None:
        """Through the interaction token while it lives, then through the channel API."""
        client = await self._live_client()
        channel_id, message_id = _split_ref(job.status_ref or "")
        kwargs: dict[str, Any] = {"content": content, "view": view, "allowed_mentions": _NO_MENTIONS}
        if self._token_usable(job):
            extra = job.origin_extra
            webhook = discord.Webhook.partial(int(extra["application_id"]), extra["interaction_token"], client=client)
            try:
                await webhook.edit_message(message_id, **kwargs)
                return
            except discord.HTTPException as exc:
                if exc.status not in (401, 404):
                    raise
                log.info("job %s: interaction token refused (%s); editing through the channel", job.id, exc.status)
                self._refused_tokens.add(extra["interaction_id"])
        channel = client.get_partial_messageable(channel_id, guild_id=int(job.workspace_id))
        await channel.get_partial_message(message_id).edit(**kwargs)

    async def _settle_status(self, job: Job, content: str) -> None:
        """A job's last word on its status message; failing to say it never fails the job."""
        if job.status_ref is None:
            return
        try:
            await self._edit_status(job, content, None)
        except Exception:  # a closed client or a refused edit: the clip or the failure message already went out
            log.warning("job %s: could not update the status message", job.id, exc_info=True)
        self._forget(job)

    def _forget(self, job: Job) -> None:
        self._shown.pop(job.id or 0, None)

    # -- deliver ---------------------------------------------------------------------------

    async def deliver(self, job: Job, clip: Clip, checkpoint: DeliveryCheckpoint) -> str:
        client = await self._live_client()
        target = self._thread_of(client, job)
        nonce = delivery_nonce(job)
        if checkpoint.pending_ref is not None:
            earlier = await self._find_delivery(client, target, job)
            if earlier is not None:
                log.info("job %s: the clip was already posted as %s", job.id, earlier.id)
                return _ref(earlier.channel.id, earlier.id)
        else:
            await checkpoint.save(nonce)
        limit = self._upload_limit(client, job)
        path, shrunk_to = clip.path, None
        if clip.path.stat().st_size > limit - UPLOAD_HEADROOM_BYTES:
            shrunk_to = limit
            out = clip.path.with_name(f"{clip.path.stem}.discord-{limit}.mp4")
            path = await self._media.run(fit_to_size, clip.path, out, limit - UPLOAD_HEADROOM_BYTES)
        try:
            message = await target.send(
                render.delivery(job, clip.caption, shrunk_to=shrunk_to),
                file=discord.File(path, filename=f"videobot-{job.id}.mp4"),
                view=delivery_view(job.id or 0),
                nonce=nonce,
                allowed_mentions=_REQUESTER_ONLY,
            )
        except discord.Forbidden as exc:
            raise BackendError(render.forbidden(f"<#{job.thread_id or job.channel_id}>")) from exc
        except discord.HTTPException as exc:
            if exc.status != 413:
                raise
            size_mib = Path(path).stat().st_size / 2**20
            raise BackendError(f"Discord refused the {size_mib:.1f} MiB upload as too large.") from exc
        await self._settle_status(job, render.delivered_status(job))
        return _ref(message.channel.id, message.id)

    def _thread_of(self, client: discord.Client, job: Job) -> discord.PartialMessageable:
        return client.get_partial_messageable(int(job.thread_id or job.channel_id), guild_id=int(job.workspace_id))

    def _upload_limit(self, client: discord.Client, job: Job) -> int:
        """The guild's own limit (boosts raise it); the interaction's figure if the guild is not cached."""
        guild = client.get_guild(int(job.workspace_id))
        if guild is not None:
            return guild.filesize_limit
        return int(job.origin_extra.get("upload_limit") or discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES)

    async def _find_delivery(
        self, client: discord.Client, target: discord.PartialMessageable, job: Job
    ) -> discord.Message | None:
        """The bot's earlier message carrying this job's clip, recognised by its buttons."""
        me = client.user.id if client.user else 0
        async for message in target.history(limit=RECENT_MESSAGES_CHECKED):
            if message.author.id == me and message.attachments and job.id in view_job_ids(message):
                return message
        return None

    # -- fail ------------------------------------------------------------------------------

    async def fail(self, job: Job, message: str) -> None:
        client = await self._live_client()
        try:
            await self._thread_of(client, job).send(
                render.failure(job, message), view=failure_view(job.id or 0), allowed_mentions=_REQUESTER_ONLY
            )
        finally:
            await self._settle_status(job, render.failed_status(job, message))


def _require(permissions: discord.Permissions, job: Job, *, new_thread: bool) -> None:
    """Refuse up front, with the missing permissions named, rather than leave a job that cannot post."""
    needed = _NEEDED_ALWAYS + (_NEEDED_FOR_NEW_THREAD if new_thread else ())
    missing = [name.replace("_", " ").title() for name in needed if not getattr(permissions, name)]
    if missing:
        raise NotAllowed(render.cannot_post(f"<#{job.channel_id}>", missing))
