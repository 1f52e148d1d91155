"""First-and-last-frame and multi-shot requests at the providers: DashScope's ``kf2v`` models,
fal's ``wan-flf2v`` endpoint, Wan 2.6's multi-shot switch.

Each hosted backend is driven submit -> poll -> fetch against its fake over real HTTP. The
fakes honour the frames (their clip is a crossfade from the first image to the last), so the
story a person sees is checked on decoded pixels: the clip they get opens on their start image
and ends on their end image. The local GPU's twin of this story is in ``test_gpu_backend.py``.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageOps

from bot.backends.dashscope import DashScopeBackend
from bot.backends.fal import FalBackend
from bot.catalog import MODELS
from bot.errors import BackendError
from bot.models import GenerationSpec, Mode, TaskState
from tests.conftest import subprocess_env
from tests.fakes.dashscope import KEY as DASHSCOPE_KEY
from tests.fakes.dashscope import FakeDashScope
from tests.fakes.fal import FLF2V, FakeFal
from tests.fakes.fal import KEY as FAL_KEY

pytestmark = pytest.mark.timeout(60)

CLOSE = 12.0
"""Mean absolute difference (0–255 per channel, over every pixel) under which a decoded frame
counts as the image: h264 at crf 18 plus a resize stays far below it on these pictures."""
APART = 40.0
"""...and over which it is clearly another picture (the two test images differ by ~100)."""


def picture(width: int, height: int, kind: str, fmt: str = "JPEG") -> bytes:
    """A start picture (a warm left-to-right ramp) or an end picture (cool stripes), so a
    frame that matches one cannot match the other or a flat test pattern."""
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    if kind == "start":
        pixels = np.concatenate([220 * x + 30 + 0 * y, 60 + 80 * y + 0 * x, 40 + 0 * x + 0 * y], axis=2)
    else:
        stripes = ((y * 6).astype(int) % 2).astype(np.float32)
        pixels = np.concatenate([30 + 0 * x + 0 * y, 90 + 120 * stripes + 0 * x, 230 - 100 * x + 0 * y], axis=2)
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, format=fmt, quality=95)
    return out.getvalue()


def first_and_last(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return frames[0], frames[-1]


def difference(frame: np.ndarray, image: bytes) -> float:
    """Mean absolute pixel difference between a decoded frame and ``image`` fitted to its size."""
    with Image.open(io.BytesIO(image)) as opened:
        fitted = ImageOps.fit(opened.convert("RGB"), (frame.shape[1], frame.shape[0]), Image.Resampling.LANCZOS)
    return float(np.abs(frame.astype(np.float32) - np.asarray(fitted, dtype=np.float32)).mean())


def assert_runs_from_start_to_end(clip: Path, start: bytes, end: bytes) -> None:
    first, last = first_and_last(clip)
    assert difference(first, start) < CLOSE, "the clip does not open on the start image"
    assert difference(last, end) < CLOSE, "the clip does not end on the end image"
    assert difference(last, start) > APART and difference(first, end) > APART  # the measure tells them apart


def data_uri_size(value: str) -> tuple[int, int, int]:
    import base64

    data = base64.b64decode(value.split(";base64,", 1)[1])
    with Image.open(io.BytesIO(data)) as image:
        return image.width, image.height, len(data)


# -- DashScope ----------------------------------------------------------------------------------


@pytest.fixture
async def dashscope(tmp_path: Path) -> AsyncIterator[FakeDashScope]:
    async with FakeDashScope(tmp_path / "oss") as fake:
        yield fake


@pytest.fixture
async def ds_backend(dashscope: FakeDashScope) -> AsyncIterator[DashScopeBackend]:
    made = DashScopeBackend(dashscope.base_url, DASHSCOPE_KEY, backoff_base_s=0.01, prompt_extend=False)
    yield made
    await made.aclose()


def ds_spec(**fields: object) -> GenerationSpec:
    values: dict[str, object] = {"prompt": "the tide comes in at dusk", "width": 1280, "height": 720,
                                 "duration_s": 5, "fps": 24, "seed": 7}
    values.update(fields)
    return GenerationSpec(**values)  # type: ignore[arg-type]


async def made(backend: DashScopeBackend | FalBackend, spec: GenerationSpec, dest: Path) -> Path:
    task_id = await backend.submit(spec)
    for _ in range(20):
        state: TaskState = await backend.poll(task_id)
        if state.done:
            assert state.error is None, state.error
            return await backend.fetch(state, dest, 50_000_000)
    raise AssertionError("the task never finished")


async def test_dashscope_sends_first_then_last_frame_to_kf2v_and_the_clip_ends_on_the_last(
    dashscope: FakeDashScope, ds_backend: DashScopeBackend, tmp_path: Path
) -> None:
    start, end = picture(3000, 2000, "start"), picture(900, 600, "end", "PNG")
    clip = await made(ds_backend, ds_spec(image=start, image_mime="image/jpeg", end_image=end,
                                          end_image_mime="image/png", model="wan2.6-i2v"), tmp_path / "kf.mp4")

    [sent] = dashscope.requests_to("kf2v")
    assert sent.path == "/api/v1/services/aigc/image2video/video-synthesis"
    assert sent.json["model"] == "wan2.2-kf2v-flash"  # wan2.6-i2v takes no end frame: the kf2v default does
    assert [k for k in sent.json["input"] if k.endswith("_url")] == ["first_frame_url", "last_frame_url"]
    assert dashscope.frame_fields == [["first_frame_url", "last_frame_url"]]
    assert sent.json["parameters"]["resolution"] == "720P" and "size" not in sent.json["parameters"]
    (w1, h1, n1, _), (w2, h2, n2, _) = dashscope.images
    assert (w1, h1) == (2000, 1333) and (w2, h2) == (900, 600)  # the 3000 px one fitted to 360–2000 px
    assert all(360 <= side <= 2000 for side in (w1, h1, w2, h2)) and max(n1, n2) <= 10 * 2**20
    assert_runs_from_start_to_end(clip, start, end)


async def test_dashscope_kf2v_plus_takes_both_frames_at_720p(
    dashscope: FakeDashScope, ds_backend: DashScopeBackend, tmp_path: Path
) -> None:
    start, end = picture(1280, 720, "start"), picture(1280, 720, "end")
    clip = await made(ds_backend, ds_spec(image=start, image_mime="image/jpeg", end_image=end,
                                          end_image_mime="image/jpeg", model="wanx2.1-kf2v-plus"), tmp_path / "p.mp4")
    [sent] = dashscope.requests_to("kf2v")
    assert sent.json["model"] == "wanx2.1-kf2v-plus" and sent.json["parameters"]["resolution"] == "720P"
    assert dashscope.frame_fields == [["first_frame_url", "last_frame_url"]]
    assert_runs_from_start_to_end(clip, start, end)


async def test_a_loop_sends_the_start_image_as_the_last_frame(
    dashscope: FakeDashScope, ds_backend: DashScopeBackend, tmp_path: Path
) -> None:
    start = picture(1200, 800, "start")
    clip = await made(ds_backend, ds_spec(image=start, image_mime="image/jpeg", end_image=start,
                                          end_image_mime="image/jpeg"), tmp_path / "loop.mp4")
    [sent] = dashscope.requests_to("kf2v")
    assert sent.json["input"]["first_frame_url"] == sent.json["input"]["last_frame_url"]
    first, last = first_and_last(clip)
    assert difference(first, start) < CLOSE and difference(last, start) < CLOSE


@pytest.mark.parametrize("model,mode", [("wan2.6-t2v", "t2v"), ("wan2.6-i2v", "i2v")])
async def test_multi_shot_is_shot_type_multi_with_prompt_extend_on_wan26(
    dashscope: FakeDashScope, ds_backend: DashScopeBackend, tmp_path: Path, model: str, mode: str
) -> None:
    image = {"image": picture(1280, 720, "start"), "image_mime": "image/jpeg"} if mode == "i2v" else {}
    await made(ds_backend, ds_spec(model=model, shots="multi", duration_s=10, audio=True, **image), tmp_path / "m.mp4")
    [sent] = dashscope.requests_to(mode)  # type: ignore[arg-type]
    assert sent.json["model"] == model and MODELS[model].multi_shot
    assert sent.json["parameters"]["shot_type"] == "multi"
    assert sent.json["parameters"]["prompt_extend"] is True  # though this backend is set not to extend prompts


async def test_a_single_shot_request_sends_no_shot_type(
    dashscope: FakeDashScope, ds_backend: DashScopeBackend, tmp_path: Path
) -> None:
    await made(ds_backend, ds_spec(model="wan2.6-t2v"), tmp_path / "s.mp4")
    [sent] = dashscope.requests_to("t2v")
    assert "shot_type" not in sent.json["parameters"] and sent.json["parameters"]["prompt_extend"] is False


async def test_multi_shot_on_a_model_without_it_is_refused_before_anything_is_sent(
    dashscope: FakeDashScope, ds_backend: DashScopeBackend
) -> None:
    with pytest.raises(BackendError, match="one shot per clip") as refused:
        await ds_backend.submit(ds_spec(model="wan2.5-t2v-preview", shots="multi"))
    assert not refused.value.retryable and dashscope.requests == []


async def test_the_fake_refuses_multi_shot_without_prompt_extend_as_dashscope_does(dashscope: FakeDashScope) -> None:
    import httpx

    body = {"model": "wan2.6-t2v", "input": {"prompt": "a harbour"},
            "parameters": {"size": "1280*720", "duration": 5, "shot_type": "multi", "prompt_extend": False}}
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{dashscope.base_url}/services/aigc/video-generation/video-synthesis", json=body,
                                   headers={"Authorization": f"Bearer {DASHSCOPE_KEY}", "X-DashScope-Async": "enable"})
    assert answer.status_code == 400 and "prompt_extend" in answer.json()["message"]


# -- fal ----------------------------------------------------------------------------------------


@pytest.fixture
async def fal(tmp_path: Path) -> AsyncIterator[FakeFal]:
    async with FakeFal(tmp_path / "fal", queue_polls=1, progress_polls=1) as fake:
        yield fake


@pytest.fixture
async def fal_backend(fal: FakeFal) -> AsyncIterator[FalBackend]:
    made = FalBackend(FAL_KEY, host=fal.host, ca_file=str(fal.ca_path), backoff_base_s=0.01)
    yield made
    await made.aclose()


def fal_spec(**fields: object) -> GenerationSpec:
    values: dict[str, object] = {"prompt": "a paper boat unfolds into a crane", "width": 832, "height": 480,
                                 "duration_s": 5, "fps": 16, "seed": 11}
    values.update(fields)
    return GenerationSpec(**values)  # type: ignore[arg-type]


async def test_fal_sends_start_then_end_image_to_wan_flf2v_and_the_clip_ends_on_the_end_image(
    fal: FakeFal, fal_backend: FalBackend, tmp_path: Path
) -> None:
    start, end = picture(2400, 1350, "start"), picture(1024, 576, "end", "PNG")
    clip = await made(fal_backend, fal_spec(image=start, image_mime="image/jpeg", end_image=end,
                                            end_image_mime="image/png"), tmp_path / "flf.mp4")

    [submit] = fal.requests_to("submit")
    assert submit.path == f"/{FLF2V}" and MODELS[FLF2V].end_frame
    assert [k for k in submit.json if k.endswith("image_url")] == ["start_image_url", "end_image_url"]
    assert fal.frame_fields == [["start_image_url", "end_image_url"]]
    assert {k: submit.json[k] for k in ("num_frames", "frames_per_second", "resolution", "aspect_ratio")} == {
        "num_frames": 81, "frames_per_second": 16, "resolution": "480p", "aspect_ratio": "auto"}
    first_size, end_size = data_uri_size(submit.json["start_image_url"]), data_uri_size(submit.json["end_image_url"])
    assert first_size[:2] == (2000, 1125) and end_size[:2] == (1024, 576)  # fitted to 360–2000 px a side
    assert max(first_size[2], end_size[2]) <= 10 * 2**20
    [task] = fal.tasks.values()
    assert task.refusal == [] and task.images == [(2000, 1125), (1024, 576)]
    assert_runs_from_start_to_end(clip, start, end)


async def test_fal_without_an_end_image_still_uses_the_image_to_video_endpoint(
    fal: FakeFal, fal_backend: FalBackend, tmp_path: Path
) -> None:
    await made(fal_backend, fal_spec(image=picture(1280, 720, "start"), image_mime="image/jpeg", width=1280,
                                     height=720, fps=24), tmp_path / "i2v.mp4")
    [submit] = fal.requests_to("submit")
    assert submit.path == "/fal-ai/wan-25-preview/image-to-video" and "end_image_url" not in submit.json


async def test_fal_refuses_multi_shot_before_anything_is_sent(fal: FakeFal, fal_backend: FalBackend) -> None:
    with pytest.raises(BackendError, match="one shot per clip"):
        await fal_backend.submit(fal_spec(shots="multi"))
    assert fal.requests == []


async def test_fal_with_flf2v_as_its_image_model_makes_end_frame_clips_and_refuses_a_lone_image(
    fal: FakeFal, tmp_path: Path
) -> None:
    configured = FalBackend(FAL_KEY, host=fal.host, ca_file=str(fal.ca_path), backoff_base_s=0.01, i2v_model=FLF2V)
    try:
        assert configured.models[Mode.IMAGE_TO_VIDEO].end_frame  # what the service checks before admission
        start, end = picture(1280, 720, "start"), picture(1280, 720, "end")
        clip = await made(configured, fal_spec(image=start, image_mime="image/jpeg", end_image=end,
                                               end_image_mime="image/jpeg", model=FLF2V), tmp_path / "c.mp4")
        assert_runs_from_start_to_end(clip, start, end)
        with pytest.raises(BackendError, match="needs an end image"):
            await configured.submit(fal_spec(image=start, image_mime="image/jpeg", model=FLF2V))
        assert len(fal.requests_to("submit")) == 1
    finally:
        await configured.aclose()


async def test_dashscope_with_a_kf2v_image_model_sends_it_as_the_runner_names_it(
    dashscope: FakeDashScope, tmp_path: Path
) -> None:
    configured = DashScopeBackend(dashscope.base_url, DASHSCOPE_KEY, i2v_model="wan2.2-kf2v-flash")
    try:
        assert configured.models[Mode.IMAGE_TO_VIDEO].end_frame
        start, end = picture(720, 1280, "start"), picture(720, 1280, "end")
        clip = await made(configured, ds_spec(image=start, image_mime="image/jpeg", end_image=end, width=720,
                                              height=1280, end_image_mime="image/jpeg", model="wan2.2-kf2v-flash"),
                          tmp_path / "portrait.mp4")
        [sent] = dashscope.requests_to("kf2v")
        assert sent.json["model"] == "wan2.2-kf2v-flash" and dashscope.frame_fields == [["first_frame_url", "last_frame_url"]]
        assert_runs_from_start_to_end(clip, start, end)
    finally:
        await configured.aclose()


# -- whole jobs through `videobot generate --image a.jpg --end-image b.jpg` ----------------------


async def videobot(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    """`python -m bot ARGS` without blocking the loop the fake serves on; (rc, output)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 80)
    return process.returncode or 0, out.decode()


