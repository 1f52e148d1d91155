"""The local GPU backend, end to end on tiny random-weight Wan checkpoints built in the test.

Every checkpoint here is written with ``save_pretrained`` and read back by the backend's real
loading code, as a published one would be; only the sizes are tiny, so the whole file runs on
CPU in seconds. The CUDA tests at the bottom are the same story on a GPU, with the options that
only exist there (bf16, torch.compile, offload).
"""

# ruff: noqa: E402  (the gpu extra is checked for before the imports that need it)
from __future__ import annotations

import asyncio
import base64
import io
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# The CPU twins of the GPU tests need the gpu extra (torch, diffusers, ...): `pip install -e
# ".[gpu,test]"`. .ci/run installs it, and there a skip here fails the run.
torch = pytest.importorskip("torch", reason="needs the gpu extra: pip install -e '.[gpu,test]'")
pytest.importorskip("diffusers", reason="needs the gpu extra: pip install -e '.[gpu,test]'")

from PIL import Image

from bot import media
from bot.backends.base import Backend
from bot.backends.http import HttpBackend
from bot.errors import BackendError, InvalidRequest
from bot.gpu.backend import CANCELED, LOST_ON_RESTART, DiffusersBackend
from bot.gpu.generator import DiffusersGenerator
from bot.gpu.pipeline import LoadOptions, Offload
from bot.gpu.specs import Preset, WanFamily, detect_family, plan_generation
from bot.gpu.worker import start_worker
from bot.models import GenerationSpec, Mode, TaskState, TaskStatus
from bot.provider.server import bound_port
from bot.settings import Settings
from tests.gpu_fixtures import TinyKind, build_tiny_lora, build_tiny_wan

CPU = LoadOptions(device="cpu", dtype="float32")


def spec(**fields: object) -> GenerationSpec:
    """A one-second, two-step request at a tiny size: the shape of a real one, at CPU cost."""
    values: dict[str, object] = {
        "prompt": "a fox runs in the snow",
        "width": 32,
        "height": 32,
        "duration_s": 1,
        "fps": 16,
        "seed": 7,
        "num_inference_steps": 2,
    }
    values.update(fields)
    return GenerationSpec(**values)  # type: ignore[arg-type]


def png(width: int = 48, height: int = 40) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(out, format="PNG")
    return out.getvalue()


class Progress:
    """Collects progress fractions from the GPU thread; ``then`` runs once on the first step,
    on that thread, so it can hold the GPU or give the event loop time to react."""

    def __init__(self, then: Callable[[], object] | None = None) -> None:
        self.values: list[float] = []
        self._then = then

    def __call__(self, fraction: float) -> None:
        self.values.append(fraction)
        if self._then is not None and fraction > 0:
            self._then()
            self._then = None


class CallCounter:
    """Counts calls of a module's forward via a hook (the module itself is untouched)."""

    def __init__(self, module: Any) -> None:
        self.calls = 0
        self._handle = module.register_forward_hook(self._count)

    def _count(self, *_: object) -> None:
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[[TinyKind], Path]:
    """Builds each tiny checkpoint kind once per module, on first use."""
    built: dict[str, Path] = {}

    def get(kind: TinyKind) -> Path:
        if kind not in built:
            built[kind] = build_tiny_wan(tmp_path_factory.mktemp(f"wan-{kind}"), kind)
        return built[kind]

    return get


@pytest.fixture(scope="module")
def t2v(checkpoints: Callable[[TinyKind], Path]) -> Iterator[DiffusersGenerator]:
    generator = DiffusersGenerator.load(str(checkpoints("t2v")), CPU)
    yield generator
    generator.close()


@pytest.fixture(scope="module")
def ti2v(checkpoints: Callable[[TinyKind], Path]) -> Iterator[DiffusersGenerator]:
    generator = DiffusersGenerator.load(str(checkpoints("ti2v")), CPU)
    yield generator
    generator.close()


async def generate(
    generator: DiffusersGenerator, request: GenerationSpec, dest: Path, progress: Progress | None = None
) -> Progress:
    progress = progress or Progress()
    await generator.generate(request, dest, progress, asyncio.Event())
    return progress


# ── the request-to-model table (pure, no weights) ─────────────────────────────────────────────

Configs = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
"""``model_index.json``, ``transformer/config.json`` and ``vae/config.json`` of a checkpoint."""

