"""The DashScope backend over real HTTP against a fake of Alibaba Model Studio's video API
(``tests.fakes.dashscope``): request shapes, retries, refusals, cancel, whole jobs through
``videobot generate``, Slack and a kill -9 of ``videobot serve``."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import av
import httpx
import pytest
from PIL import Image

from bot.backends.dashscope import DashScopeBackend
from bot.errors import BackendError, ConfigurationError
from bot.media import probe
from bot.models import GenerationSpec, TaskStatus
from bot.settings import Settings
from tests.conftest import subprocess_env
from tests.fakes.dashscope import KEY, FakeDashScope, Reply, throttled

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeDashScope]:
    async with FakeDashScope(tmp_path / "oss") as server:
        yield server


@pytest.fixture
async def backend(fake: FakeDashScope) -> AsyncIterator[DashScopeBackend]:
    made = DashScopeBackend(fake.base_url, KEY, backoff_base_s=0.01, backoff_max_s=2.0)
    yield made
    await made.aclose()


def t2v(prompt: str = "a red fox running through fresh snow", **overrides: object) -> GenerationSpec:
    values: dict[str, object] = dict(prompt=prompt, width=1280, height=720, duration_s=5, fps=24, seed=7,
                                     model="wan2.6-t2v", audio=True)
    values.update(overrides)
    return GenerationSpec(**values)  # type: ignore[arg-type]


def photo(width: int, height: int, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(out, format=fmt, quality=92)
    return out.getvalue()


async def finish(backend: DashScopeBackend, task_id: str) -> object:
    for _ in range(20):
        state = await backend.poll(task_id)
        if state.done:
            return state
    raise AssertionError("the task never finished")


def has_audio(path: Path) -> bool:
    with av.open(str(path)) as container:
        return bool(container.streams.audio)


# -- request shapes ---------------------------------------------------------------------------


async def test_text_to_video_sends_size_with_an_asterisk_and_the_documented_fields(
    fake: FakeDashScope, backend: DashScopeBackend, tmp_path: Path
) -> None:
    task_id = await backend.submit(t2v(negative_prompt="blurry", audio=False))

    [sent] = fake.requests_to("t2v")
    assert sent.path == "/api/v1/services/aigc/video-generation/video-synthesis"
    assert sent.headers["X-DashScope-Async"] == "enable" and sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.json == {
        "model": "wan2.6-t2v",
        "input": {"prompt": "a red fox running through fresh snow", "negative_prompt": "blurry"},
        "parameters": {"duration": 5, "size": "1280*720", "prompt_extend": True, "watermark": False, "seed": 7,
                       "audio": False},
    }
    states = [await backend.poll(task_id) for _ in range(3)]
    assert [s.status for s in states] == [TaskStatus.RUNNING, TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED]
    assert fake.requests_to("poll")[0].path == f"/api/v1/tasks/{task_id}"
    clip = await backend.fetch(states[-1], tmp_path / "fox.mp4", 10_000_000)
    assert "Authorization" not in fake.requests_to("video")[0].headers  # the signed OSS link needs no key
    info = probe(clip)
    assert info.duration_s == pytest.approx(5, abs=0.2) and not has_audio(clip)  # audio: false -> silent


async def test_image_to_video_fits_a_6000x4000_photo_into_a_data_uri_and_sends_a_resolution_tier(
    fake: FakeDashScope, backend: DashScopeBackend, tmp_path: Path
) -> None:
    big = photo(6000, 4000)
    spec = t2v("the sea slowly moving", width=1920, height=1080, image=big, image_mime="image/jpeg",
               model="wan2.6-i2v")
    task_id = await backend.submit(spec)

    [sent] = fake.requests_to("i2v")
    assert sent.path == "/api/v1/services/aigc/video-generation/video-synthesis"
    parameters, inputs = sent.json["parameters"], sent.json["input"]
    assert sent.json["model"] == "wan2.6-i2v" and "size" not in parameters
    assert parameters["resolution"] == "1080P" and parameters["audio"] is True
    header, encoded = inputs["img_url"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as received:
        assert received.size == (2000, 1333)
    assert fake.images == [(2000, 1333, len(base64.b64decode(encoded)), "image/jpeg")]
    state = await finish(backend, task_id)
    clip = probe(await backend.fetch(state, tmp_path / "sea.mp4", 10_000_000))  # type: ignore[arg-type]
    assert clip.width / clip.height == pytest.approx(1.5, abs=0.05)  # the clip follows the photo's shape


async def test_a_small_png_frame_is_scaled_up_to_the_360_px_minimum(fake: FakeDashScope, backend: DashScopeBackend) -> None:
    await backend.submit(t2v(image=photo(160, 90, "PNG"), image_mime="image/png", model="wan2.6-i2v"))
    [(width, height, _, mime)] = fake.images
    assert (width, height, mime) == (640, 360, "image/png")


async def test_wan25_takes_only_5_or_10_seconds_and_the_refusal_is_the_providers(fake: FakeDashScope) -> None:
    backend = DashScopeBackend(fake.base_url, KEY, t2v_model="wan2.5-t2v-preview", i2v_model="wan2.5-i2v-preview")
    try:
        with pytest.raises(BackendError) as refused:
            await backend.submit(t2v(duration_s=7, model="wan2.5-t2v-preview"))
        assert not refused.value.retryable
        assert str(refused.value).startswith("The video service refused the request: The duration parameter is invalid")
        assert "5 or 10 s" in str(refused.value)
        assert await backend.submit(t2v(duration_s=10, model="wan2.5-t2v-preview"))
        assert backend.label == "wan2.5 (DashScope)" and backend.max_segment_s == 10
    finally:
        await backend.aclose()


async def test_first_and_last_frame_models_use_the_image2video_path(fake: FakeDashScope) -> None:
    backend = DashScopeBackend(fake.base_url, KEY, i2v_model="wan2.2-kf2v-flash")
    try:
        await backend.submit(t2v(image=photo(800, 600), image_mime="image/jpeg", model="wan2.2-kf2v-flash",
                                 width=1280, height=720))
    finally:
        await backend.aclose()
    [sent] = fake.requests_to("kf2v")
    assert sent.path == "/api/v1/services/aigc/image2video/video-synthesis"
    assert sent.json["input"]["first_frame_url"].startswith("data:image/jpeg;base64,")
    assert sent.json["parameters"]["resolution"] == "720P" and "audio" not in sent.json["parameters"]


def test_from_settings_uses_the_defaults_and_refuses_a_missing_key_or_a_wrong_mode() -> None:
    made = DashScopeBackend.from_settings(Settings(dashscope_api_key="sk-abc"), name="wan", max_concurrency=None)
    assert made.name == "wan" and made.label == "wan2.6 (DashScope)" and made.max_concurrency == 2
    assert [m.name for m in made.models.values()] == ["wan2.6-t2v", "wan2.6-i2v"] and made.max_segment_s == 15
    assert "dashscope-intl.aliyuncs.com" in repr(made) and "sk-abc" not in repr(made)
    with pytest.raises(ConfigurationError, match="DASHSCOPE_API_KEY"):
        DashScopeBackend.from_settings(Settings())
    with pytest.raises(ConfigurationError, match="VIDEOBOT_T2V_MODEL"):
        DashScopeBackend.from_settings(Settings(dashscope_api_key="sk-abc"), t2v_model="wan2.6-i2v")


# -- reliability and refusals -------------------------------------------------------------------


async def test_429_on_submit_and_on_poll_are_retried_after_retry_after(
    fake: FakeDashScope, backend: DashScopeBackend
) -> None:
    fake.queue("t2v", throttled("0.4"))
    task_id = await backend.submit(t2v())
    fake.queue("poll", throttled("0.3"), throttled("0.3"))
    state = await finish(backend, task_id)

    assert state.status is TaskStatus.SUCCEEDED  # type: ignore[attr-defined]
    first, second = fake.requests_to("t2v")
    assert second.at - first.at >= 0.4
    polls = fake.requests_to("poll")
    assert polls[1].at - polls[0].at >= 0.3 and polls[2].at - polls[1].at >= 0.3
    assert sum(fake.submits.values()) == 1


async def test_a_content_check_refusal_says_so(fake: FakeDashScope, backend: DashScopeBackend) -> None:
    with pytest.raises(BackendError, match="the provider's content check refused this prompt"):
        await backend.submit(t2v("a forbidden scene"))
    fake.fail_next("DataInspectionFailed", "Output data may contain inappropriate content.")
    state = await finish(backend, await backend.submit(t2v()))
    assert state.status is TaskStatus.FAILED  # type: ignore[attr-defined]
    assert "the provider's content check refused this prompt" in (state.error or "")  # type: ignore[attr-defined]


async def test_a_rejected_key_is_logged_for_the_admin_and_the_person_hears_misconfigured(
    fake: FakeDashScope, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-region-key-9876543210"
    backend = DashScopeBackend(fake.base_url, wrong)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as refused:
            await backend.submit(t2v())
    finally:
        await backend.aclose()
    assert "misconfigured" in str(refused.value) and wrong not in str(refused.value)
    [admin] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    text = admin.getMessage()
    assert "DASHSCOPE_API_KEY" in text and "InvalidApiKey" in text
    assert "dashscope-intl.aliyuncs.com" in text and "dashscope-us.aliyuncs.com" in text and "Beijing" in text
    assert wrong not in caplog.text


async def test_cancel_reaches_the_provider_and_a_running_task_is_left_alone(
    fake: FakeDashScope, backend: DashScopeBackend
) -> None:
    pending = await backend.submit(t2v())
    await backend.cancel(pending)
    assert fake.tasks[pending].status == "CANCELED"
    assert (await backend.poll(pending)).error == "the task was canceled"

    running = await backend.submit(t2v())
    await backend.poll(running)
    await backend.cancel(running)  # DashScope refuses (not PENDING); no error reaches the caller
    assert [r.path for r in fake.requests_to("cancel")] == [f"/api/v1/tasks/{pending}/cancel", f"/api/v1/tasks/{running}/cancel"]
    assert fake.tasks[running].status == "RUNNING"


async def test_an_expired_download_link_is_explained(tmp_path: Path) -> None:
    async with FakeDashScope(tmp_path / "oss", url_ttl_s=-1) as fake:
        backend = DashScopeBackend(fake.base_url, KEY)
        try:
            state = await finish(backend, await backend.submit(t2v()))
            with pytest.raises(BackendError, match="download link had expired"):
                await backend.fetch(state, tmp_path / "late.mp4", 10_000_000)  # type: ignore[arg-type]
        finally:
            await backend.aclose()
