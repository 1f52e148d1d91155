"""The simulator: real clips from prompts and images, and every provider fault it can rehearse,
driven through its HTTP service the way the bot's backend meets it."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image, ImageFont

from bot.models import GenerationSpec
from bot.provider.render import wrap_text
from bot.provider.server import bound_port, serve_provider
from bot.provider.simulator import SimulatorGenerator, build_simulator_app, parse_directives
from tests.test_provider_server import data_uri, encoded, probe_clip, t2v_body, wait_for_status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def simulator(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = build_simulator_app(files_dir=tmp_path / "files", max_parallel=2)
    runner = await serve_provider(app, "127.0.0.1", 0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound_port(runner)}/v1/", timeout=30) as client:
        yield client
    await runner.cleanup()


async def submit(client: httpx.AsyncClient, prompt: str, **parameters: object) -> str:
    response = await client.post("video/generations", json=t2v_body(prompt, **parameters))
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


async def set_options(client: httpx.AsyncClient, **options: object) -> dict[str, object]:
    response = await client.post("_simulator/options", json=options)
    assert response.status_code == 200, response.text
    return response.json()


# ── faults on submit ───────────────────────────────────────────────────────────────────────


async def test_429_token_refuses_the_first_submit_with_retry_after_then_accepts(
    simulator: httpx.AsyncClient,
) -> None:
    body = t2v_body("busy provider [sim:429]")

    refused = await simulator.post("video/generations", json=body)
    accepted = await simulator.post("video/generations", json=body)

    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert accepted.status_code == 200
    listing = (await simulator.get("_simulator/tasks")).json()
    assert listing["submit_attempts"] == 2
    assert [task["task_id"] for task in listing["tasks"]] == [accepted.json()["task_id"]]


async def test_429_token_with_a_count_refuses_that_many_submits(simulator: httpx.AsyncClient) -> None:
    body = t2v_body("very busy [sim:429x3]")

    statuses = [(await simulator.post("video/generations", json=body)).status_code for _ in range(4)]

    assert statuses == [429, 429, 429, 200]


async def test_500_token_fails_the_first_submit_only(simulator: httpx.AsyncClient) -> None:
    body = t2v_body("flaky provider [sim:500]")

    first = await simulator.post("video/generations", json=body)
    second = await simulator.post("video/generations", json=body)

    assert first.status_code == 500
    assert first.json()["error"]["code"] == "server_error"
    assert second.status_code == 200


async def test_submit_fault_rates_apply_to_every_request_until_reset(simulator: httpx.AsyncClient) -> None:
    await set_options(simulator, http_429_rate=1.0)
    assert (await simulator.post("video/generations", json=t2v_body())).status_code == 429
    await set_options(simulator, http_429_rate=0.0, http_500_rate=1.0)
    assert (await simulator.post("video/generations", json=t2v_body())).status_code == 500
    await set_options(simulator, http_500_rate=0)
    assert (await simulator.post("video/generations", json=t2v_body())).status_code == 200


async def test_unknown_fault_token_is_a_400_not_a_silent_success(simulator: httpx.AsyncClient) -> None:
    response = await simulator.post("video/generations", json=t2v_body("oops [sim:explode]"))

    assert response.status_code == 400
    assert "[sim:explode]" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"fail_rate": 2}, "fail_rate"),
        ({"hang": "yes"}, "hang"),
        ({"latency_s": -1}, "latency_s"),
        ({"speed": 9}, "speed"),
    ],
)
async def test_bad_options_are_refused_naming_the_field(
    simulator: httpx.AsyncClient, options: dict[str, object], named: str
) -> None:
    response = await simulator.post("_simulator/options", json=options)

    assert response.status_code == 400
    assert named in response.json()["error"]["message"]
    assert (await simulator.get("health")).json()["details"]["options"] == {
        "latency_s": 0.0, "fail_rate": 0.0, "http_429_rate": 0.0, "http_500_rate": 0.0,
        "hang": False, "bad_video": False, "cache_clips": False, "audio": False,
    }  # fmt: skip


# ── faults in tasks ────────────────────────────────────────────────────────────────────────


async def test_fail_token_and_fail_rate_end_tasks_failed(simulator: httpx.AsyncClient) -> None:
    by_token = await submit(simulator, "doomed [sim:fail]")
    assert (await wait_for_status(simulator, by_token, "succeeded", "failed"))[
        "error"
    ] == "simulated generation failure"

    await set_options(simulator, fail_rate=1.0)
    by_rate = await submit(simulator, "also doomed")
    assert (await wait_for_status(simulator, by_rate, "succeeded", "failed"))["status"] == "failed"


async def test_bad_video_token_and_option_serve_bytes_that_are_not_a_video(
    simulator: httpx.AsyncClient,
) -> None:
    by_token = await submit(simulator, "garbage [sim:bad-video]")
    await set_options(simulator, bad_video=True)
    by_option = await submit(simulator, "garbage too")

    for task_id in (by_token, by_option):
        done = await wait_for_status(simulator, task_id, "succeeded", "failed")
        assert done["status"] == "succeeded"
        download = await simulator.get(done["output"]["video_url"])
        assert download.status_code == 200
        with pytest.raises(av.error.FFmpegError):
            probe_clip(download.content)


async def test_hang_token_and_option_keep_tasks_running_until_canceled(simulator: httpx.AsyncClient) -> None:
    by_token = await submit(simulator, "forever [sim:hang]")
    await set_options(simulator, hang=True)
    by_option = await submit(simulator, "forever too")
    await set_options(simulator, hang=False)

    for task_id in (by_token, by_option):
        await wait_for_status(simulator, task_id, "running")
    await asyncio.sleep(0.5)
    for task_id in (by_token, by_option):
        assert (await simulator.get(f"video/generations/{task_id}")).json()["status"] == "running"
        await simulator.post(f"video/generations/{task_id}/cancel")
    listing = (await simulator.get("_simulator/tasks")).json()["tasks"]
    assert [(task["prompt"], task["status"], task["error"]) for task in listing] == [
        ("forever [sim:hang]", "failed", "canceled"),
        ("forever too", "failed", "canceled"),
    ]


async def test_slow_token_keeps_the_task_running_with_rising_progress(simulator: httpx.AsyncClient) -> None:
    started = time.monotonic()
    task_id = await submit(simulator, "patience [sim:slow=0.8]")

    seen: list[float] = []
    while (body := (await simulator.get(f"video/generations/{task_id}")).json())["status"] != "succeeded":
        assert body["status"] in ("queued", "running")
        seen.append(body["progress"])
        await asyncio.sleep(0.05)

    assert time.monotonic() - started >= 0.8
    assert seen == sorted(seen)
    assert any(0 < progress < 1 for progress in seen)


async def test_latency_option_delays_every_task(simulator: httpx.AsyncClient) -> None:
    await set_options(simulator, latency_s=0.6)
    started = time.monotonic()

    await wait_for_status(simulator, await submit(simulator, "unhurried"), "succeeded")

    assert time.monotonic() - started >= 0.6


# ── clips ──────────────────────────────────────────────────────────────────────────────────


async def test_cached_clips_are_rendered_once_per_mode_size_duration_and_fps(
    simulator: httpx.AsyncClient,
) -> None:
    await set_options(simulator, cache_clips=True)
    prompts = ["first prompt", "a different prompt", "same size again"]
    clips = []
    for prompt in prompts:
        done = await wait_for_status(
            simulator, await submit(simulator, prompt, seed=len(prompt)), "succeeded"
        )
        clips.append((await simulator.get(done["output"]["video_url"])).content)
    other_size = await wait_for_status(
        simulator, await submit(simulator, "landscape", resolution="832x480"), "succeeded"
    )

    assert clips[0] == clips[1] == clips[2]
    assert probe_clip((await simulator.get(other_size["output"]["video_url"])).content).width == 832
    details = (await simulator.get("health")).json()["details"]
    assert (details["rendered_clips"], details["cached_clips"]) == (2, 2)


async def test_without_the_cache_each_prompt_gets_its_own_clip(simulator: httpx.AsyncClient) -> None:
    clips = []
    for prompt in ("one prompt", "another prompt"):
        done = await wait_for_status(simulator, await submit(simulator, prompt, seed=1), "succeeded")
        clips.append((await simulator.get(done["output"]["video_url"])).content)

    assert clips[0] != clips[1]


async def test_audio_option_gives_each_clip_a_tone_pitched_by_its_seed(
    simulator: httpx.AsyncClient, tmp_path: Path
) -> None:
    from bot.media import probe
    from bot.provider.render import tone_hz
    from tests.test_media import decoded_sound, dominant_hz

    assert (await set_options(simulator, audio=True))["audio"] is True
    heard = {}
    for seed in (2, 3):
        done = await wait_for_status(
            simulator, await submit(simulator, "a choir", seed=seed, duration=1, resolution="832x480"), "succeeded"
        )
        path = tmp_path / f"seed-{seed}.mp4"
        path.write_bytes((await simulator.get(done["output"]["video_url"])).content)
        info = probe(path)
        assert info.has_audio and info.audio_duration_s == pytest.approx(info.duration_s, abs=1 / info.fps)
        heard[seed] = dominant_hz(decoded_sound(path), 0.1, 0.9, (float(tone_hz(2)), float(tone_hz(3))))

    assert heard == {2: tone_hz(2), 3: tone_hz(3)} and tone_hz(2) != tone_hz(3)
    await set_options(simulator, audio=False)
    done = await wait_for_status(simulator, await submit(simulator, "a mime", seed=2, duration=1), "succeeded")
    (tmp_path / "mime.mp4").write_bytes((await simulator.get(done["output"]["video_url"])).content)
    assert not probe(tmp_path / "mime.mp4").has_audio


async def test_long_chinese_prompt_renders_a_moving_clip(simulator: httpx.AsyncClient) -> None:
    prompt = "一只红色的狐狸在清晨的雪地里奔跑，阳光透过松树林洒下金色的光芒，电影感慢动作镜头。" * 4  # noqa: RUF001

    done = await wait_for_status(
        simulator, await submit(simulator, prompt, duration=2, resolution="832x480"), "succeeded", "failed"
    )

    assert done["status"] == "succeeded", done
    clip = probe_clip((await simulator.get(done["output"]["video_url"])).content)
    assert (clip.width, clip.height, clip.frames) == (832, 480, 32)


def test_text_without_spaces_wraps_between_characters_within_the_width() -> None:
    font = ImageFont.load_default(size=24)
    prompt = "一只红色的狐狸在清晨的雪地里奔跑阳光透过松树林洒下金色的光芒"

    lines = wrap_text(prompt, font, 200)

    assert len(lines) > 1
    assert all(font.getlength(line) <= 200 for line in lines)
    assert "".join(lines) == prompt


def test_text_too_long_for_six_lines_ends_with_an_ellipsis() -> None:
    font = ImageFont.load_default(size=24)

    lines = wrap_text("word " * 200, font, 300)

    assert len(lines) == 6
    assert lines[-1].endswith("...")


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
async def test_image_to_video_reads_the_real_image_type_whatever_the_uri_claims(
    simulator: httpx.AsyncClient, fmt: str
) -> None:
    colour = (220, 60, 90)
    image = Image.new("RGB", (640, 480), colour)
    body = {**t2v_body("gentle zoom", resolution="832x480"), "image": data_uri(image, fmt, mime="image/png")}

    submitted = await simulator.post("video/image-to-video", json=body)
    assert submitted.status_code == 200, submitted.text
    done = await wait_for_status(simulator, submitted.json()["task_id"], "succeeded", "failed")

    assert done["status"] == "succeeded", done
    clip = probe_clip((await simulator.get(done["output"]["video_url"])).content)
    assert (clip.width, clip.height, clip.frames) == (832, 480, 16)
    centre = clip.middle_frame[120:360, 208:624].reshape(-1, 3).mean(axis=0)
    assert np.allclose(centre, colour, atol=12), centre


async def test_an_image_cut_short_fails_the_task_with_a_plain_reason(simulator: httpx.AsyncClient) -> None:
    whole = encoded(Image.effect_mandelbrot((400, 300), (-2, -1.5, 1, 1.5), 50).convert("RGB"), "JPEG")
    truncated = base64.b64encode(whole[: len(whole) // 2]).decode()
    body = {**t2v_body("animate this"), "image": f"data:image/jpeg;base64,{truncated}"}

    submitted = await simulator.post("video/image-to-video", json=body)
    assert submitted.status_code == 200, submitted.text  # the header reads fine; decoding does not
    done = await wait_for_status(simulator, submitted.json()["task_id"], "succeeded", "failed")

    assert done["error"] == "the image could not be decoded"


async def test_rendering_reports_progress_and_stops_between_frames_when_canceled(tmp_path: Path) -> None:
    generator = SimulatorGenerator()
    spec = GenerationSpec(prompt="cancel me", width=832, height=480, duration_s=4, fps=24, seed=3)
    cancel = asyncio.Event()
    seen: list[float] = []

    def on_progress(fraction: float) -> None:
        seen.append(fraction)
        if fraction > 0.25:
            cancel.set()

    with pytest.raises(asyncio.CancelledError):
        await generator.generate(spec, tmp_path / "clip.mp4", on_progress, cancel)

    assert seen == sorted(seen)
    assert 0.25 < seen[-1] < 0.5
    assert not (tmp_path / "clip.mp4").exists()


async def test_rendering_leaves_the_event_loop_free(simulator: httpx.AsyncClient) -> None:
    task_id = await submit(simulator, "big clip", resolution="960x960", duration=3, fps=24)
    await wait_for_status(simulator, task_id, "running")

    slowest = 0.0
    while (await simulator.get(f"video/generations/{task_id}")).json()["status"] == "running":
        started = time.monotonic()
        await simulator.get("health")
        slowest = max(slowest, time.monotonic() - started)
        await asyncio.sleep(0.02)

    assert slowest < 0.5


def test_directives_are_cut_from_the_drawn_caption() -> None:
    directives, caption = parse_directives("a fox [sim:slow=2.5] in snow [sim:429x2] [SIM:fail]")

    assert caption == "a fox in snow"
    assert (directives.slow_s, directives.rate_limited_submits, directives.fail) == (2.5, 2, True)


def test_run_simulator_announces_its_address_and_serves_until_stopped(tmp_path: Path) -> None:
    script = (
        "from pathlib import Path\n"
        "from bot.provider.simulator import SimulatorOptions, run_simulator\n"
        f"run_simulator('127.0.0.1', 0, SimulatorOptions(), files_dir=Path({str(tmp_path)!r}), api_key='k')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("Simulator serving the provider API at http://127.0.0.1:")
        assert line.endswith("/v1 (simulated clips, not a real model)")
        base = line.split(" at ")[1].split(" ")[0]
        assert httpx.get(f"{base}/health").json()["generator"] == "simulator"
        assert httpx.get(f"{base}/_simulator/tasks").status_code == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