@pytest.mark.timeout(120)
async def test_generate_with_an_end_image_through_dashscope_kf2v(dashscope: FakeDashScope, tmp_path: Path) -> None:
    start, end = picture(1280, 720, "start"), picture(1280, 720, "end")
    (tmp_path / "a.jpg").write_bytes(start)
    (tmp_path / "b.jpg").write_bytes(end)
    env = subprocess_env(tmp_path, VIDEOBOT_BACKEND="dashscope", DASHSCOPE_HTTP_BASE_URL=dashscope.base_url,
                         DASHSCOPE_API_KEY=DASHSCOPE_KEY, VIDEOBOT_I2V_MODEL="wan2.2-kf2v-flash",
                         VIDEOBOT_ALLOWED_HOSTS=dashscope.cdn_host, COLUMNS="160")
    rc, output = await videobot(tmp_path, env, "generate", "the tide comes in at dusk", "--image", "a.jpg",
                                "--end-image", "b.jpg", "--output", "tide.mp4")
    assert rc == 0, output
    [sent] = dashscope.requests_to("kf2v")
    assert sent.json["model"] == "wan2.2-kf2v-flash"
    assert dashscope.frame_fields == [["first_frame_url", "last_frame_url"]]
    assert all(360 <= side <= 2000 for (w, h, _, _) in dashscope.images for side in (w, h))
    assert_runs_from_start_to_end(tmp_path / "tide.mp4", start, end)


