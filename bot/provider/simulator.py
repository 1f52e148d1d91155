"""The simulator: a provider that makes real, plainly synthetic clips and misbehaves on request.

It is our provider server (``bot.provider.server``) over ``SimulatorGenerator``, so the bot's
``http`` backend meets the same contract it meets in production, with real mp4s of the asked
duration, size and fps to probe, stitch and upload. It also rehearses what providers do wrong,
either for every request (``SimulatorOptions``, changeable at run time through
``POST /v1/_simulator/options``) or for one request, by a token in its prompt:

    [sim:fail]        the task ends failed
    [sim:hang]        the task stays running until canceled
    [sim:bad-video]   the task succeeds but serves bytes that are not a video
    [sim:slow=2.5]    the task stays running 2.5 s longer (overrides latency_s)
    [sim:slow-download=3]  the finished clip's download waits 3 s before it starts
    [sim:429]         the first submit of this prompt is answered 429 with Retry-After: 1
    [sim:429x3]       ... the first three submits
    [sim:500]         the first submit of this prompt is answered 500 (also [sim:500x2])

Tokens are cut from the text drawn on the clip. ``GET /v1/_simulator/tasks`` lists every task
held and counts submit attempts, so a test can prove that a task was never submitted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import re
import shutil
import signal
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from bot.errors import BackendError, InvalidRequest
from bot.media import encode_frames
from bot.models import GenerationSpec, Mode, Resolution
from bot.provider import render
from bot.provider.generator import ProgressCallback
from bot.provider.server import (
    API_PREFIX,
    TASKS,
    HTTPFault,
    TaskRegistry,
    bound_port,
    build_provider_app,
    error_response,
    serve_provider,
)

SIMULATOR_SIZES: tuple[Resolution, ...] = (
    Resolution(1280, 720),
    Resolution(720, 1280),
    Resolution(960, 960),
    Resolution(832, 480),
    Resolution(480, 832),
)
"""The sizes a WAN provider offers; any other is refused with a 400, as a provider would."""

DEFAULT_MAX_PARALLEL = 4
RETRY_AFTER_S = 1.0
_LABEL = "simulated clip - no real model"
_RENDER_PROGRESS_END = 0.98  # the rest is ffmpeg finishing the file
_DIRECTIVE = re.compile(r"\[sim:([^\]]*)\]", re.IGNORECASE)
_REPEATED = re.compile(r"(429|500)(?:x(\d+))?")
_SLOW = re.compile(r"slow(-download)?=(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class SimulatorOptions:
    """How every request behaves; the ``[sim:...]`` prompt tokens override it per request.

    ``latency_s`` keeps each task running that much longer (progress advances meanwhile);
    ``fail_rate`` is the share of tasks that end failed; ``http_429_rate`` and ``http_500_rate``
    the share of submits refused with that status; ``hang`` keeps tasks running until canceled;
    ``bad_video`` serves garbage instead of an mp4; ``cache_clips`` renders one clip per mode,
    size, duration and fps and reuses it, so a benchmark measures the service, not ffmpeg;
    ``audio`` gives every clip a sound track, a tone whose pitch follows the seed
    (``render.tone_hz``), as hosted Wan 2.5/2.6 clips come with sound whatever was asked.
    """

    latency_s: float = 0.0
    fail_rate: float = 0.0
    http_429_rate: float = 0.0
    http_500_rate: float = 0.0
    hang: bool = False
    bad_video: bool = False
    cache_clips: bool = False
    audio: bool = False

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(item.default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{item.name} must be true or false")
            elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{item.name} must be a number")
            elif item.name.endswith("_rate") and not 0 <= value <= 1:
                raise ValueError(f"{item.name} must be between 0 and 1")
            elif value < 0:
                raise ValueError(f"{item.name} must not be negative")

    def updated(self, changes: Mapping[str, Any]) -> SimulatorOptions:
        """A copy with ``changes`` (JSON field names and values) applied; ``ValueError`` names a
        wrong field."""
        known = {item.name for item in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown option {unknown[0]}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Directives:
    """What the ``[sim:...]`` tokens of one prompt ask for."""

    fail: bool = False
    hang: bool = False
    bad_video: bool = False
    slow_s: float | None = None
    slow_download_s: float = 0.0
    rate_limited_submits: int = 0
    failed_submits: int = 0


def parse_directives(prompt: str) -> tuple[Directives, str]:
    """Read the ``[sim:...]`` tokens of a prompt; return them and the prompt without them.

    An unknown token raises ``InvalidRequest``, so a typo in a test fails loudly instead of
    quietly testing the happy path.
    """
    found: dict[str, Any] = {}
    for match in _DIRECTIVE.finditer(prompt):
        token = match.group(1).strip().lower()
        repeated, slow = _REPEATED.fullmatch(token), _SLOW.fullmatch(token)
        if token in ("fail", "hang"):
            found[token] = True
        elif token == "bad-video":
            found["bad_video"] = True
        elif slow:
            found["slow_download_s" if slow.group(1) else "slow_s"] = float(slow.group(2))
        elif repeated:
            field = "rate_limited_submits" if repeated.group(1) == "429" else "failed_submits"
            found[field] = int(repeated.group(2) or 1)
        else:
            raise InvalidRequest(
                f"unknown simulator token [sim:{token}]; "
                "use fail, hang, bad-video, slow=SECONDS, slow-download=SECONDS, 429, 429xN, 500 or 500xN"
            )
    caption = " ".join(_DIRECTIVE.sub(" ", prompt).split())
    return Directives(**found), caption


class _RenderCanceled(Exception):
    """Raised between frames in the render thread once the task's cancel event is set."""


