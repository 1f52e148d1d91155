"""GPU figures for the diffusers backend: real Wan architectures, random weights, no download.

Builds the published Wan2.1 T2V 1.3B, Wan2.2 TI2V-5B and Wan2.1 T2V 14B transformers (and,
on request, the two-expert Wan2.2 A14B), the UMT5-XXL text encoder and the Wan VAEs from their
configs, written out below, with random weights straight on the GPU. Speed and memory depend
on shapes, not on what the weights learned, so the figures hold for the real checkpoints
(short of the few float32 layers a real load keeps, see ``README.md``).

For each model, resolution and preset it reports, side by side in one run:

- ``bare``: ``pipe(...)`` called directly with the same arguments, frames encoded to mp4 with
  the same encoder: what a hand-written diffusers script costs;
- ``ours``: the same request through ``DiffusersGenerator.generate`` (planning, the GPU queue
  thread, step callbacks, cancel checks, uint8 conversion, mp4), and its overhead over bare;
- per-step time, peak GPU memory, and a 5 s clip's end-to-end time. The fast preset runs its
  real 4 steps. The quality preset's 40-50 steps take up to half an hour at 14B 720p, so by
  default it runs ``--measure-steps`` steps and extrapolates (prompt encoding + N x step +
  decode + encode, each measured); ``--full`` runs every step instead.

``--compile`` repeats the runs with the transformer's repeated block compiled. ``--smoke`` runs
the whole script on tiny shapes on CPU, to check it before spending GPU time.

    python benchmarks/gpu_wan.py                         # 1.3b, 5b, 14b at 480p and 720p
    python benchmarks/gpu_wan.py --models 14b --resolutions 720p --presets fast --compile
    python benchmarks/gpu_wan.py --smoke                 # no GPU needed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

# Bare runs call the pipeline on this thread, ours on the generator's: with OpenMP's default
# spin-waiting, the two threads' CPU pools starve each other and skew any CPU-bound part.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import UMT5Config, UMT5EncoderModel  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot import media  # noqa: E402
from bot.gpu.generator import DiffusersGenerator  # noqa: E402
from bot.gpu.pipeline import LoadOptions, WanModel  # noqa: E402
from bot.gpu.specs import Preset, detect_family  # noqa: E402
from bot.models import GenerationSpec, Mode  # noqa: E402
from tests.gpu_fixtures import tiny_tokenizer  # noqa: E402

# Published transformer configs (diffusers layout) of each checkpoint.
_WAN_BLOCK = {
    "patch_size": (1, 2, 2),
    "attention_head_dim": 128,
    "text_dim": 4096,
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
TRANSFORMERS: dict[str, dict[str, Any]] = {
    "1.3b": {
        **_WAN_BLOCK,
        "num_attention_heads": 12,
        "num_layers": 30,
        "ffn_dim": 8960,
        "in_channels": 16,
        "out_channels": 16,
    },
    "5b": {
        **_WAN_BLOCK,
        "num_attention_heads": 24,
        "num_layers": 30,
        "ffn_dim": 14336,
        "in_channels": 48,
        "out_channels": 48,
    },
    "14b": {
        **_WAN_BLOCK,
        "num_attention_heads": 40,
        "num_layers": 40,
        "ffn_dim": 13824,
        "in_channels": 16,
        "out_channels": 16,
    },
}
TRANSFORMERS["a14b"] = TRANSFORMERS["14b"]
WAN21_VAE: dict[str, Any] = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2}
WAN22_VAE: dict[str, Any] = {
    "base_dim": 160,
    "decoder_base_dim": 256,
    "z_dim": 48,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_spatial": 16,
    "latents_mean": [0.0] * 48,
    "latents_std": [1.0] * 48,
}
UMT5_XXL: dict[str, Any] = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
}
RESOLUTIONS = {"480p": (832, 480), "720p": (1280, 720)}

# --smoke: the same code path on shapes a laptop CPU runs in seconds.
_TINY_BLOCK = {**_WAN_BLOCK, "attention_head_dim": 8, "text_dim": 32, "freq_dim": 32, "rope_max_seq_len": 32}
TINY_TRANSFORMERS: dict[str, dict[str, Any]] = {
    key: {
        **_TINY_BLOCK,
        "num_attention_heads": 2,
        "num_layers": 2,
        "ffn_dim": 32,
        "in_channels": c,
        "out_channels": c,
    }
    for key, c in (("1.3b", 16), ("5b", 48), ("14b", 16), ("a14b", 16))
}
TINY_VAE = {"base_dim": 3, "decoder_base_dim": None, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1}
TINY_UMT5: dict[str, Any] = {
    "vocab_size": 64,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 32,
    "num_layers": 1,
    "num_heads": 2,
}
TINY_RESOLUTIONS = {"480p": (64, 32), "720p": (64, 64)}

PROMPT = "a fox runs in the snow in the forest, the camera flies slowly"


@dataclass
class Row:
    model: str
    resolution: str
    preset: str
    compiled: bool
    steps_run: int
    steps_clip: int
    step_s: float
    peak_gib: float
    bare_s: float
    ours_s: float
    overhead_pct: float
    clip_s: float
    clip_measured: bool


def build(key: str, device: torch.device, smoke: bool) -> WanModel:
    """The architecture of ``key`` with random weights, made directly on ``device``."""
    dtype = torch.float32 if smoke else torch.bfloat16
    arch = (TINY_TRANSFORMERS if smoke else TRANSFORMERS)[key]
    vae_config = {**(WAN22_VAE if key == "5b" else WAN21_VAE), **(TINY_VAE if smoke else {})}
    torch.manual_seed(0)
    with torch.device(device):
        vae: Any = AutoencoderKLWan(**vae_config)  # float32, as the backend keeps it
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            transformer: Any = WanTransformer3DModel(**arch)
            transformer_2 = WanTransformer3DModel(**arch) if key == "a14b" else None
            tokenizer = tiny_tokenizer()
            # The real vocabulary size (the embedding is 2 GiB of the encoder); any tokenizer's ids fit in it.
            text_encoder = UMT5EncoderModel(UMT5Config(**(TINY_UMT5 if smoke else UMT5_XXL)))
        finally:
            torch.set_default_dtype(previous)
    pipe: Any = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0
        ),
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=0.875 if key == "a14b" else None,
        expand_timesteps=key == "5b",
    )
    pipe.set_progress_bar_config(disable=True)
    family = detect_family(dict(pipe.config), transformer.config, vae.config)
    options = LoadOptions(device=str(device), dtype="float32" if smoke else "bfloat16")
    return WanModel(
        source=f"random:{key}",
        family=family,
        options=options,
        device=device,
        pipelines={Mode.TEXT_TO_VIDEO: pipe},
    )


class StepClock:
    """Step-end timestamps, synchronised with the GPU so each step's time is its own."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.ends: list[float] = []

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        self.sync()
        self.ends.append(time.perf_counter())
        return tensors

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def bare_run(model: WanModel, plan: Any, out: Path) -> tuple[float, float, float, float]:
    """``pipe(...)`` as a hand-written script calls it; returns total, prompt, step, decode seconds."""
    pipe = model.pipeline(Mode.TEXT_TO_VIDEO)
    model.use_flow_shift(plan.flow_shift)
    clock = StepClock(model.device)
    clock.sync()
    start = time.perf_counter()
    kwargs = {"guidance_scale_2": plan.guidance_scale_2} if plan.guidance_scale_2 is not None else {}
    frames = pipe(
        prompt=plan.prompt,
        negative_prompt=plan.negative_prompt,
        height=plan.gen_height,
        width=plan.gen_width,
        num_frames=plan.num_frames,
        num_inference_steps=plan.steps,
        guidance_scale=plan.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(plan.seed),
        output_type="np",
        callback_on_step_end=clock,
        **kwargs,
    ).frames[0]
    clock.sync()
    decoded = time.perf_counter()
    media.encode_frames(
        (frames.clip(0, 1) * 255).round().astype("uint8"),
        out,
        width=plan.gen_width,
        height=plan.gen_height,
        fps=plan.fps,
    )
    total = time.perf_counter() - start
    gaps = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)]
    step = statistics.median(gaps) if gaps else clock.ends[0] - start
    prompt = clock.ends[0] - start - step
    return total, prompt, step, decoded - clock.ends[-1]


