"""``DiffusersGenerator``: the Generator port over a resident Wan model, one job at a time.

The GPU runs jobs strictly one after another through a single worker thread, so the event loop
never blocks and two jobs never share the GPU's memory. Jobs wait in that thread's queue in
arrival order; a job canceled while it waits leaves the queue without touching the GPU.

A cancel during denoising takes effect at the next step boundary: the step callback raises,
so the pipeline never reaches its VAE decode, the most memory-hungry moment of the run. The mp4
is encoded after the GPU is handed to the next job.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
from PIL import Image, UnidentifiedImageError

from bot import media
from bot.errors import BackendError, InvalidRequest, VideobotError
from bot.gpu.pipeline import LoadOptions, WanModel, load_wan
from bot.gpu.specs import SamplingPlan, plan_generation
from bot.models import GenerationSpec
from bot.provider.generator import ProgressCallback

log = logging.getLogger(__name__)

_UNREADABLE_IMAGE = "The image could not be read; send a PNG or JPEG."
DENOISE_SHARE = 0.9
"""Fraction of the progress bar the denoising steps fill; decode and encode fill the rest."""


class _Stopped(Exception):
    """Raised from the step callback to leave the pipeline before its VAE decode."""


@dataclass
class _Job:
    plan: SamplingPlan
    image: bytes | None
    end_image: bytes | None
    stop: threading.Event
    on_progress: ProgressCallback


class DiffusersGenerator:
    """Runs a loaded ``WanModel`` for the provider server or for ``DiffusersBackend``."""

    name = "diffusers"

    def __init__(self, model: WanModel) -> None:
        self.model = model
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="videobot-gpu")
        self._count_lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._done = 0

    @classmethod
    def load(cls, model: str, options: LoadOptions | None = None) -> DiffusersGenerator:
        """Load the checkpoint (blocking); call it from a thread when an event loop is running."""
        return cls(load_wan(model, options))

    @property
    def family_label(self) -> str:
        return self.model.family.label

    def plan(self, spec: GenerationSpec) -> SamplingPlan:
        """The exact call ``spec`` turns into; raises ``InvalidRequest`` for what the model cannot do."""
        options = self.model.options
        return plan_generation(spec, self.model.family, options.preset, fast_steps=options.fast_steps)

    def validate(self, spec: GenerationSpec) -> None:
        self.plan(spec)
        for image in (spec.image, spec.end_image):
            if image is not None:
                _open_image(image).close()  # the header only: validate runs on the event loop

    async def generate(
        self,
        spec: GenerationSpec,
        dest: Path,
        on_progress: ProgressCallback,
        cancel: asyncio.Event,
    ) -> None:
        job = _Job(
            plan=self.plan(spec),
            image=spec.image,
            end_image=spec.end_image,
            stop=threading.Event(),
            on_progress=on_progress,
        )
        plan = job.plan
        with self._count_lock:
            self._waiting += 1
        future: Future[torch.Tensor] = self._gpu.submit(self._run, job)
        future.add_done_callback(self._leave_queue_if_canceled)
        frames = await _await_unless_canceled(future, job.stop, cancel)
        on_progress(DENOISE_SHARE + (1 - DENOISE_SHARE) / 2)
        partial = dest.with_name(f"{dest.stem}.part{dest.suffix}")
        try:
            await asyncio.to_thread(
                media.encode_frames,
                frames.numpy(),
                partial,
                width=plan.width,
                height=plan.height,
                fps=plan.fps,
            )
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)
        on_progress(1.0)

    def health(self) -> dict[str, Any]:
        model = self.model
        with self._count_lock:
            queue = {"running": self._running, "waiting": self._waiting, "done": self._done}
        return {
            "generator": self.name,
            "model": model.source,
            "family": model.family.label,
            "modes": sorted(mode.value for mode in model.family.modes),
            "fps": model.family.fps,
            "end_frame": model.family.end_frame,
            "preset": model.options.preset.value,
            "device": str(model.device),
            "gpu": torch.cuda.get_device_name(model.device) if model.device.type == "cuda" else None,
            "dtype": model.options.dtype,
            "offload": model.options.offload.value,
            "compiled": model.options.compile,
            "queue": queue,
            "memory": _memory(model.device),
        }

    def close(self) -> None:
        """Finish the running job's thread and release the weights."""
        self._gpu.shutdown(wait=True, cancel_futures=True)
        self.model.release()

    def _leave_queue_if_canceled(self, future: Future[torch.Tensor]) -> None:
        if future.cancelled():
            with self._count_lock:
                self._waiting -= 1

    def _run(self, job: _Job) -> torch.Tensor:
        """The GPU thread: denoise and decode one job, or stop at a step boundary."""
        with self._count_lock:
            self._waiting -= 1
            self._running += 1
        try:
            if job.stop.is_set():
                raise _Stopped
            job.on_progress(0.0)  # tells the caller the job left the queue
            return self._denoise_and_decode(job)
        finally:
            with self._count_lock:
                self._running -= 1
                self._done += 1

    def _denoise_and_decode(self, job: _Job) -> torch.Tensor:
        plan = job.plan
        self.model.use_flow_shift(plan.flow_shift)
        pipe = self.model.pipeline(plan.mode)

        def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            job.on_progress(DENOISE_SHARE * (step + 1) / pipeline.num_timesteps)
            if job.stop.is_set():
                raise _Stopped
            return tensors

        kwargs: dict[str, Any] = {}
        if job.image is not None:
            kwargs["image"] = _fit_image(_open_image(job.image), plan.gen_width, plan.gen_height)
        if job.end_image is not None:
            kwargs["last_image"] = _fit_image(_open_image(job.end_image), plan.gen_width, plan.gen_height)
        if plan.guidance_scale_2 is not None:
            kwargs["guidance_scale_2"] = plan.guidance_scale_2
        try:
            video = pipe(
                prompt=plan.prompt,
                negative_prompt=plan.negative_prompt,
                height=plan.gen_height,
                width=plan.gen_width,
                num_frames=plan.num_frames,
                num_inference_steps=plan.steps,
                guidance_scale=plan.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(plan.seed),
                output_type="pt",
                callback_on_step_end=on_step_end,
                **kwargs,
            ).frames[0]
        except _Stopped:
            pipe.maybe_free_model_hooks()  # the pipeline's own exit path was skipped: offload and reset caches
            raise
        except torch.OutOfMemoryError as exc:
            pipe.maybe_free_model_hooks()
            torch.cuda.empty_cache()
            raise BackendError(
                f"The GPU ran out of memory for {plan.width}x{plan.height}, {plan.duration_s:.1f} s; "
                "try a smaller size or a shorter clip.",
                retryable=False,
            ) from exc
        top, left = (plan.gen_height - plan.height) // 2, (plan.gen_width - plan.width) // 2
        video = video[:, :, top : top + plan.height, left : left + plan.width]  # back from the model's grid
        # (frames, channels, height, width) in [0, 1] -> (frames, height, width, 3) bytes, on the host.
        return video.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()


