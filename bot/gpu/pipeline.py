"""Loading a Wan checkpoint once and keeping it resident, with the options a GPU owner tunes.

``load_wan`` accepts a Hugging Face model id or a local folder in diffusers layout (what
``save_pretrained`` writes). Which Wan it is comes from the configs (see ``specs.detect_family``),
so Wan2.1 1.3B/14B, Wan2.2 TI2V-5B and Wan2.2 A14B (with ``transformer_2``) load the same way.

Options, and why each exists:

- ``preset="fast"`` fuses a step-distillation LoRA (LightX2V style) into the transformer(s) and
  samples in 4 steps without guidance; fused, it costs nothing per step and compiles cleanly.
- ``offload="model"`` moves whole components to the GPU only while they run (fits 14B on 48 GB);
  ``"group"`` streams layer groups (fits 14B on 24 GB, slower). Both need a CUDA device.
- ``vae_tiling`` decodes 720p in tiles so the decode peak does not exceed the denoise peak.
- ``vae_fp32`` keeps the VAE in float32, as the Wan authors do; a bf16 VAE shows banding.
- ``compile`` compiles the repeated transformer block with ``torch.compile`` (regional, so the
  first call pays seconds, not minutes); ``first_block_cache`` skips steps whose first block
  barely changed (a diffusers cache; trades a little fidelity for speed).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from diffusers import (
    AutoencoderKLWan,
    DiffusionPipeline,
    FirstBlockCacheConfig,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)

from bot.gpu.specs import Preset, WanFamily, detect_family
from bot.models import Mode

log = logging.getLogger(__name__)

Pipe = Any
"""A ``WanPipeline`` or ``WanImageToVideoPipeline``. diffusers builds their methods from mixins
and lazy imports that static checkers cannot follow, so they are typed loosely here."""

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class Offload(StrEnum):
    NONE = "none"
    MODEL = "model"
    GROUP = "group"


@dataclass(frozen=True)
class LoadOptions:
    """How to load and run the model; every field has a CLI-friendly plain value."""

    preset: Preset = Preset.QUALITY
    lora: str | None = None
    """Step-distillation LoRA for the fast preset (file, folder or hub id). Without one, the fast
    preset assumes the checkpoint itself is already step-distilled."""
    lora_2: str | None = None
    """The low-noise expert's LoRA, for Wan2.2 A14B in the fast preset."""
    fast_steps: int = 4
    device: str | None = None
    """``None`` picks ``cuda`` when there is one, else ``cpu``."""
    dtype: str = "bfloat16"
    vae_fp32: bool = True
    offload: Offload = Offload.NONE
    vae_tiling: bool = False
    compile: bool = False
    first_block_cache: float | None = None
    """Threshold for diffusers' first-block cache (0.05-0.1 is typical); ``None`` turns it off."""