class SimulatorGenerator:
    """A ``Generator`` drawing synthetic clips in a worker thread, with scripted faults.

    ``options`` may be replaced at any time (the control endpoint does); a task reads it once,
    when it starts. ``before_submit`` is the server hook that answers submits with 429 or 500.
    """

    name = "simulator"

    def __init__(self, options: SimulatorOptions | None = None, *, rng: random.Random | None = None) -> None:
        self.options = options or SimulatorOptions()
        self.submit_attempts = 0
        self.rendered_clips = 0
        self.cached_clips = 0
        self._rng = rng or random.Random()
        self._attempts_by_prompt: Counter[str] = Counter()

    def validate(self, spec: GenerationSpec) -> None:
        parse_directives(spec.prompt)
        size = Resolution(spec.width, spec.height)
        if size not in SIMULATOR_SIZES:
            sizes = ", ".join(map(str, SIMULATOR_SIZES))
            raise InvalidRequest(f"resolution {size} is not supported; use one of {sizes}")
        if spec.image is not None:
            try:
                render.image_size(spec.image)
            except ValueError as exc:
                raise InvalidRequest(f"image: {exc}") from None
        if spec.end_image is not None:
            try:
                render.image_size(spec.end_image)
            except ValueError as exc:
                raise InvalidRequest(f"end_image: {exc}") from None

    def before_submit(self, spec: GenerationSpec) -> None:
        """Refuse a submit the way a busy or broken provider does, as options and tokens say."""
        self.submit_attempts += 1
        directives, _ = parse_directives(spec.prompt)
        if directives.rate_limited_submits or directives.failed_submits:
            self._attempts_by_prompt[spec.prompt] += 1
            attempt = self._attempts_by_prompt[spec.prompt]
            if attempt <= directives.rate_limited_submits:
                raise HTTPFault(429, "simulated rate limit: slow down", retry_after=RETRY_AFTER_S)
            if attempt <= directives.rate_limited_submits + directives.failed_submits:
                raise HTTPFault(500, "simulated server error")
        if self._rng.random() < self.options.http_429_rate:
            raise HTTPFault(429, "simulated rate limit: slow down", retry_after=RETRY_AFTER_S)
        if self._rng.random() < self.options.http_500_rate:
            raise HTTPFault(500, "simulated server error")

    async def before_download(self, spec: GenerationSpec) -> None:
        """Hold a download back as ``[sim:slow-download=S]`` asks (a slow CDN)."""
        directives, _ = parse_directives(spec.prompt)
        await asyncio.sleep(directives.slow_download_s)

    async def generate(
        self, spec: GenerationSpec, dest: Path, on_progress: ProgressCallback, cancel: asyncio.Event
    ) -> None:
        options = self.options
        directives, caption = parse_directives(spec.prompt)
        if directives.hang or options.hang:
            await cancel.wait()
            raise asyncio.CancelledError
        latency = directives.slow_s if directives.slow_s is not None else options.latency_s
        render_from = 0.5 if latency > 0 else 0.0
        await _stay_busy(latency, cancel, lambda fraction: on_progress(fraction * render_from))
        if directives.fail or self._rng.random() < options.fail_rate:
            raise BackendError("simulated generation failure")
        if directives.bad_video or options.bad_video:
            dest.write_bytes(b"simulated bad video: this is not an mp4\n" * 64)
            return
        try:
            from_cache = await asyncio.to_thread(
                self._render,
                spec,
                caption,
                dest,
                options.cache_clips,
                options.audio,
                lambda f: on_progress(render_from + (_RENDER_PROGRESS_END - render_from) * f),
                cancel,
            )
        except _RenderCanceled:
            raise asyncio.CancelledError from None
        if from_cache:
            self.cached_clips += 1
        else:
            self.rendered_clips += 1

    def health(self) -> dict[str, Any]:
        return {
            "model": "simulator (no real model)",
            "device": "cpu",
            "sizes": [str(size) for size in SIMULATOR_SIZES],
            "options": dataclasses.asdict(self.options),
            "rendered_clips": self.rendered_clips,
            "cached_clips": self.cached_clips,
        }

    def _render(
        self,
        spec: GenerationSpec,
        caption: str,
        dest: Path,
        use_cache: bool,
        audio: bool,
        on_progress: ProgressCallback,
        cancel: asyncio.Event,
    ) -> bool:
        """Write the clip (blocking; runs in a thread), with a tone track when ``audio``.
        Returns True when it came from the cache."""
        sound = ("-tone" if audio else "") + ("-keyframes" if spec.end_image is not None else "")
        cached = (
            dest.parent
            / "simulator-cache"
            / f"{spec.mode}-{spec.width}x{spec.height}-{spec.duration_s}s-{spec.fps}fps{sound}.mp4"
        )
        if use_cache and cached.is_file():
            shutil.copyfile(cached, dest)
            return True
        count = spec.duration_s * spec.fps
        size = {"width": spec.width, "height": spec.height}
        if spec.mode is Mode.IMAGE_TO_VIDEO and spec.image is not None and spec.end_image is not None:
            try:
                frames = render.keyframe_frames(
                    spec.image, spec.end_image, count=count, seed=spec.seed, label=_LABEL, **size
                )
            except ValueError as exc:
                raise BackendError(str(exc)) from None
        elif spec.mode is Mode.IMAGE_TO_VIDEO and spec.image is not None:
            try:
                frames = render.ken_burns_frames(
                    spec.image, count=count, seed=spec.seed, label=_LABEL, **size
                )
            except ValueError as exc:
                raise BackendError(str(exc)) from None
        else:
            frames = render.scene_frames(caption, count=count, seed=spec.seed, label=_LABEL, **size)
        tone = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.wav") if audio else None
        try:
            if tone is not None:
                render.write_tone(tone, frequency_hz=render.tone_hz(spec.seed), seconds=count / spec.fps)
            encode_frames(_watched(frames, count, on_progress, cancel), dest, fps=spec.fps, audio=tone, **size)
        finally:
            if tone is not None:
                tone.unlink(missing_ok=True)
        if use_cache:
            cached.parent.mkdir(exist_ok=True)
            partial = cached.with_name(f".{uuid.uuid4().hex}.part")
            shutil.copyfile(dest, partial)
            partial.replace(cached)  # atomic, so concurrent tasks never read half a cached clip
        return False


