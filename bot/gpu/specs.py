"""How a ``GenerationSpec`` becomes a call of a Wan pipeline: the one table of the model's limits.

Requests speak the provider guide's language (seconds, "1280x720", 16 or 24 fps, guidance 7.5,
50 steps, motion strength 0.7). The open Wan checkpoints have harder facts: a frame count of
4k+1, sizes on a 16- or 32-pixel grid, one native frame rate each. This module turns the first
into the second, in pure Python, so the rules can be tested and shown without torch.

========================  ==================================================================
request field             what it becomes on this backend
========================  ==================================================================
duration_s (1..10)        ``num_frames = round(duration_s * model_fps / 4) * 4 + 1``
                          (5 s: 81 frames at 16 fps, 121 at 24 fps). The models were trained
                          on 81 / 121 frames, so ``max_segment_s`` is 5 and the runner
                          stitches longer clips; a worker still accepts up to 10 s per call.
fps (16 or 24)            must be the model's own rate: 16 for Wan2.1 and Wan2.2 A14B, 24 for
                          Wan2.2 TI2V-5B; the mp4 is written at that rate. Another rate is
                          refused, not faked: resampling would drop or repeat frames, and the
                          runner checks that a clip plays at the rate that was asked.
width x height            generated at each side rounded up to the model's grid (VAE spatial
                          factor x patch size: 16 px for Wan2.1 and A14B, 32 px for TI2V-5B),
                          then centre-cropped back, so the clip is exactly the size asked
                          (1280x720 on the 5B is made at 1280x736). Even sides only, at most
                          1280x720 worth of pixels, either way up.
guidance_scale            quality preset: classifier-free guidance (1..20); A14B uses it for
                          both experts. Fast preset: ignored, the distilled path runs at 1.0
                          (no unconditional pass).
num_inference_steps       quality preset: the step count (1..100). Fast preset: ignored, the
                          distilled path runs its own step count (4 unless configured).
motion_strength (0..1)    image-to-video only: scales the sampler's flow shift by
                          ``0.5 + motion_strength`` (0.5 keeps the model default; more shift
                          spends more steps at high noise, which lets the clip move further
                          from the still image). Wan has no motion input, so this is the
                          closest honest knob.
negative_prompt           passed through; empty means a short default list of artefacts.
end_image                 the clip's last frame: passed to ``WanImageToVideoPipeline`` as
                          ``last_image`` (centre-cropped and resized like the first), on the
                          families whose "end frame" column says yes; elsewhere refused, since
                          the pipeline would drop it (TI2V-5B) or fail (plain Wan2.1 I2V).
shots                     only ``single``: no open Wan checkpoint cuts between shots.
quality (standard / hq)   not read here. Through a worker, the http backend already sends hq
                          as 50 steps and guidance 7.5, which the quality preset honours. A
                          fast worker serves every job fast: its fused distillation LoRA
                          cannot be switched off per request (run a quality worker for hq).
========================  ==================================================================

Per model family (defaults of the quality preset, from the published Wan configs):

================  =========  ====  =====  =======  ================  =======================  =========
family            modes      fps   grid   steps    guidance          flow shift               end frame
================  =========  ====  =====  =======  ================  =======================  =========
Wan2.1 1.3B/14B   t2v | i2v  16    16     50       5.0               3.0 at <=480p, else 5.0  no
Wan2.1 FLF2V 14B  i2v        16    16     50       5.0               3.0 at <=480p, else 5.0  yes
Wan2.2 TI2V-5B    t2v + i2v  24    32     50       5.0               5.0                      no
Wan2.2 T2V-A14B   t2v        16    16     40       4.0 / 3.0 (2nd)   12.0                     no
Wan2.2 I2V-A14B   i2v        16    16     40       3.5 / 3.5 (2nd)   5.0                      yes
================  =========  ====  =====  =======  ================  =======================  =========

Wan2.1 FLF2V (``Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers``) is a Wan2.1 I2V whose image embedding
has a position table for two images (``pos_embed_seq_len`` in its transformer config): it
encodes the first and last frames with CLIP together. Wan2.2 I2V-A14B takes no CLIP embedding;
its VAE condition holds the last frame as it holds the first (diffusers' ``last_image``; the
first-last-frame workflows of ComfyUI and fal's Wan 2.2 run it so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bot.errors import InvalidRequest
from bot.models import GenerationSpec, Mode

MAX_AREA = 1280 * 720
"""The largest frame area any Wan checkpoint was trained for; bigger requests are refused."""

MAX_DURATION_S = 10
FRAME_STEP = 4
"""The Wan VAE compresses time 4x, so a clip has 4k+1 frames."""

DEFAULT_NEGATIVE_PROMPT = (
    "blurry, low quality, jpeg artefacts, static frame, overexposed, distorted faces, "
    "deformed hands, extra limbs, subtitles, watermark, text"
)

_DIM_LABELS = {1536: "1.3B", 3072: "5B", 5120: "14B"}
"""Transformer width (heads x head dim) of each published size, for labels only."""


class Preset(StrEnum):
    QUALITY = "quality"
    """The model's own step count and guidance."""
    FAST = "fast"
    """A step-distilled path (e.g. a LightX2V LoRA): few steps, no classifier-free guidance."""


