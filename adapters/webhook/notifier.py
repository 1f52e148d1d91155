"""Posts a webhook job's progress and clip to its callback URL.

Delivery is exactly once through the receiver's idempotency: every attempt for a job carries
the same ``Idempotency-Key`` (saved before the first attempt), so a retry after a crash is
recognised as the same delivery, as Discord does with a message nonce. The key holds a random
part, so it never repeats across databases (``job 1`` again after a reset, or on a second
install). Any 2xx answer is a delivery, whatever its body (``204``, ``200 ok``).

Requests go through ``bot.outbound``'s guard: a callback on loopback, link-local or a private
range is refused unless an admin lists its host in ``VIDEOBOT_ALLOWED_HOSTS``; redirects are not
followed. Events of one job are sent in order, each after the one before; the "accepted" event
is sent in the background, so ``POST /v1/jobs`` answers ``202`` without waiting on the receiver.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable

import httpx

from bot import Job
from bot.models import Clip
from bot.notifier import (
    DeliveryCheckpoint,
    PlatformRefused,
    ProgressUpdate,
    StatusMessage,
)
from bot.outbound import guarded_client

log = logging.getLogger(__name__)


def idempotency_key(job: Job) -> str:
    """A key for one job's clip, unique across installs and databases (stored before use)."""
    return f"videobot-job-{job.id}-{secrets.token_hex(8)}"


class WebhookNotifier:
    platform = "webhook"

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or guarded_client(timeout=60.0)
        self._pending: dict[int, asyncio.Task[None]] = {}

    async def acknowledge(self, job: Job, queue_position: int) -> StatusMessage | None:
        body: dict[str, object] = {"event": "accepted", "queue_position": queue_position}
        self._queue(job, lambda: self._event(job, body))
        return StatusMessage(ref=f"webhook-job-{job.id}")

    async def progress(self, job: Job, update: ProgressUpdate) -> None:
        await self._after_pending(job)
        await self._event(job, {"event": "progress", "stage": update.stage.value, "percent": update.percent})

    async def deliver(self, job: Job, clip: Clip, checkpoint: DeliveryCheckpoint) -> str:
        await self._after_pending(job)
        key = checkpoint.pending_ref or idempotency_key(job)
        if checkpoint.pending_ref is None:
            await checkpoint.save(key)
        with clip.path.open("rb") as video:
            try:
                response = await self._client.post(
                    job.origin_extra["callback_url"],
                    headers={"Idempotency-Key": key},
                    data={"event": "delivered", "job_id": str(job.id), "caption": clip.caption},
                    files={"video": (f"videobot-{job.id}.mp4", video, "video/mp4")},
                )
            except httpx.ReadTimeout as error:  # the whole clip was sent; the receiver has it
                raise PlatformRefused(f"the receiver did not answer ({type(error).__name__})") from error
        if not response.is_success:
            raise PlatformRefused(f"the receiver answered HTTP {response.status_code}")
        return _message_id(response) or key

    async def fail(self, job: Job, message: str) -> None:
        await self._after_pending(job)
        await self._event(job, {"event": "failed", "message": message})

    async def _event(self, job: Job, body: dict[str, object]) -> None:
        response = await self._client.post(job.origin_extra["callback_url"], json={"job_id": job.id, **body})
        if not response.is_success:
            raise httpx.HTTPStatusError(
                f"the receiver answered HTTP {response.status_code}", request=response.request, response=response
            )

    def _queue(self, job: Job, send: Callable[[], Awaitable[None]]) -> None:
        job_id = job.id or 0

        async def run() -> None:
            try:
                await send()
            except Exception as error:  # the job runs regardless; the receiver hears later events
                log.warning("job %s: the accepted event could not be posted: %s", job_id, type(error).__name__)
            finally:
                if self._pending.get(job_id) is task:
                    del self._pending[job_id]

        task = asyncio.create_task(run(), name=f"webhook-accepted-{job_id}")
        self._pending[job_id] = task

    async def _after_pending(self, job: Job) -> None:
        task = self._pending.get(job.id or 0)
        if task is not None:
            await asyncio.shield(task)

    async def aclose(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        await asyncio.gather(*self._pending.values(), return_exceptions=True)
        await self._client.aclose()


def _message_id(response: httpx.Response) -> str | None:
    """The receiver's message id when it sent one in a JSON object; a bare ``204`` has none."""
    try:
        data = response.json()
    except ValueError:
        return None
    value = data.get("message_id") if isinstance(data, dict) else None
    return str(value)[:200] if isinstance(value, str | int) and not isinstance(value, bool) else None