@dataclass
class WanModel:
    """A loaded checkpoint: one pipeline per mode it supports, sharing the same weights."""

    source: str
    family: WanFamily
    options: LoadOptions
    device: torch.device
    pipelines: dict[Mode, Pipe]
    _shift: float | None = field(default=None, repr=False)

    def pipeline(self, mode: Mode) -> Pipe:
        return self.pipelines[mode]

    def transformers(self) -> Iterator[Any]:
        """The denoisers that run every step: one for Wan2.1/TI2V, two for A14B."""
        pipe = next(iter(self.pipelines.values()))
        for name in ("transformer", "transformer_2"):
            module = getattr(pipe, name, None)
            if module is not None:
                yield module

    def use_flow_shift(self, shift: float) -> None:
        """Point every pipeline at a scheduler with this flow shift (shift depends on the request)."""
        if shift == self._shift:
            return
        base = next(iter(self.pipelines.values())).scheduler
        key = "flow_shift" if "flow_shift" in base.config else "shift"
        scheduler = type(base).from_config(base.config, **{key: shift})
        for pipe in self.pipelines.values():
            pipe.scheduler = scheduler
        self._shift = shift

    def release(self) -> None:
        """Drop the weights and hand the memory back to the GPU (the worker or bot is stopping)."""
        self.pipelines.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def load_wan(model: str, options: LoadOptions | None = None) -> WanModel:
    """Load ``model`` (hub id or local folder) with ``options``; blocking, seconds to minutes."""
    options = options or LoadOptions()
    if options.dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)} (got {options.dtype!r})")
    dtype = _DTYPES[options.dtype]
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if options.offload is not Offload.NONE and device.type != "cuda":
        raise ValueError(f"offload={options.offload.value} needs a CUDA device (have {device})")

    index = DiffusionPipeline.load_config(model)
    denoiser = "transformer" if (index.get("transformer") or [None])[0] else "transformer_2"
    family = detect_family(
        index,
        WanTransformer3DModel.load_config(model, subfolder=denoiser),
        AutoencoderKLWan.load_config(model, subfolder="vae"),
    )
    log.info(
        "loading %s from %s on %s (%s, %s preset)", family.label, model, device, options.dtype, options.preset
    )

    vae = AutoencoderKLWan.from_pretrained(
        model, subfolder="vae", dtype=torch.float32 if options.vae_fp32 else dtype
    )
    pipe_class = (
        WanImageToVideoPipeline
        if index.get("_class_name") == WanImageToVideoPipeline.__name__
        else WanPipeline
    )
    pipe = pipe_class.from_pretrained(model, vae=vae, dtype=dtype)
    if options.preset is Preset.FAST:
        _fuse_fast_lora(pipe, family, options)

    pipelines: dict[Mode, Pipe] = {next(iter(family.modes)): pipe}
    if family.modes == {Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO}:
        pipelines = {Mode.TEXT_TO_VIDEO: pipe, Mode.IMAGE_TO_VIDEO: _image_pipeline_sharing(pipe)}

    _place(pipe, device, options.offload)
    if options.vae_tiling:
        pipe.vae.enable_tiling()
    loaded = WanModel(source=model, family=family, options=options, device=device, pipelines=pipelines)
    for transformer in loaded.transformers():
        if options.first_block_cache is not None:
            transformer.enable_cache(FirstBlockCacheConfig(threshold=options.first_block_cache))
        if options.compile:
            # Offload hooks move weights mid-graph, which a full graph cannot capture.
            transformer.compile_repeated_blocks(fullgraph=options.offload is Offload.NONE)
    for each in pipelines.values():
        each.set_progress_bar_config(disable=True)
    return loaded


def _fuse_fast_lora(pipe: Pipe, family: WanFamily, options: LoadOptions) -> None:
    if options.lora is None:
        log.warning("fast preset without a LoRA: assuming %s is already step-distilled", family.label)
        return
    pipe.load_lora_weights(options.lora, adapter_name="fast")
    components = ["transformer"]
    if family.two_experts:
        if options.lora_2 is None:
            raise ValueError(
                f"{family.label} has two experts: the fast preset needs lora_2 for the low-noise one"
            )
        pipe.load_lora_weights(options.lora_2, adapter_name="fast_2", load_into_transformer_2=True)
        components.append("transformer_2")
    pipe.fuse_lora(components=components)
    # Fused weights stay; the adapter layers go, so steps run at the base model's speed.
    pipe.unload_lora_weights()


def _image_pipeline_sharing(pipe: Pipe) -> Pipe:
    """An image-to-video view over a TI2V checkpoint's modules, without copying or recasting them.

    ``from_pipe`` would recast every module to one dtype, turning a float32 VAE into bf16.
    """
    return WanImageToVideoPipeline(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        scheduler=pipe.scheduler,
        transformer=pipe.transformer,
        transformer_2=pipe.transformer_2,
        boundary_ratio=pipe.config.boundary_ratio,
        expand_timesteps=pipe.config.expand_timesteps,
    )


def _place(pipe: Pipe, device: torch.device, offload: Offload) -> None:
    """Put the modules where they run; offload hooks live on the shared modules, so one call serves every view."""
    if offload is Offload.MODEL:
        pipe.enable_model_cpu_offload(device=device)
    elif offload is Offload.GROUP:
        pipe.enable_group_offload(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=True,
            exclude_modules=["vae"],
        )
    else:
        pipe.to(device)
