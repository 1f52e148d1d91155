"""Webhook delivery and refunds (issue 14.5 and 14.8), against receivers on loopback.

Any 2xx is a delivery; the Idempotency-Key never repeats across databases; "accepted" is sent
after ``POST /v1/jobs`` has answered 202; bodies follow ``max_image_mb``; a clip the receiver
took and answered with a 5xx is not refunded, one that never arrived is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from PIL import Image

from adapters.webhook import job_routes
from bot import outbound
from bot.errors import LimitExceeded
from bot.grammar import parse_request
from storage.tables import JobState
from tests.conftest import webhook_origin

pytestmark = pytest.mark.timeout(90)

LIMITS = '[defaults]\nresolutions = ["832x480"]\nuser_concurrent_jobs = 0\n'
FAST = "--duration 1 --resolution 832x480"
KEY = "api-key-123456"


class Receiver:
    """A receiver whose answer to a clip is scripted: ``status`` and ``body``; JSON events can
    be slowed by ``event_delay_s``."""

    def __init__(self, status: int = 200, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.status, self.body, self.content_type = status, body, content_type
        self.event_delay_s = 0.0
        self.events: list[dict[str, Any]] = []
        self.event_times: list[float] = []
        self.clips: list[tuple[str, int]] = []  # (Idempotency-Key, bytes)
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        outbound.allow(f"127.0.0.1:{self.port}")
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        if request.content_type == "application/json":
            await asyncio.sleep(self.event_delay_s)
            self.events.append(await request.json())
            self.event_times.append(time.monotonic())
            return web.json_response({"ok": True})
        form = await request.post()
        video = form["video"]
        assert isinstance(video, web.FileField)
        self.clips.append((request.headers["Idempotency-Key"], len(video.file.read())))
        return web.Response(status=self.status, body=self.body, content_type=self.content_type)

    async def wait(self, check: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"gave up; events {self.events}, clips {self.clips}"
            await asyncio.sleep(0.05)


@pytest.fixture
async def hooks() -> AsyncIterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        await receiver.stop()


async def _finished(core: Any, job_id: int) -> Any:
    deadline = time.monotonic() + 60
    while not (job := await core.service.status(job_id)).job_state.terminal:
        assert time.monotonic() < deadline, job.state
        await asyncio.sleep(0.05)
    return job


async def _fast_core(make_core: Any, limits: str = LIMITS, **overrides: Any) -> Any:
    core = await make_core(limits, start=False, **overrides)
    core.runner.options = dataclasses.replace(core.runner.options, delivery_backoff_s=0.01)
    await core.start()
    return core


# -- 14.5: any 2xx is a delivery --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [(204, b"", "text/plain"), (200, b"ok", "text/plain"), (201, b"<html>thanks</html>", "text/html"),
     (202, b'{"message_id": 42}', "application/json")],
)
async def test_any_2xx_answer_is_one_delivery(
    status: int, body: bytes, content_type: str, make_core: Any, hooks: list[Receiver], tmp_path: Path
) -> None:
    receiver = await Receiver(status, body, content_type).start()
    hooks.append(receiver)
    core = await _fast_core(make_core)
    origin = webhook_origin(receiver)  # type: ignore[arg-type]
    job = await core.service.submit(parse_request(f"a lighthouse {FAST}"), origin)
    job = await _finished(core, job.id)
    assert job.job_state is JobState.SUCCEEDED, job.error
    assert len(receiver.clips) == 1
    assert job.delivered_ref == ("42" if status == 202 else receiver.clips[0][0])


async def test_idempotency_keys_never_repeat_across_databases(
    make_core: Any, hooks: list[Receiver], tmp_path: Path, another_database: Any
) -> None:
    """Job 1 of one install and job 1 of another (or of the same after a reset) are two clips."""
    receiver = await Receiver(200, b'{"ok": true}', "application/json").start()
    hooks.append(receiver)
    for install in ("first", "second"):
        core = await _fast_core(make_core, data_dir=tmp_path / install, database_url=another_database())
        job = await core.service.submit(parse_request(f"a mill {FAST}"), webhook_origin(receiver))  # type: ignore[arg-type]
        assert job.id == 1
        assert (await _finished(core, job.id)).job_state is JobState.SUCCEEDED
        await core.stop()
    first, second = (key for key, _ in receiver.clips)
    assert first != second and first.startswith("videobot-job-1-") and second.startswith("videobot-job-1-")


async def test_a_retry_carries_the_same_key(make_core: Any, receiver: Any) -> None:
    receiver.fail_deliveries = 2
    core = await _fast_core(make_core)
    job = await core.service.submit(parse_request(f"a dam {FAST}"), webhook_origin(receiver))
    job = await _finished(core, job.id)
    assert job.job_state is JobState.SUCCEEDED and receiver.delivery_posts == 3
    assert len(receiver.deliveries) == 1 and job.delivery_pending_ref in receiver.deliveries


async def test_accepted_is_sent_after_the_202_so_a_slow_receiver_holds_nothing_up(
    make_core: Any, hooks: list[Receiver]
) -> None:
    receiver = await Receiver().start()
    receiver.event_delay_s = 3.0
    hooks.append(receiver)
    core = await make_core(LIMITS, start=False)
    port = await core.serve_ops("127.0.0.1", 0, job_routes(core.service, KEY))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        started = time.monotonic()
        answer = await client.post(
            "/v1/jobs", json={"prompt": f"a fox {FAST}", "callback_url": receiver.url},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        answered = time.monotonic()
    assert answer.status_code == 202 and answered - started < 1.5
    await receiver.wait(lambda: receiver.events)
    assert receiver.events[0]["event"] == "accepted" and receiver.event_times[0] > answered


def _photo(megabytes: float) -> bytes:
    """A PNG of about ``megabytes`` (noise does not compress)."""
    side = int((megabytes * 1024 * 1024 / 3) ** 0.5) + 1
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, format="PNG", compress_level=0)
    return out.getvalue()


async def test_the_body_limit_follows_max_image_mb(make_core: Any, receiver: Any) -> None:
    import base64

    photo = _photo(2.2)
    assert len(photo) > 2 * 1024 * 1024
    image = "data:image/png;base64," + base64.b64encode(photo).decode()
    body = {"prompt": f"sway {FAST}", "callback_url": receiver.url, "image": image}
    headers = {"Authorization": f"Bearer {KEY}"}
    core = await make_core(LIMITS, start=False)
    port = await core.serve_ops("127.0.0.1", 0, job_routes(core.service, KEY))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        accepted = await client.post("/v1/jobs", json=body, headers=headers)
        assert accepted.status_code != 413, accepted.text  # a 2 MB photo under the default 20 MB
        assert accepted.status_code == 202, accepted.text
        (core.settings.limits_path).write_text("max_image_mb = 1\n" + LIMITS)
        await asyncio.sleep(1.2)
        core.service.limits.current()
        refused = await client.post("/v1/jobs", json=body, headers=headers)
    assert refused.status_code == 413 and "max_image_mb" in refused.json()["error"]


# -- 14.8: refunds --------------------------------------------------------------------------------


async def test_a_clip_the_receiver_took_then_answered_5xx_is_not_refunded(make_core: Any, receiver: Any) -> None:
    receiver.fail_deliveries = 100  # takes every clip, answers 503
    core = await _fast_core(make_core, LIMITS + "user_daily_jobs = 1\n")
    origin = webhook_origin(receiver)
    job = await core.service.submit(parse_request(f"a tower {FAST}"), origin)
    job = await _finished(core, job.id)
    assert job.job_state is JobState.FAILED and job.counts_toward_quota
    assert receiver.delivery_posts == 4 and "counts as made" in (job.error or "")
    with pytest.raises(LimitExceeded, match="used 1 of your 1"):
        await core.service.submit(parse_request(f"a tower again {FAST}"), origin)


async def test_a_clip_that_never_arrived_is_refunded(make_core: Any, receiver: Any) -> None:
    with socket.socket() as sock:  # a listed receiver that is down: nothing listens there
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    outbound.allow(f"127.0.0.1:{closed}")
    core = await _fast_core(make_core, LIMITS + "user_daily_jobs = 1\n")
    down = webhook_origin(receiver, extra={"callback_url": f"http://127.0.0.1:{closed}/hook"})
    job = await core.service.submit(parse_request(f"a bridge {FAST}"), down)
    job = await _finished(core, job.id)
    assert job.job_state is JobState.FAILED and not job.counts_toward_quota
    again = await core.service.submit(parse_request(f"a bridge {FAST}"), webhook_origin(receiver))
    assert (await _finished(core, again.id)).job_state is JobState.SUCCEEDED


# -- 14.8: the key's trust model --------------------------------------------------------------------


async def test_a_key_bound_to_one_workspace_acts_only_there(make_core: Any, receiver: Any) -> None:
    core = await make_core(LIMITS, start=False)
    port = await core.serve_ops("127.0.0.1", 0, job_routes(core.service, KEY, workspace="acme"))
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": f"a fox {FAST}", "callback_url": receiver.url, "user_id": "u1"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        other = await client.post("/v1/jobs", json={**body, "workspace_id": "globex"}, headers=headers)
        assert other.status_code == 403 and "acme" in other.json()["error"]
        made = await client.post("/v1/jobs", json=body, headers=headers)
        assert made.status_code == 202
    job = await core.service.status(made.json()["job_id"])
    assert job.workspace_id == "acme"