def ours_run(generator: DiffusersGenerator, spec: GenerationSpec, out: Path) -> float:
    start = time.perf_counter()
    asyncio.run(generator.generate(spec, out, lambda _: None, asyncio.Event()))
    return time.perf_counter() - start


def measure(
    model: WanModel,
    key: str,
    resolution: str,
    size: tuple[int, int],
    preset: Preset,
    args: argparse.Namespace,
    work: Path,
) -> Row:
    model.options = replace(model.options, preset=preset)
    generator = DiffusersGenerator(model)
    width, height = size
    clip_plan = generator.plan(
        GenerationSpec(prompt=PROMPT, width=width, height=height, duration_s=5, fps=model.family.fps, seed=1)
    )
    steps = (
        clip_plan.steps if args.full or preset is Preset.FAST else min(args.measure_steps, clip_plan.steps)
    )
    spec = GenerationSpec(
        prompt=PROMPT,
        width=width,
        height=height,
        duration_s=5,
        fps=model.family.fps,
        seed=1,
        num_inference_steps=steps,
    )
    plan = generator.plan(spec)
    bare_run(model, replace(plan, steps=1), work / "warmup.mp4")  # kernels, allocator, compile
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    bare_runs, ours_runs = [], []
    for _ in range(args.repeats):  # alternated, so drift (clocks, heat) hits both alike
        bare_runs.append(bare_run(model, plan, work / "bare.mp4"))
        ours_runs.append(ours_run(generator, spec, work / "ours.mp4"))
    peak = torch.cuda.max_memory_allocated(model.device) / 2**30 if model.device.type == "cuda" else 0.0
    bare, prompt_s, step_s, decode_s = (statistics.median(run[i] for run in bare_runs) for i in range(4))
    ours = statistics.median(ours_runs)
    encode_s = bare - prompt_s - step_s * plan.steps - decode_s
    measured = steps == clip_plan.steps
    clip_s = ours if measured else prompt_s + step_s * clip_plan.steps + decode_s + encode_s + (ours - bare)
    return Row(
        model=key,
        resolution=f"{resolution} ({plan.width}x{plan.height}x{plan.num_frames})",
        preset=preset.value,
        compiled=model.options.compile,
        steps_run=steps,
        steps_clip=clip_plan.steps,
        step_s=step_s,
        peak_gib=peak,
        bare_s=bare,
        ours_s=ours,
        overhead_pct=100 * (ours - bare) / bare,
        clip_s=clip_s,
        clip_measured=measured,
    )