def _watched(
    frames: Iterator[np.ndarray], count: int, on_progress: ProgressCallback, cancel: asyncio.Event
) -> Iterator[np.ndarray]:
    """Pass frames through, reporting progress and stopping between frames once canceled."""
    for index, frame in enumerate(frames, start=1):
        if cancel.is_set():
            raise _RenderCanceled
        yield frame
        on_progress(index / count)


async def _stay_busy(seconds: float, cancel: asyncio.Event, on_progress: Callable[[float], None]) -> None:
    """Wait ``seconds`` as a slow model would, reporting the elapsed share; stop on cancel."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cancel.wait(), timeout=min(0.25, left))
        if cancel.is_set():
            raise asyncio.CancelledError
        on_progress(1 - max(0.0, deadline - loop.time()) / seconds)


# ── the simulator as a service ─────────────────────────────────────────────────────────────


def build_simulator_app(
    options: SimulatorOptions | None = None,
    *,
    files_dir: Path,
    api_key: str | None = None,
    max_parallel: int = DEFAULT_MAX_PARALLEL,
    task_ttl_s: float = 3600,
) -> web.Application:
    """The provider server over a ``SimulatorGenerator``, plus its control routes.

    ``POST /v1/_simulator/options`` changes options for later tasks (a JSON object of
    ``SimulatorOptions`` fields; answers the whole set); ``GET /v1/_simulator/tasks`` lists
    tasks. Both need the API key like any route but health.
    """
    generator = SimulatorGenerator(options)
    app = build_provider_app(
        generator,
        api_key=api_key,
        max_parallel=max_parallel,
        files_dir=files_dir,
        task_ttl_s=task_ttl_s,
        before_submit=generator.before_submit,
        before_download=generator.before_download,
    )
    controls = _Controls(generator, app[TASKS])
    app.router.add_post(f"{API_PREFIX}/_simulator/options", controls.set_options)
    app.router.add_get(f"{API_PREFIX}/_simulator/tasks", controls.list_tasks)
    return app


class _Controls:
    def __init__(self, generator: SimulatorGenerator, registry: TaskRegistry) -> None:
        self._generator = generator
        self._registry = registry

    async def set_options(self, request: web.Request) -> web.Response:
        try:
            changes = await request.json()
        except ValueError:
            return error_response(400, "the request body must be JSON")
        if not isinstance(changes, dict):
            return error_response(400, "the request body must be a JSON object of simulator options")
        try:
            self._generator.options = self._generator.options.updated(changes)
        except ValueError as exc:
            return error_response(400, str(exc), code="invalid_parameter")
        return web.json_response(dataclasses.asdict(self._generator.options))

    async def list_tasks(self, request: web.Request) -> web.Response:
        tasks = [
            {
                "task_id": task.id,
                "prompt": task.spec.prompt,
                "mode": task.spec.mode.value,
                "status": task.status.value,
                "progress": round(task.progress, 4),
                "error": task.error,
                "created_at": datetime.fromtimestamp(task.created_at, UTC).isoformat(),
            }
            for task in self._registry.tasks()
        ]
        return web.json_response({"submit_attempts": self._generator.submit_attempts, "tasks": tasks})


def run_simulator(
    host: str,
    port: int,
    options: SimulatorOptions,
    files_dir: Path | None = None,
    api_key: str | None = None,
    *,
    max_parallel: int = DEFAULT_MAX_PARALLEL,
) -> None:
    """Serve the simulator until interrupted (Ctrl-C or SIGTERM); blocks. Backs
    ``videobot simulator``. Without ``files_dir`` clips go to a temporary folder removed at exit."""
    with contextlib.ExitStack() as stack:
        if files_dir is None:
            files_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="videobot-simulator-")))
        app = build_simulator_app(options, files_dir=files_dir, api_key=api_key, max_parallel=max_parallel)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_until_stopped(app, host, port))


async def _serve_until_stopped(app: web.Application, host: str, port: int) -> None:
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows event loops
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    runner = await serve_provider(app, host, port)
    try:
        url = f"http://{host}:{bound_port(runner)}{API_PREFIX}"
        print(f"Simulator serving the provider API at {url} (simulated clips, not a real model)", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
