"""First-and-last-frame generation on the local GPU backend, end to end on a tiny Wan2.1 FLF2V
checkpoint built in the test (random weights, CPU, seconds), plus the table of which Wan
families take an end frame.

The tiny model's weights are random, so its pixels say nothing about the end image; what is
checked is that the end frame reaches the pipeline and changes what it makes: the FLF2V image
embedding only accepts two CLIP images (a run without the last frame would fail), and the same
seed with another end image makes another clip.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs the gpu extra: pip install -e '.[gpu,test]'")
pytest.importorskip("diffusers", reason="needs the gpu extra: pip install -e '.[gpu,test]'")

import av
import numpy as np
from PIL import Image

from bot import media
from bot.backends.http import HttpBackend
from bot.errors import BackendError, InvalidRequest
from bot.gpu.backend import DiffusersBackend
from bot.gpu.generator import DiffusersGenerator
from bot.gpu.pipeline import LoadOptions
from bot.gpu.specs import Preset, detect_family, plan_generation
from bot.gpu.worker import start_worker
from bot.models import Mode, TaskStatus
from bot.provider.server import bound_port
from tests.gpu_fixtures import TinyKind, build_tiny_wan
from tests.test_gpu_backend import (
    CPU,
    WAN21_I2V_14B,
    WAN21_T2V_13B,
    WAN22_I2V_A14B,
    WAN22_T2V_A14B,
    WAN22_TI2V_5B,
    Configs,
    generate,
    needs_cuda,
    spec,
    wait_done,
)

pytestmark = pytest.mark.timeout(120)

WAN21_FLF2V_14B: Configs = (
    {"_class_name": "WanImageToVideoPipeline"},
    {"num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 36, "out_channels": 16,
     "image_dim": 1280, "pos_embed_seq_len": 514},  # Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers
    {},
)


def png(color: tuple[int, int, int], width: int = 48, height: int = 40) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


START, END, OTHER_END = png((200, 120, 40)), png((30, 90, 230)), png((20, 220, 60))
FRAMES = {"image": START, "image_mime": "image/png", "end_image": END, "end_image_mime": "image/png"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Callable[[TinyKind], Path]:
    built: dict[str, Path] = {}

    def get(kind: TinyKind) -> Path:
        if kind not in built:
            built[kind] = build_tiny_wan(tmp_path_factory.mktemp(f"wan-{kind}"), kind)
        return built[kind]

    return get


@pytest.fixture(scope="module")
def flf2v(checkpoints: Callable[[TinyKind], Path]) -> Iterator[DiffusersGenerator]:
    generator = DiffusersGenerator.load(str(checkpoints("flf2v")), CPU)
    yield generator
    generator.close()


def decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


# ── the table (pure, no weights) ───────────────────────────────────────────────────────────────


def test_the_families_that_take_an_end_frame_are_flf2v_and_wan22_i2v_a14b() -> None:
    takes = {name: detect_family(*configs).end_frame for name, configs in {
        "flf2v": WAN21_FLF2V_14B, "wan21-i2v": WAN21_I2V_14B, "wan21-t2v": WAN21_T2V_13B,
        "ti2v-5b": WAN22_TI2V_5B, "t2v-a14b": WAN22_T2V_A14B, "i2v-a14b": WAN22_I2V_A14B}.items()}
    assert takes == {"flf2v": True, "wan21-i2v": False, "wan21-t2v": False, "ti2v-5b": False,
                     "t2v-a14b": False, "i2v-a14b": True}
    assert detect_family(*WAN21_FLF2V_14B).label == "Wan2.1 FLF2V 14B"
    plan = plan_generation(spec(**FRAMES), detect_family(*WAN21_FLF2V_14B), Preset.QUALITY)
    assert plan.end_frame and plan.mode is Mode.IMAGE_TO_VIDEO


@pytest.mark.parametrize(
    ("fields", "configs", "says"),
    [
        (FRAMES, WAN21_I2V_14B, "cannot end on a given frame"),
        (FRAMES | {"fps": 24}, WAN22_TI2V_5B, "cannot end on a given frame"),
        ({"end_image": END, "end_image_mime": "image/png"}, WAN21_FLF2V_14B, "needs a start image"),
        ({"shots": "multi"}, WAN21_T2V_13B, "one shot per clip"),
    ],
)
def test_an_end_frame_or_multi_shot_the_model_cannot_honour_is_refused(
    fields: dict[str, object], configs: Configs, says: str
) -> None:
    with pytest.raises(InvalidRequest, match=says):
        plan_generation(spec(**fields), detect_family(*configs), Preset.QUALITY)


# ── the tiny FLF2V checkpoint through the real loading code ────────────────────────────────────


async def test_tiny_flf2v_checkpoint_makes_a_first_and_last_frame_clip_end_to_end(
    flf2v: DiffusersGenerator, tmp_path: Path
) -> None:
    assert flf2v.family_label == "Wan2.1 FLF2V 16-wide" and flf2v.health()["end_frame"] is True
    progress = await generate(flf2v, spec(**FRAMES), tmp_path / "flf.mp4")
    again = await generate(flf2v, spec(**FRAMES), tmp_path / "again.mp4")
    other = await generate(flf2v, spec(**FRAMES | {"end_image": OTHER_END}), tmp_path / "other.mp4")

    clip = media.probe(tmp_path / "flf.mp4")
    assert (clip.frames, clip.fps, clip.width, clip.height) == (17, 16.0, 32, 32)
    assert progress.values[-1] == 1.0 and again.values[-1] == 1.0 and other.values[-1] == 1.0
    same, changed = decoded(tmp_path / "again.mp4"), decoded(tmp_path / "other.mp4")
    made = decoded(tmp_path / "flf.mp4")
    assert np.array_equal(made, same)  # one seed, one pair of frames: one clip
    assert np.abs(made.astype(int) - changed.astype(int)).mean() > 0.5  # the end frame steers the clip


async def test_diffusers_backend_offers_end_frames_only_where_its_model_takes_them(
    checkpoints: Callable[[TinyKind], Path], tmp_path: Path
) -> None:
    flf2v = await DiffusersBackend.open(str(checkpoints("flf2v")), tmp_path / "gpu", CPU)
    try:
        assert flf2v.models[Mode.IMAGE_TO_VIDEO].end_frame
        task_id = await flf2v.submit(spec(**FRAMES))
        state = await wait_done(flf2v, task_id)
        assert state.status is TaskStatus.SUCCEEDED and state.video_path is not None
        assert media.probe(state.video_path).frames == 17
    finally:
        await flf2v.aclose()
    plain = await DiffusersBackend.open(str(checkpoints("i2v")), tmp_path / "gpu2", CPU)
    try:
        assert not plain.models[Mode.IMAGE_TO_VIDEO].end_frame
        with pytest.raises(BackendError, match="cannot end on a given frame") as refused:
            await plain.submit(spec(**FRAMES))
        assert refused.value.status_code == 400 and not refused.value.retryable
    finally:
        await plain.aclose()


async def test_a_worker_on_the_flf2v_checkpoint_takes_the_contracts_end_image_and_a_plain_one_refuses_it(
    flf2v: DiffusersGenerator, checkpoints: Callable[[TinyKind], Path], tmp_path: Path
) -> None:
    """``videobot worker`` on a GPU elsewhere: the http backend sends ``end_image`` (a data URI)
    and the worker hands it to the pipeline as ``last_image``; a worker whose model cannot end on
    a frame answers 400 with the reason, before anything runs."""
    runner = await start_worker(flf2v, "127.0.0.1", 0, api_key="k", files_dir=tmp_path / "files")
    backend = HttpBackend(f"http://127.0.0.1:{bound_port(runner)}/v1", "k")
    try:
        state = await wait_done(backend, await backend.submit(spec(**FRAMES)))
        assert state.status is TaskStatus.SUCCEEDED, state.error
        clip = media.probe(await backend.fetch(state, tmp_path / "w.mp4", max_bytes=10_000_000))
        assert (clip.frames, clip.width, clip.height) == (17, 32, 32)
    finally:
        await backend.aclose()
        await runner.cleanup()
    plain = DiffusersGenerator.load(str(checkpoints("i2v")), CPU)
    runner = await start_worker(plain, "127.0.0.1", 0, api_key="k", files_dir=tmp_path / "files2")
    backend = HttpBackend(f"http://127.0.0.1:{bound_port(runner)}/v1", "k")
    try:
        with pytest.raises(BackendError, match="cannot end on a given frame"):
            await backend.submit(spec(**FRAMES))
    finally:
        await backend.aclose()
        await runner.cleanup()
        plain.close()


@needs_cuda
async def test_tiny_flf2v_checkpoint_on_cuda_in_bf16_makes_the_same_shape_of_clip(
    checkpoints: Callable[[TinyKind], Path], tmp_path: Path
) -> None:
    generator = DiffusersGenerator.load(str(checkpoints("flf2v")), LoadOptions(dtype="bfloat16"))
    try:
        await generate(generator, spec(**FRAMES), tmp_path / "gpu.mp4")
        health = generator.health()
    finally:
        generator.close()
    clip = media.probe(tmp_path / "gpu.mp4")
    assert (clip.frames, clip.fps, clip.width, clip.height) == (17, 16.0, 32, 32)
    assert health["gpu"] and health["memory"]["gpu_peak_allocated_bytes"] > 0
