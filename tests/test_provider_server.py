"""The provider REST service, exercised over real loopback HTTP the way the bot's backend and the
guide's example client use it: submit, poll, download, cancel, and the errors in between."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from bot.models import GenerationSpec
from bot.provider.generator import ProgressCallback
from bot.provider.server import TASKS, bound_port, build_provider_app, serve_provider
from bot.provider.simulator import SimulatorGenerator

pytestmark = pytest.mark.timeout(60)

KEY = "sk-test-0123456789"


@dataclass(frozen=True)
class ClipFacts:
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float
    middle_frame: np.ndarray


def probe_clip(data: bytes) -> ClipFacts:
    """Decode a whole mp4 with PyAV: proof that it plays, and what it holds."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        duration = (
            float(stream.duration * stream.time_base)
            if stream.duration
            else container.duration / av.time_base
        )
        return ClipFacts(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(stream.average_rate),
            frames=len(frames),
            duration_s=duration,
            middle_frame=frames[len(frames) // 2],
        )


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(image: Image.Image, fmt: str, mime: str | None = None) -> str:
    return f"data:{mime or 'image/' + fmt.lower()};base64,{base64.b64encode(encoded(image, fmt)).decode()}"


def t2v_body(prompt: str = "a red fox in fresh snow", **parameters: Any) -> dict[str, Any]:
    return {
        "model": "wan-2.6",
        "prompt": prompt,
        "parameters": {"duration": 1, "resolution": "480x832", "fps": 16, **parameters},
    }


async def wait_for_status(
    client: httpx.AsyncClient,
    task_id: str,
    *statuses: str,
    timeout_s: float = 30.0,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Poll a task until its status is one of ``statuses``; returns the last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get(f"video/generations/{task_id}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert 0.0 <= body["progress"] <= 1.0
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, f"task {task_id} stuck at {body}"
        await asyncio.sleep(0.05)


Serve = Callable[..., Awaitable[tuple[httpx.AsyncClient, web.Application]]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Start provider servers on free loopback ports; each comes with a client for its /v1."""
    runners: list[web.AppRunner] = []
    clients: list[httpx.AsyncClient] = []

    async def start(
        generator: Any = None, *, api_key: str | None = None, max_parallel: int = 2, task_ttl_s: float = 3600
    ) -> tuple[httpx.AsyncClient, web.Application]:
        app = build_provider_app(
            generator or SimulatorGenerator(),
            api_key=api_key,
            max_parallel=max_parallel,
            files_dir=tmp_path / "files",
            task_ttl_s=task_ttl_s,
        )
        runner = await serve_provider(app, "127.0.0.1", 0)
        runners.append(runner)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound_port(runner)}/v1/", timeout=30)
        clients.append(client)
        return client, app

    yield start
    for client in clients:
        await client.aclose()
    for runner in runners:
        await runner.cleanup()


async def test_text_to_video_is_submitted_polled_and_downloaded_as_a_playable_clip(serve: Serve) -> None:
    client, _ = await serve()

    submitted = await client.post(
        "video/generations", json=t2v_body(duration=2, resolution="832x480", fps=24, seed=7)
    )
    assert submitted.status_code == 200
    assert submitted.json()["status"] == "queued"
    done = await wait_for_status(client, submitted.json()["task_id"], "succeeded", "failed")
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1.0
    download = await client.get(done["output"]["video_url"])

    assert download.status_code == 200
    assert download.headers["content-type"] == "video/mp4"
    assert int(download.headers["content-length"]) == len(download.content)
    clip = probe_clip(download.content)
    assert (clip.width, clip.height, clip.fps, clip.frames) == (832, 480, 24.0, 48)
    assert clip.duration_s == pytest.approx(2.0, abs=0.1)


async def test_image_to_video_animates_the_uploaded_png(serve: Serve) -> None:
    client, _ = await serve()
    colour = (30, 160, 220)
    image = data_uri(Image.new("RGB", (300, 200), colour), "PNG")

    submitted = await client.post(
        "video/image-to-video",
        json={
            "model": "wan-2.6",
            "prompt": "slow push in",
            "image": image,
            "parameters": {"duration": 1, "resolution": "480x832", "fps": 16},
        },
    )
    assert submitted.status_code == 200, submitted.text
    done = await wait_for_status(client, submitted.json()["task_id"], "succeeded", "failed")
    assert done["status"] == "succeeded", done
    clip = probe_clip((await client.get(done["output"]["video_url"])).content)

    assert (clip.width, clip.height, clip.frames) == (480, 832, 16)
    centre = clip.middle_frame[208:624, 120:360].reshape(-1, 3).mean(axis=0)
    assert np.allclose(centre, colour, atol=12), centre


BAD_IMAGE = base64.b64encode(b"definitely not a picture").decode()


@pytest.mark.parametrize(
    ("route", "body", "named"),
    [
        ("video/generations", t2v_body(duration=60), "parameters.duration"),
        ("video/generations", t2v_body(duration=2.5), "parameters.duration"),
        ("video/generations", t2v_body(duration="5"), "parameters.duration"),
        ("video/generations", t2v_body(resolution="123x45"), "resolution"),
        ("video/generations", t2v_body(resolution="large"), "parameters.resolution"),
        ("video/generations", t2v_body(fps=30), "parameters.fps"),
        ("video/generations", t2v_body(seed=-1), "parameters.seed"),
        ("video/generations", t2v_body(motion_strength=3), "parameters.motion_strength"),
        ("video/generations", {"model": "wan-2.6", "parameters": {"duration": 1}}, "prompt"),
        ("video/generations", t2v_body(prompt="   "), "prompt"),
        ("video/generations", {**t2v_body(), "image": "data:image/png;base64,AAAA"}, "image"),
        ("video/image-to-video", t2v_body(), "image"),
        ("video/image-to-video", {**t2v_body(), "image": "https://example.com/cat.png"}, "image"),
        ("video/image-to-video", {**t2v_body(), "image": "data:image/png;base64,@@not base64@@"}, "image"),
        ("video/image-to-video", {**t2v_body(), "image": f"data:image/png;base64,{BAD_IMAGE}"}, "image"),
        ("video/generations", ["not", "an", "object"], "body"),
    ],
)
async def test_invalid_submission_is_refused_with_400_naming_the_field(
    serve: Serve, route: str, body: Any, named: str
) -> None:
    client, app = await serve()

    response = await client.post(route, json=body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert named in error["message"]
    assert app[TASKS].tasks() == []


async def test_body_that_is_not_json_is_refused(serve: Serve) -> None:
    client, _ = await serve()

    response = await client.post(
        "video/generations", content=b"{prompt: fox", headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


async def test_api_key_is_required_everywhere_but_health_and_never_echoed(serve: Serve) -> None:
    client, _ = await serve(api_key=KEY)
    good = {"Authorization": f"Bearer {KEY}"}

    refusals = [
        await client.post("video/generations", json=t2v_body()),
        await client.post("video/generations", json=t2v_body(), headers={"Authorization": "Bearer wrong"}),
        await client.post("video/generations", json=t2v_body(), headers={"Authorization": KEY}),
        await client.get("video/generations/task_x"),
        await client.get("files/task_x.mp4"),
    ]
    for refusal in refusals:
        assert refusal.status_code == 401
        assert refusal.json()["error"]["code"] == "unauthorized"
        assert refusal.headers["WWW-Authenticate"] == "Bearer"
        assert KEY not in refusal.text
    assert (await client.get("health")).status_code == 200

    submitted = await client.post("video/generations", json=t2v_body(), headers=good)
    assert submitted.status_code == 200
    done = await wait_for_status(client, submitted.json()["task_id"], "succeeded", headers=good)
    video_url = done["output"]["video_url"]
    assert KEY not in video_url
    assert (await client.get(video_url)).status_code == 200  # the signed link needs no header
    assert (await client.get(video_url[:-4] + "0000")).status_code == 401


async def test_unknown_task_answers_404_in_json(serve: Serve) -> None:
    client, _ = await serve()

    for response in (
        await client.get("video/generations/task_missing"),
        await client.post("video/generations/task_missing/cancel"),
        await client.get("files/task_missing.mp4"),
        await client.get("no/such/route"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


async def test_cancel_stops_a_running_task_and_marks_it_failed(serve: Serve) -> None:
    client, _ = await serve(max_parallel=1)
    hanging = (await client.post("video/generations", json=t2v_body("stuck [sim:hang]"))).json()["task_id"]
    await wait_for_status(client, hanging, "running")

    canceled = await client.post(f"video/generations/{hanging}/cancel")

    assert canceled.status_code == 200
    assert canceled.json()["status"] == "failed"
    assert canceled.json()["error"] == "canceled"
    polled = await wait_for_status(client, hanging, "failed")
    assert polled["error"] == "canceled"
    again = await client.post(f"video/generations/{hanging}/cancel")
    assert again.status_code == 409
    # the only worker is free again
    after = (await client.post("video/generations", json=t2v_body())).json()["task_id"]
    assert (await wait_for_status(client, after, "succeeded", "failed"))["status"] == "succeeded"


async def test_tasks_wait_in_submission_order_for_a_free_worker(serve: Serve) -> None:
    client, _ = await serve(max_parallel=1)
    first = (await client.post("video/generations", json=t2v_body("first [sim:hang]"))).json()["task_id"]
    await wait_for_status(client, first, "running")
    second = (await client.post("video/generations", json=t2v_body("second"))).json()["task_id"]
    third = (await client.post("video/generations", json=t2v_body("third [sim:hang]"))).json()["task_id"]

    health = (await client.get("health")).json()
    assert (health["running"], health["queue_depth"], health["max_parallel"]) == (1, 2, 1)
    assert (await client.get(f"video/generations/{second}")).json()["status"] == "queued"

    await client.post(f"video/generations/{first}/cancel")
    assert (await wait_for_status(client, second, "succeeded", "failed"))["status"] == "succeeded"
    await wait_for_status(client, third, "running")
    await client.post(f"video/generations/{third}/cancel")


async def test_canceling_a_queued_task_means_it_never_runs(serve: Serve) -> None:
    client, _ = await serve(max_parallel=1)
    blocker = (await client.post("video/generations", json=t2v_body("[sim:hang]"))).json()["task_id"]
    queued = (await client.post("video/generations", json=t2v_body("never"))).json()["task_id"]

    assert (await client.post(f"video/generations/{queued}/cancel")).json()["error"] == "canceled"
    await client.post(f"video/generations/{blocker}/cancel")
    follower = (await client.post("video/generations", json=t2v_body())).json()["task_id"]
    await wait_for_status(client, follower, "succeeded")

    assert (await client.get(f"video/generations/{queued}")).json()["status"] == "failed"


async def test_requests_shaped_like_the_guide_examples_work(serve: Serve) -> None:
    client, _ = await serve(api_key=KEY)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    payload = {
        "model": "wan-2.6",
        "prompt": "A golden retriever runs across an autumn forest trail, cinematic slow motion",
        "parameters": {
            "duration": 1,
            "resolution": "1280x720",
            "fps": 16,
            "guidance_scale": 7.5,
            "num_inference_steps": 50,
        },
    }
    image_b64 = base64.b64encode(encoded(Image.new("RGB", (64, 48), (200, 120, 40)), "JPEG")).decode("utf-8")
    i2v_payload = {
        "model": "wan-2.6",
        "prompt": "steam rises from the cup",
        "image": f"data:image/jpeg;base64,{image_b64}",
        "parameters": {
            "duration": 1,
            "resolution": "1280x720",
            "fps": 16,
            "motion_strength": 0.7,
            "num_inference_steps": 50,
        },
    }

    for path, body in (("video/generations", payload), ("video/image-to-video", i2v_payload)):
        resp = await client.post(path, headers=headers, json=body)
        resp.raise_for_status()
        task_id = resp.json()["task_id"]
        data = await wait_for_status(client, task_id, "succeeded", "failed", headers=headers)
        assert data["status"] == "succeeded", data
        # the guide downloads with a bare GET, no Authorization header
        async with httpx.AsyncClient() as bare:
            video = await bare.get(data["output"]["video_url"])
        video.raise_for_status()
        assert probe_clip(video.content).frames == 16


async def test_video_url_uses_the_host_the_client_reached(serve: Serve) -> None:
    client, _ = await serve()
    task_id = (await client.post("video/generations", json=t2v_body())).json()["task_id"]
    await wait_for_status(client, task_id, "succeeded")

    seen_as_loopback = (await client.get(f"video/generations/{task_id}")).json()["output"]["video_url"]
    seen_via_proxy = (
        await client.get(f"video/generations/{task_id}", headers={"Host": "videos.example:8443"})
    ).json()

    assert seen_as_loopback == f"{str(client.base_url).rstrip('/')}/files/{task_id}.mp4"
    assert seen_via_proxy["output"]["video_url"] == f"http://videos.example:8443/v1/files/{task_id}.mp4"


async def test_finished_tasks_and_their_clips_expire_after_the_ttl(serve: Serve, tmp_path: Path) -> None:
    client, _ = await serve(task_ttl_s=0.3)
    task_id = (await client.post("video/generations", json=t2v_body())).json()["task_id"]
    await wait_for_status(client, task_id, "succeeded")
    assert (tmp_path / "files" / f"{task_id}.mp4").is_file()

    deadline = time.monotonic() + 5
    while (await client.get(f"video/generations/{task_id}")).status_code != 404:
        assert time.monotonic() < deadline, "task never expired"
        await asyncio.sleep(0.05)

    assert not (tmp_path / "files" / f"{task_id}.mp4").exists()


class _BrokenGenerator:
    """A generator with a bug: its error text must not reach the client."""

    name = "broken"

    def validate(self, spec: GenerationSpec) -> None:
        pass

    async def generate(
        self, spec: GenerationSpec, dest: Path, on_progress: ProgressCallback, cancel: asyncio.Event
    ) -> None:
        on_progress(0.5)
        raise RuntimeError("CUDA out of memory at /secret/path")

    def health(self) -> dict[str, Any]:
        return {"device": "nowhere"}


async def test_a_generator_crash_fails_the_task_without_leaking_details(serve: Serve) -> None:
    client, _ = await serve(_BrokenGenerator())
    task_id = (await client.post("video/generations", json=t2v_body(resolution="123x45"))).json()["task_id"]

    done = await wait_for_status(client, task_id, "failed")

    assert done["error"] == "generation failed (internal error)"
    assert "secret" not in str(done)
    assert "output" not in done


async def test_health_reports_generator_queue_and_details_without_a_key(serve: Serve) -> None:
    client, _ = await serve(api_key=KEY)

    health = (await client.get("health")).json()

    assert health["status"] == "ok"
    assert health["generator"] == "simulator"
    assert (health["queue_depth"], health["running"]) == (0, 0)
    assert health["details"]["model"] == "simulator (no real model)"