# Shapes from the published diffusers configs of each checkpoint.
WAN21_T2V_13B: Configs = (
    {"_class_name": "WanPipeline"},
    {"num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16, "out_channels": 16},
    {},
)
WAN21_I2V_14B: Configs = (
    {"_class_name": "WanImageToVideoPipeline"},
    {"num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 36, "out_channels": 16},
    {},
)
WAN22_TI2V_5B: Configs = (
    {"_class_name": "WanPipeline", "expand_timesteps": True},
    {"num_attention_heads": 24, "attention_head_dim": 128, "in_channels": 48, "out_channels": 48},
    {"scale_factor_spatial": 16},
)
WAN22_T2V_A14B: Configs = (
    {"_class_name": "WanPipeline", "boundary_ratio": 0.875},
    {"num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 16, "out_channels": 16},
    {},
)
WAN22_I2V_A14B: Configs = (
    {"_class_name": "WanImageToVideoPipeline", "boundary_ratio": 0.9},
    {"num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 36, "out_channels": 16},
    {},
)


def family(configs: Configs) -> WanFamily:
    return detect_family(*configs)


def test_published_checkpoints_are_recognised_from_their_configs() -> None:
    assert family(WAN21_T2V_13B).label == "Wan2.1 T2V 1.3B"
    assert family(WAN21_I2V_14B).modes == {Mode.IMAGE_TO_VIDEO}
    five_b = family(WAN22_TI2V_5B)
    assert (five_b.label, five_b.fps, five_b.grid) == ("Wan2.2 TI2V 5B", 24, 32)
    assert five_b.modes == {Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO}
    a14b = family(WAN22_T2V_A14B)
    assert (a14b.label, a14b.two_experts, a14b.steps) == ("Wan2.2 T2V A14B", True, 40)
    assert family(WAN22_I2V_A14B).modes == {Mode.IMAGE_TO_VIDEO}


def test_five_seconds_become_81_frames_at_16_fps_or_121_at_24_at_exactly_the_asked_size() -> None:
    wan21 = plan_generation(spec(duration_s=5, width=1280, height=720), family(WAN21_T2V_13B), Preset.QUALITY)
    assert (wan21.num_frames, wan21.fps, wan21.gen_width, wan21.gen_height) == (81, 16, 1280, 720)
    five_b = plan_generation(
        spec(duration_s=5, width=1280, height=720, fps=24), family(WAN22_TI2V_5B), Preset.QUALITY
    )
    assert (five_b.num_frames, five_b.fps, five_b.width, five_b.height) == (121, 24, 1280, 720)
    assert (five_b.gen_width, five_b.gen_height) == (1280, 736)  # made on the 32-px grid, cropped back
    portrait = plan_generation(spec(width=720, height=1280, fps=24), family(WAN22_TI2V_5B), Preset.QUALITY)
    assert (portrait.gen_width, portrait.gen_height) == (736, 1280)
    assert (
        plan_generation(spec(duration_s=3), family(WAN21_T2V_13B), Preset.QUALITY).num_frames - 1
    ) % 4 == 0


def test_flow_shift_follows_resolution_and_motion_strength() -> None:
    wan21 = family(WAN21_I2V_14B)
    image = {"image": b"png", "image_mime": "image/png"}
    assert plan_generation(spec(width=832, height=480, **image), wan21, Preset.QUALITY).flow_shift == 3.0
    assert plan_generation(spec(width=1280, height=720, **image), wan21, Preset.QUALITY).flow_shift == 5.0
    still = plan_generation(spec(width=1280, height=720, motion_strength=0.0, **image), wan21, Preset.QUALITY)
    lively = plan_generation(
        spec(width=1280, height=720, motion_strength=1.0, **image), wan21, Preset.QUALITY
    )
    assert still.flow_shift < 5.0 < lively.flow_shift


def test_quality_preset_takes_the_guides_knobs_and_fast_preset_keeps_its_own() -> None:
    a14b = family(WAN22_T2V_A14B)
    defaults = plan_generation(spec(num_inference_steps=None), a14b, Preset.QUALITY)
    assert (defaults.steps, defaults.guidance_scale, defaults.guidance_scale_2) == (40, 4.0, 3.0)
    guide = plan_generation(spec(num_inference_steps=50, guidance_scale=7.5), a14b, Preset.QUALITY)
    assert (guide.steps, guide.guidance_scale, guide.guidance_scale_2) == (50, 7.5, 7.5)
    fast = plan_generation(spec(num_inference_steps=50, guidance_scale=7.5), a14b, Preset.FAST, fast_steps=4)
    assert (fast.steps, fast.guidance_scale, fast.guidance_scale_2) == (4, 1.0, 1.0)


@pytest.mark.parametrize(
    ("fields", "configs", "says"),
    [
        ({"image": b"x", "image_mime": "image/png"}, WAN21_T2V_13B, "text only"),
        ({}, WAN21_I2V_14B, "attach one"),
        ({"width": 1920, "height": 1080}, WAN21_T2V_13B, "1280x720"),
        ({"width": 33}, WAN21_T2V_13B, "odd side"),
        ({"fps": 24}, WAN21_T2V_13B, "makes 16 fps video"),
        ({"fps": 16}, WAN22_TI2V_5B, "makes 24 fps video"),
        ({"width": 16, "height": 16, "fps": 24}, WAN22_TI2V_5B, "at least 32"),
        ({"duration_s": 11}, WAN21_T2V_13B, "between 1 and 10"),
        ({"num_inference_steps": 500}, WAN21_T2V_13B, "num_inference_steps"),
        ({"guidance_scale": 30.0}, WAN21_T2V_13B, "guidance_scale"),
        (
            {"motion_strength": 1.5, "image": b"x", "image_mime": "image/png"},
            WAN21_I2V_14B,
            "motion_strength",
        ),
    ],
)
def test_requests_the_model_cannot_make_are_refused_with_the_reason(
    fields: dict[str, object], configs: Configs, says: str
) -> None:
    with pytest.raises(InvalidRequest, match=says):
        plan_generation(spec(**fields), family(configs), Preset.QUALITY)


# ── tiny checkpoints through the real loading code ─────────────────────────────────────────────


async def test_tiny_wan21_checkpoint_makes_an_mp4_with_the_models_frame_count_and_fps(
    t2v: DiffusersGenerator, tmp_path: Path
) -> None:
    dest = tmp_path / "fox.mp4"
    progress = await generate(t2v, spec(), dest)

    clip = media.probe(dest)
    assert (clip.frames, clip.fps, clip.width, clip.height) == (17, 16.0, 32, 32)
    assert progress.values == sorted(progress.values) and progress.values[-1] == 1.0
    health = t2v.health()
    assert (health["family"], health["device"], health["fps"]) == ("Wan2.1 T2V 16-wide", "cpu", 16)
    assert (
        health["queue"] == {"running": 0, "waiting": 0, "done": 1}
        and health["memory"]["process_rss_bytes"] > 0
    )


async def test_ti2v_checkpoint_makes_24_fps_clips_from_text_and_from_an_image_at_the_asked_size(
    ti2v: DiffusersGenerator, tmp_path: Path
) -> None:
    await generate(ti2v, spec(width=48, height=40, fps=24), tmp_path / "text.mp4")
    await generate(
        ti2v, spec(fps=24, image=png(), image_mime="image/png", motion_strength=0.7), tmp_path / "image.mp4"
    )

    text, image = media.probe(tmp_path / "text.mp4"), media.probe(tmp_path / "image.mp4")
    assert (text.frames, text.fps, text.width, text.height) == (25, 24.0, 48, 40)  # made at 64x64, cropped
    assert (image.frames, image.fps, image.width, image.height) == (25, 24.0, 32, 32)


async def test_wan21_i2v_checkpoint_animates_an_image_and_asks_for_one_otherwise(
    checkpoints: Callable[[TinyKind], Path], tmp_path: Path
) -> None:
    generator = DiffusersGenerator.load(str(checkpoints("i2v")), CPU)
    try:
        with pytest.raises(InvalidRequest, match="attach one"):
            generator.validate(spec())
        with pytest.raises(InvalidRequest, match="image could not be read"):
            generator.validate(spec(image=b"not an image", image_mime="image/png"))
        await generate(generator, spec(image=png(), image_mime="image/png"), tmp_path / "animated.mp4")
        assert media.probe(tmp_path / "animated.mp4").frames == 17
    finally:
        generator.close()


async def test_a14b_checkpoint_hands_the_low_noise_steps_to_its_second_expert(
    checkpoints: Callable[[TinyKind], Path], tmp_path: Path
) -> None:
    generator = DiffusersGenerator.load(str(checkpoints("a14b")), CPU)
    high, low = (CallCounter(t) for t in generator.model.transformers())
    try:
        await generate(generator, spec(num_inference_steps=4), tmp_path / "a14b.mp4")
    finally:
        high.remove()
        low.remove()
        generator.close()
    assert high.calls > 0 and low.calls > 0
    assert high.calls + low.calls == 4 * 2  # guidance on: a conditional and an unconditional pass per step


async def test_cancel_between_steps_skips_the_vae_decode_and_leaves_the_model_usable(
    t2v: DiffusersGenerator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vae = t2v.model.pipeline(Mode.TEXT_TO_VIDEO).vae
    decodes: list[object] = []
    real_decode = vae.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decodes.append(args)
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(vae, "decode", counting_decode)
    steps = CallCounter(next(t2v.model.transformers()))
    loop = asyncio.get_running_loop()
    cancel = asyncio.Event()
    dest = tmp_path / "canceled.mp4"
    try:
        with pytest.raises(asyncio.CancelledError):
            await t2v.generate(
                spec(num_inference_steps=20),
                dest,
                Progress(then=lambda: (loop.call_soon_threadsafe(cancel.set), time.sleep(0.2))),
                cancel,
            )
        assert decodes == [] and not dest.exists()
        assert 0 < steps.calls < 20 * 2
        await generate(t2v, spec(), tmp_path / "after.mp4")
    finally:
        steps.remove()
    assert len(decodes) == 1 and media.probe(tmp_path / "after.mp4").frames == 17


async def test_jobs_take_turns_on_the_gpu_and_a_job_canceled_in_the_queue_never_runs(
    t2v: DiffusersGenerator, tmp_path: Path
) -> None:
    started, release = threading.Event(), threading.Event()

    def hold_the_gpu() -> None:  # runs on the GPU thread after the first job's first step
        started.set()
        release.wait(30)

    first = asyncio.create_task(generate(t2v, spec(), tmp_path / "first.mp4", Progress(then=hold_the_gpu)))
    await asyncio.to_thread(started.wait, 30)
    second_progress, cancel_second = Progress(), asyncio.Event()
    second = asyncio.create_task(
        t2v.generate(spec(), tmp_path / "second.mp4", second_progress, cancel_second)
    )
    await asyncio.sleep(0.05)
    assert t2v.health()["queue"]["running"] == 1 and t2v.health()["queue"]["waiting"] == 1

    cancel_second.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(second, timeout=5)  # returns while the first job still holds the GPU
    assert not first.done()
    release.set()
    await first
    assert second_progress.values == [] and not (tmp_path / "second.mp4").exists()
    assert t2v.health()["queue"]["waiting"] == 0
    assert media.probe(tmp_path / "first.mp4").frames == 17


async def test_fast_preset_fuses_the_distilled_lora_and_samples_four_steps_without_guidance(
    checkpoints: Callable[[TinyKind], Path], t2v: DiffusersGenerator, tmp_path: Path
) -> None:
    lora = build_tiny_lora(checkpoints("t2v"), tmp_path / "lora")
    fast = DiffusersGenerator.load(
        str(checkpoints("t2v")),
        LoadOptions(device="cpu", dtype="float32", preset=Preset.FAST, lora=str(lora)),
    )
    try:
        base_q = next(t2v.model.transformers()).blocks[0].attn1.to_q.weight
        transformer = next(fast.model.transformers())
        assert not torch.equal(transformer.blocks[0].attn1.to_q.weight, base_q)
        assert not any("lora" in name for name, _ in transformer.named_modules())
        calls = CallCounter(transformer)
        await generate(fast, spec(num_inference_steps=50, guidance_scale=7.5), tmp_path / "fast.mp4")
        calls.remove()
        assert calls.calls == 4
        assert fast.health()["preset"] == "fast" and media.probe(tmp_path / "fast.mp4").frames == 17
    finally:
        fast.close()


# ── the in-process Backend ─────────────────────────────────────────────────────────────────────


async def wait_done(backend: Backend, task_id: str) -> TaskState:
    for _ in range(600):
        state = await backend.poll(task_id)
        if state.done:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish")


async def test_diffusers_backend_makes_fetches_and_finds_its_clip_again_after_a_restart(
    t2v: DiffusersGenerator, tmp_path: Path
) -> None:
    backend = DiffusersBackend(t2v, tmp_path / "gpu")
    assert isinstance(backend, Backend) and backend.name == "diffusers" and backend.max_segment_s == 5

    task_id = await backend.submit(spec())
    state = await wait_done(backend, task_id)
    assert state.status is TaskStatus.SUCCEEDED, state.error
    fetched = await backend.fetch(state, tmp_path / "out" / "clip.mp4", max_bytes=10_000_000)
    assert media.probe(fetched).frames == 17
    with pytest.raises(BackendError, match="limit"):
        await backend.fetch(state, tmp_path / "small.mp4", max_bytes=10)

    restarted = DiffusersBackend(t2v, tmp_path / "gpu")
    assert (await restarted.poll(task_id)).video_path == state.video_path
    lost = await restarted.poll("gpu-" + "0" * 32)
    assert (lost.status, lost.error) == (TaskStatus.FAILED, LOST_ON_RESTART)
    with pytest.raises(BackendError) as refused:
        await backend.submit(spec(width=4000, height=4000))
    assert refused.value.retryable is False


async def test_diffusers_backend_cancel_fails_the_task_and_aclose_frees_the_model(
    checkpoints: Callable[[TinyKind], Path], tmp_path: Path
) -> None:
    backend = await DiffusersBackend.open(str(checkpoints("t2v")), tmp_path / "gpu", CPU)
    task_id = await backend.submit(spec(num_inference_steps=30))
    while (await backend.poll(task_id)).status is TaskStatus.QUEUED:
        await asyncio.sleep(0.01)
    await backend.cancel(task_id)
    state = await wait_done(backend, task_id)
    assert (state.status, state.error) == (TaskStatus.FAILED, CANCELED)
    await backend.aclose()
    assert backend.generator.model.pipelines == {}


def test_from_settings_loads_the_configured_model_and_keeps_clips_in_the_media_folder(
    checkpoints: Callable[[TinyKind], Path], tmp_path: Path
) -> None:
    settings = Settings(
        backend="diffusers", videobot_model=str(checkpoints("ti2v")), data_dir=tmp_path / "data"
    )
    backend = DiffusersBackend.from_settings(settings, CPU)
    try:
        assert backend.work_dir == settings.media_dir / "gpu" and backend.work_dir.is_dir()
        assert backend.label == "Wan2.2 TI2V 16-wide (local GPU, quality)"
    finally:
        backend.generator.close()


# ── the worker: the provider REST contract over loopback ───────────────────────────────────────

API_KEY = "worker-test-key"


@pytest.fixture
async def worker(ti2v: DiffusersGenerator, tmp_path: Path) -> AsyncIterator[str]:
    runner = await start_worker(ti2v, "127.0.0.1", 0, api_key=API_KEY, files_dir=tmp_path / "files")
    yield f"http://127.0.0.1:{bound_port(runner)}/v1"
    await runner.cleanup()


async def test_worker_serves_our_http_backend_text_and_image_to_video(worker: str, tmp_path: Path) -> None:
    backend = HttpBackend(worker, API_KEY)
    try:
        for name, request in {
            "text": spec(fps=24),
            "image": spec(fps=24, image=png(), image_mime="image/png", motion_strength=0.5),
        }.items():
            state = await wait_done(backend, await backend.submit(request))
            assert state.status is TaskStatus.SUCCEEDED, state.error
            clip = media.probe(await backend.fetch(state, tmp_path / f"{name}.mp4", max_bytes=10_000_000))
            assert (clip.frames, clip.fps, clip.width, clip.height) == (25, 24.0, 32, 32)
    finally:
        await backend.aclose()


async def test_worker_answers_the_guides_own_request_shapes(worker: str, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    text_payload: dict[str, Any] = {
        "model": "wan-2.6",
        "prompt": "a cat walks in the city at night",
        "parameters": {
            "duration": 1,
            "resolution": "32x32",
            "fps": 24,
            "guidance_scale": 7.5,
            "num_inference_steps": 2,
        },
    }
    image_payload: dict[str, Any] = {
        "model": "wan-2.6",
        "prompt": "the camera flies slowly",
        "image": "data:image/png;base64," + base64.b64encode(png()).decode("utf-8"),
        "parameters": {
            "duration": 1,
            "resolution": "32x32",
            "fps": 24,
            "motion_strength": 0.7,
            "num_inference_steps": 2,
        },
    }
    async with httpx.AsyncClient(timeout=30) as client:
        for path, payload in (("/video/generations", text_payload), ("/video/image-to-video", image_payload)):
            resp = await client.post(worker + path, headers=headers, json=payload)
            resp.raise_for_status()
            task_id = resp.json()["task_id"]
            for _ in range(600):
                data = (await client.get(f"{worker}/video/generations/{task_id}", headers=headers)).json()
                if data["status"] in ("succeeded", "failed"):
                    break
                await asyncio.sleep(0.05)
            assert data["status"] == "succeeded", data
            video = await client.get(data["output"]["video_url"])  # the guide downloads without the key
            video.raise_for_status()
            (tmp_path / "guide.mp4").write_bytes(video.content)
            assert media.probe(tmp_path / "guide.mp4").frames == 25

        too_big = {**text_payload, "parameters": {**text_payload["parameters"], "resolution": "1920x1080"}}
        refused = await client.post(worker + "/video/generations", headers=headers, json=too_big)
        assert refused.status_code == 400 and "1280x720" in refused.json()["error"]["message"]
        wrong_fps = {**text_payload, "parameters": {**text_payload["parameters"], "fps": 16}}
        refused = await client.post(worker + "/video/generations", headers=headers, json=wrong_fps)
        assert refused.status_code == 400 and "24 fps" in refused.json()["error"]["message"]
        wrong_key = await client.post(
            worker + "/video/generations", headers={"Authorization": "Bearer nope"}, json=text_payload
        )
        assert wrong_key.status_code == 401

        health = (await client.get(worker + "/health")).json()
    details = health["details"]
    assert (details["family"], details["fps"], details["modes"]) == (
        "Wan2.2 TI2V 16-wide",
        24,
        ["i2v", "t2v"],
    )
    assert {"queue", "memory", "gpu", "device", "preset"} <= details.keys()


def test_run_worker_loads_serves_and_stops_cleanly_on_sigterm(
    checkpoints: Callable[[TinyKind], Path], tmp_path: Path
) -> None:
    """``videobot worker`` as the CLI runs it: a process that loads, serves, and exits on SIGTERM."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = str(checkpoints("t2v"))
    code = (
        "from pathlib import Path; from bot.gpu.pipeline import LoadOptions; from bot.gpu.worker import run_worker; "
        f"run_worker('127.0.0.1', {port}, {model!r}, {API_KEY!r}, "
        f"options=LoadOptions(device='cpu', dtype='float32'), files_dir=Path({str(tmp_path / 'files')!r}))"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 90
        while True:
            assert worker.poll() is None, "the worker exited before serving"
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the worker did not start serving"
                time.sleep(0.2)
        assert health["details"]["model"] == model and health["details"]["family"] == "Wan2.1 T2V 16-wide"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()


# ── the same story on a GPU ────────────────────────────────────────────────────────────────────

def needs_cuda(test: Any) -> Any:
    """Marked ``cuda``: the only tests .ci/run lets be skipped (it has no GPU)."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@needs_cuda
@pytest.mark.parametrize(
    "options",
    [
        LoadOptions(dtype="bfloat16", compile=True),
        LoadOptions(dtype="bfloat16", offload=Offload.MODEL, vae_tiling=True),
        LoadOptions(dtype="bfloat16", offload=Offload.GROUP, first_block_cache=0.05),
    ],
    ids=["resident-compiled", "model-offload", "group-offload-cached"],
)
async def test_tiny_checkpoint_on_cuda_makes_the_same_clip(
    checkpoints: Callable[[TinyKind], Path], tmp_path: Path, options: LoadOptions
) -> None:
    generator = DiffusersGenerator.load(str(checkpoints("t2v")), options)
    try:
        await generate(generator, spec(), tmp_path / "gpu.mp4")
        health = generator.health()
    finally:
        generator.close()
    clip = media.probe(tmp_path / "gpu.mp4")
    assert (clip.frames, clip.fps, clip.width, clip.height) == (17, 16.0, 32, 32)
    assert health["gpu"] and health["memory"]["gpu_peak_allocated_bytes"] > 0