def table(rows: list[Row], device: str) -> str:
    lines = [
        f"device: {device}",
        "",
        "| model | resolution (WxHxframes) | preset | compiled | s/step | peak GiB | bare s | ours s | overhead | 5 s clip s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        clip = f"{r.clip_s:.1f}" + (
            "" if r.clip_measured else f" (est., {r.steps_run}/{r.steps_clip} steps run)"
        )
        lines.append(
            f"| {r.model} | {r.resolution} | {r.preset} | {'yes' if r.compiled else 'no'} | {r.step_s:.3f} | "
            f"{r.peak_gib:.1f} | {r.bare_s:.2f} | {r.ours_s:.2f} | {r.overhead_pct:+.1f}% | {clip} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="1.3b,5b,14b", help="comma list of 1.3b, 5b, 14b, a14b")
    parser.add_argument("--resolutions", default="480p,720p")
    parser.add_argument("--presets", default="quality,fast")
    parser.add_argument("--measure-steps", type=int, default=3, help="quality-preset steps actually run")
    parser.add_argument("--full", action="store_true", help="run every step of the quality preset")
    parser.add_argument("--repeats", type=int, default=1, help="bare/ours pairs per row; the median counts")
    parser.add_argument(
        "--compile", action="store_true", help="repeat with torch.compile of the transformer blocks"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes on CPU: checks the script, not the GPU"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    if not args.smoke and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (or --smoke)")
    device = torch.device("cpu" if args.smoke else "cuda")
    sizes = TINY_RESOLUTIONS if args.smoke else RESOLUTIONS
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models.split(","):
            model = build(key, device, args.smoke)
            for compiled in (False, True) if args.compile else (False,):
                if compiled:
                    for transformer in model.transformers():
                        transformer.compile_repeated_blocks(fullgraph=True)
                    model.options = replace(model.options, compile=True)
                for resolution in args.resolutions.split(","):
                    for preset in args.presets.split(","):
                        row = measure(
                            model, key, resolution, sizes[resolution], Preset(preset), args, Path(tmp)
                        )
                        rows.append(row)
                        print(json.dumps(asdict(row)), flush=True)
            model.release()
            del model
    name = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name()
    print(table(rows, name))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": [asdict(r) for r in rows]}, indent=2))


if __name__ == "__main__":
    main()
