"""Posts a webhook job's progress and clip to its callback URL.

Delivery is exactly once through the receiver's idempotency: every attempt for a job carries
the same ``Idempotency-Key`` (saved before the first attempt), so a retry after a crash is
recognised as the same delivery, as Discord does with a message nonce.
"""

from __future__ import annotations

import httpx

from bot import Job
from bot.models import Clip
from bot.notifier import DeliveryCheckpoint, ProgressUpdate, StatusMessage


def idempotency_key(job: Job) -> str:
    return f"videobot-job-{job.id}"


class WebhookNotifier:
    platform = "webhook"

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient(timeout=60.0)

    async def acknowledge(self, job: Job, queue_position: int) -> StatusMessage | None:
        await self._event(job, {"event": "accepted", "queue_position": queue_position})
        return StatusMessage(ref=idempotency_key(job))

    async def progress(self, job: Job, update: ProgressUpdate) -> None:
        await self._event(job, {"event": "progress", "stage": update.stage.value, "percent": update.percent})

    async def deliver(self, job: Job, clip: Clip, checkpoint: DeliveryCheckpoint) -> str:
        key = checkpoint.pending_ref or idempotency_key(job)
        if checkpoint.pending_ref is None:
            await checkpoint.save(key)
        with clip.path.open("rb") as video:
            response = await self._client.post(
                job.origin_extra["callback_url"],
                headers={"Idempotency-Key": key},
                data={"event": "delivered", "job_id": str(job.id), "caption": clip.caption},
                files={"video": (f"videobot-{job.id}.mp4", video, "video/mp4")},
            )
        response.raise_for_status()
        return str(response.json().get("message_id", key))

    async def fail(self, job: Job, message: str) -> None:
        await self._event(job, {"event": "failed", "message": message})

    async def _event(self, job: Job, body: dict[str, object]) -> None:
        response = await self._client.post(job.origin_extra["callback_url"], json={"job_id": job.id, **body})
        response.raise_for_status()

    async def aclose(self) -> None:
        await self._client.aclose()
