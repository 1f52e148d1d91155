"""A webhook receiver on loopback: records events, stores delivered clips, honours Idempotency-Key.

It behaves like a platform with idempotent uploads: a repeat of a delivery key answers with
the first message id and stores nothing new, so a test can count real deliveries.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web


@dataclass
class Delivery:
    job_id: int
    key: str
    message_id: str
    path: Path
    caption: str


@dataclass
class WebhookReceiver:
    folder: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    delivery_posts: int = 0
    delay_first_delivery_s: float = 0.0
    fail_deliveries: int = 0
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> "WebhookReceiver":
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def for_job(self, job_id: int) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("job_id") == job_id]

    async def wait_for(self, job_id: int, event: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the job's ``event`` (accepted, progress, delivered, failed) arrives."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for seen in self.for_job(job_id):
                if seen["event"] == event:
                    return seen
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id}: no {event} within {timeout} s; saw {self.for_job(job_id)}")

    async def _hook(self, request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            self.events.append(await request.json())
            return web.json_response({"ok": True})
        form = await request.post()
        self.delivery_posts += 1
        key = request.headers["Idempotency-Key"]
        if self.fail_deliveries > 0:
            self.fail_deliveries -= 1
            return web.json_response({"error": "temporarily unavailable"}, status=503)
        if key in self.deliveries:
            return web.json_response({"message_id": self.deliveries[key].message_id})
        if self.delay_first_delivery_s:
            delay, self.delay_first_delivery_s = self.delay_first_delivery_s, 0.0
            await asyncio.sleep(delay)
        job_id = int(str(form["job_id"]))
        video = form["video"]
        assert isinstance(video, web.FileField)
        path = self.folder / f"delivered-{job_id}-{len(self.deliveries)}.mp4"
        path.write_bytes(video.file.read())
        delivery = Delivery(job_id, key, f"msg-{len(self.deliveries) + 1}", path, str(form["caption"]))
        self.deliveries[key] = delivery
        self.events.append({"job_id": job_id, "event": "delivered", "message_id": delivery.message_id})
        return web.json_response({"message_id": delivery.message_id})