@pytest.mark.timeout(120)
async def test_generate_with_an_end_image_through_fal_flf2v(fal: FakeFal, tmp_path: Path) -> None:
    start, end = picture(1280, 720, "start"), picture(1280, 720, "end")
    (tmp_path / "a.jpg").write_bytes(start)
    (tmp_path / "b.jpg").write_bytes(end)
    env = subprocess_env(tmp_path, VIDEOBOT_BACKEND="fal", FAL_KEY=FAL_KEY, FAL_QUEUE_RUN_HOST=fal.host,
                         SSL_CERT_FILE=str(fal.ca_path), VIDEOBOT_ALLOWED_HOSTS=fal.cdn_host,
                         VIDEOBOT_I2V_MODEL=FLF2V, COLUMNS="160")
    rc, output = await videobot(tmp_path, env, "generate", "a paper boat unfolds into a crane", "--image", "a.jpg",
                                "--end-image", "b.jpg", "--output", "boat.mp4")
    assert rc == 0, output
    [submit] = fal.requests_to("submit")
    assert submit.path == f"/{FLF2V}" and fal.frame_fields == [["start_image_url", "end_image_url"]]
    assert_runs_from_start_to_end(tmp_path / "boat.mp4", start, end)


@pytest.mark.timeout(120)
async def test_generate_shots_multi_through_dashscope_wan26(dashscope: FakeDashScope, tmp_path: Path) -> None:
    env = subprocess_env(tmp_path, VIDEOBOT_BACKEND="dashscope", DASHSCOPE_HTTP_BASE_URL=dashscope.base_url,
                         DASHSCOPE_API_KEY=DASHSCOPE_KEY, VIDEOBOT_ALLOWED_HOSTS=dashscope.cdn_host, COLUMNS="160")
    rc, output = await videobot(tmp_path, env, "generate", "Shot 1 a harbour at dawn. Shot 2 gulls over the pier.",
                                "--shots", "multi", "--duration", "5", "--output", "multi.mp4")
    assert rc == 0, output
    [sent] = dashscope.requests_to("t2v")
    assert sent.json["model"] == "wan2.6-t2v"
    assert sent.json["parameters"]["shot_type"] == "multi" and sent.json["parameters"]["prompt_extend"] is True