@dataclass(frozen=True)
class WanFamily:
    """What one loaded checkpoint can do and how it likes to be sampled."""

    label: str
    modes: frozenset[Mode]
    fps: int
    grid: int
    trained_frames: int
    steps: int
    guidance: float
    guidance_2: float | None
    shift_480p: float
    shift_720p: float
    end_frame: bool = False
    """True when the pipeline honours ``last_image`` (see the module table)."""

    @property
    def two_experts(self) -> bool:
        """Wan2.2 A14B: a high-noise and a low-noise transformer, each with its own guidance."""
        return self.guidance_2 is not None

    @property
    def segment_s(self) -> int:
        """The clip length the model was trained on, whole seconds (5 for every Wan so far)."""
        return max(1, (self.trained_frames - 1) // self.fps)

    def flow_shift(self, width: int, height: int) -> float:
        return self.shift_480p if width * height <= 832 * 480 else self.shift_720p


def detect_family(
    model_index: Mapping[str, Any], transformer: Mapping[str, Any], vae: Mapping[str, Any]
) -> WanFamily:
    """Recognise the checkpoint from its ``model_index.json`` and component configs.

    Config shape, not repository name, decides, so a local copy or a fine-tune of a published
    model is recognised as what it is.
    """
    dim = int(transformer["num_attention_heads"]) * int(transformer["attention_head_dim"])
    size = _DIM_LABELS.get(dim, f"{dim}-wide")
    patch = transformer.get("patch_size", (1, 2, 2))
    grid = int(vae.get("scale_factor_spatial", 8)) * int(patch[1])
    image_channels = int(transformer.get("in_channels", 16)) > int(transformer.get("out_channels", 16))
    if model_index.get("expand_timesteps"):
        return WanFamily(
            label=f"Wan2.2 TI2V {size}",
            modes=frozenset({Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO}),
            fps=24,
            grid=grid,
            trained_frames=121,
            steps=50,
            guidance=5.0,
            guidance_2=None,
            shift_480p=5.0,
            shift_720p=5.0,
        )
    if model_index.get("boundary_ratio") is not None:
        if image_channels:
            return WanFamily(
                label=f"Wan2.2 I2V A{size}",
                modes=frozenset({Mode.IMAGE_TO_VIDEO}),
                fps=16,
                grid=grid,
                trained_frames=81,
                steps=40,
                guidance=3.5,
                guidance_2=3.5,
                shift_480p=5.0,
                shift_720p=5.0,
                end_frame=True,
            )
        return WanFamily(
            label=f"Wan2.2 T2V A{size}",
            modes=frozenset({Mode.TEXT_TO_VIDEO}),
            fps=16,
            grid=grid,
            trained_frames=81,
            steps=40,
            guidance=4.0,
            guidance_2=3.0,
            shift_480p=12.0,
            shift_720p=12.0,
        )
    mode = Mode.IMAGE_TO_VIDEO if image_channels else Mode.TEXT_TO_VIDEO
    two_images = image_channels and transformer.get("pos_embed_seq_len") is not None
    return WanFamily(
        label=f"Wan2.1 {'FLF2V' if two_images else mode.value.upper()} {size}",
        modes=frozenset({mode}),
        fps=16,
        grid=grid,
        trained_frames=81,
        steps=50,
        guidance=5.0,
        guidance_2=None,
        shift_480p=3.0,
        shift_720p=5.0,
        end_frame=two_images,
    )


@dataclass(frozen=True)
class SamplingPlan:
    """Everything one pipeline call needs, already fitted to the model."""

    mode: Mode
    prompt: str
    negative_prompt: str
    width: int
    height: int
    gen_width: int
    gen_height: int
    num_frames: int
    fps: int
    steps: int
    guidance_scale: float
    guidance_scale_2: float | None
    flow_shift: float
    seed: int
    end_frame: bool = False
    """True: the clip ends on the spec's ``end_image`` (passed as ``last_image``)."""

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


def plan_generation(
    spec: GenerationSpec, family: WanFamily, preset: Preset, *, fast_steps: int = 4
) -> SamplingPlan:
    """Fit ``spec`` to ``family`` as the module table says; ``InvalidRequest`` names what cannot fit."""
    mode = spec.mode
    if spec.end_image is not None and spec.image is None:
        raise InvalidRequest("An end frame needs a start image too; attach both.")
    if mode not in family.modes:
        if mode is Mode.IMAGE_TO_VIDEO:
            raise InvalidRequest(
                f"This model ({family.label}) makes video from text only; it cannot animate an image."
            )
        raise InvalidRequest(f"This model ({family.label}) animates an image; attach one to your prompt.")
    if not spec.prompt.strip():
        raise InvalidRequest("The prompt is empty; describe the video you want.")
    if spec.end_image is not None and not family.end_frame:
        raise InvalidRequest(
            f"This model ({family.label}) cannot end on a given frame; Wan2.1 FLF2V or Wan2.2 I2V-A14B can."
        )
    if spec.shots != "single":
        raise InvalidRequest(f"This model ({family.label}) makes one shot per clip.")
    if not 1 <= spec.duration_s <= MAX_DURATION_S:
        raise InvalidRequest(
            f"Duration must be between 1 and {MAX_DURATION_S} seconds (got {spec.duration_s})."
        )
    if spec.fps != family.fps:
        raise InvalidRequest(
            f"This model ({family.label}) makes {family.fps} fps video; ask for {family.fps} fps."
        )
    width, height = spec.width, spec.height
    gen_width, gen_height = _grid_size(width, height, family)
    num_frames = round(spec.duration_s * family.fps / FRAME_STEP) * FRAME_STEP + 1

    if spec.motion_strength is not None and not 0.0 <= spec.motion_strength <= 1.0:
        raise InvalidRequest(f"motion_strength must be between 0 and 1 (got {spec.motion_strength}).")
    shift = family.flow_shift(width, height)
    if mode is Mode.IMAGE_TO_VIDEO and spec.motion_strength is not None:
        shift *= 0.5 + spec.motion_strength

    if preset is Preset.FAST:
        steps, guidance = fast_steps, 1.0
        guidance_2 = 1.0 if family.two_experts else None
    else:
        steps = family.steps if spec.num_inference_steps is None else spec.num_inference_steps
        if not 1 <= steps <= 100:
            raise InvalidRequest(f"num_inference_steps must be between 1 and 100 (got {steps}).")
        if spec.guidance_scale is None:
            guidance, guidance_2 = family.guidance, family.guidance_2
        else:
            if not 1.0 <= spec.guidance_scale <= 20.0:
                raise InvalidRequest(f"guidance_scale must be between 1 and 20 (got {spec.guidance_scale}).")
            guidance = spec.guidance_scale
            guidance_2 = spec.guidance_scale if family.two_experts else None

    return SamplingPlan(
        mode=mode,
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt or DEFAULT_NEGATIVE_PROMPT,
        width=width,
        height=height,
        gen_width=gen_width,
        gen_height=gen_height,
        num_frames=num_frames,
        fps=family.fps,
        steps=steps,
        guidance_scale=guidance,
        guidance_scale_2=guidance_2,
        flow_shift=shift,
        seed=spec.seed,
        end_frame=spec.end_image is not None,
    )


def _grid_size(width: int, height: int, family: WanFamily) -> tuple[int, int]:
    """The size the model generates for a ``width`` x ``height`` clip: each side up to the grid."""
    grid = family.grid
    if width < grid or height < grid:
        raise InvalidRequest(
            f"{width}x{height} is too small; each side needs at least {grid} pixels on this model."
        )
    if width % 2 or height % 2:
        raise InvalidRequest(f"{width}x{height} has an odd side; video needs even widths and heights.")
    if width * height > MAX_AREA:
        raise InvalidRequest(
            f"{width}x{height} is larger than this model can make; the most is 1280x720 or 720x1280."
        )
    return -(-width // grid) * grid, -(-height // grid) * grid