async def _await_unless_canceled(
    future: Future[torch.Tensor], stop: threading.Event, cancel: asyncio.Event
) -> torch.Tensor:
    """Wait for the GPU thread; on ``cancel`` (or task cancellation) stop it and raise ``CancelledError``."""
    result = asyncio.wrap_future(future)
    canceled: asyncio.Future[Any] = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait([result, canceled], return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        stop.set()
        result.cancel()
        raise
    finally:
        canceled.cancel()
    if not result.done():
        stop.set()
        future.cancel()  # succeeds only while the job is still queued
    try:
        return await result
    except _Stopped:
        raise asyncio.CancelledError from None
    except VideobotError:
        raise
    except Exception as exc:
        log.exception("diffusers generation failed")
        raise BackendError(f"The local model failed ({type(exc).__name__}).", retryable=False) from exc


def _open_image(data: bytes) -> Image.Image:
    """Open (not yet decode) an image; PIL refuses decompression bombs at this point."""
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise InvalidRequest(_UNREADABLE_IMAGE) from exc


def _fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop to the clip's aspect, then resize: the first frame must not be stretched."""
    try:
        image = image.convert("RGB")  # the pixels are decoded here: a truncated file fails now
    except (OSError, ValueError) as exc:
        raise InvalidRequest(_UNREADABLE_IMAGE) from exc
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = round(width / scale), round(height / scale)
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h)).resize(
        (width, height), Image.Resampling.LANCZOS
    )


def _memory(device: torch.device) -> dict[str, int]:
    process = {"process_rss_bytes": psutil.Process().memory_info().rss}
    if device.type != "cuda":
        return process
    free, total = torch.cuda.mem_get_info(device)
    return {
        **process,
        "gpu_total_bytes": total,
        "gpu_free_bytes": free,
        "gpu_allocated_bytes": torch.cuda.memory_allocated(device),
        "gpu_reserved_bytes": torch.cuda.memory_reserved(device),
        "gpu_peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
    }
