"""Our own provider service: the REST contract of a hosted WAN provider, over any ``Generator``.

The bot's ``http`` backend speaks exactly this contract (submit, poll, download) to a hosted
provider, so serving it ourselves lets the same client drive the simulator in tests and demos and
a GPU worker in production, with nothing in the core knowing which one answers.

    POST /v1/video/generations               text-to-video     -> {"task_id", "status": "queued"}
    POST /v1/video/image-to-video            image-to-video    -> {"task_id", "status": "queued"}
    GET  /v1/video/generations/{id}          poll              -> status, progress, output/error
    POST /v1/video/generations/{id}/cancel   stop a task       -> the task, now failed "canceled"
    GET  /v1/files/{id}.mp4                  the finished clip
    GET  /v1/health                          no key needed

An image-to-video body may carry ``end_image``, a data URI like ``image``: the frame the clip must
end on (first-and-last-frame generation; a loop sends its first frame). It is refused on
text-to-video, where there is no first frame to start from.

Every error is JSON, ``{"error": {"code", "message", "param"?}}``, and a 400 names the field at
fault. With an API key set, every route but health needs ``Authorization: Bearer <key>``; the
``video_url`` of a finished task also carries a signature, because hosted providers hand out
pre-signed download links and clients (the guide's own example) fetch them without the header.
Tasks live in memory: a restarted server forgets them, like a provider whose task ids expire.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.errors import BackendError, InvalidRequest
from bot.models import GenerationSpec, Resolution, TaskStatus
from bot.provider.generator import Generator

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
MAX_DURATION_S = 10
ALLOWED_FPS = (16, 24)
MAX_PROMPT_CHARS = 4000
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_SEED = 2**32 - 1
DEFAULT_DURATION_S = 5
DEFAULT_RESOLUTION = "1280x720"
DEFAULT_FPS = 16
_MAX_BODY_BYTES = 64 * 1024 * 1024  # two 20 MiB images (start and end) grow by a third in base64
_DATA_URI = re.compile(r"data:(image/[A-Za-z0-9.+-]+);base64,(.*)", re.DOTALL)
_ERROR_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    429: "rate_limit_exceeded",
}


class HTTPFault(Exception):
    """Answer a submit with an HTTP error instead of taking the task.

    Raised by the ``before_submit`` hook of ``build_provider_app``: the simulator uses it to
    rehearse a provider's rate limits (429 with ``Retry-After``) and outages (5xx), so the bot's
    retry logic meets real HTTP answers rather than mocks.
    """

    def __init__(self, status: int, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message or f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


SubmitHook = Callable[[GenerationSpec], None]
DownloadHook = Callable[[GenerationSpec], Awaitable[None]]
"""Awaited before a finished clip is served; the simulator uses it to make downloads slow."""
"""Called with every valid submission before it becomes a task; may raise ``HTTPFault``."""

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InvalidParameter(InvalidRequest):
    """A request field is wrong; ``param`` is its JSON path (``parameters.fps``) for the answer."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(eq=False)
class ProviderTask:
    """One submission and what became of it. Progress is written from the generator's thread."""

    id: str
    spec: GenerationSpec
    created_at: float
    status: TaskStatus = TaskStatus.QUEUED
    progress: float = 0.0
    error: str | None = None
    finished_at: float | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)

    def report(self, fraction: float) -> None:
        """Record progress; never goes backwards, so pollers see a monotone bar."""
        self.progress = max(self.progress, min(1.0, max(0.0, fraction)))


class TaskRegistry:
    """The tasks of one server: a FIFO queue worked by ``max_parallel`` workers, finished tasks
    (and their clips) dropped ``ttl_s`` after they end."""

    def __init__(self, generator: Generator, *, files_dir: Path, max_parallel: int, ttl_s: float) -> None:
        if max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        self.generator = generator
        self.files_dir = files_dir
        self.max_parallel = max_parallel
        self.ttl_s = ttl_s
        self._tasks: dict[str, ProviderTask] = {}
        self._queue: asyncio.Queue[ProviderTask] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []

    @property
    def queue_depth(self) -> int:
        return sum(1 for task in self._tasks.values() if task.status is TaskStatus.QUEUED)

    @property
    def running(self) -> int:
        return sum(1 for task in self._tasks.values() if task.status is TaskStatus.RUNNING)

    def tasks(self) -> list[ProviderTask]:
        """Every task still held, oldest first."""
        return list(self._tasks.values())

    def get(self, task_id: str) -> ProviderTask | None:
        return self._tasks.get(task_id)

    def video_path(self, task: ProviderTask) -> Path:
        return self.files_dir / f"{task.id}.mp4"

    def add(self, spec: GenerationSpec) -> ProviderTask:
        task = ProviderTask(id=f"task_{secrets.token_hex(12)}", spec=spec, created_at=time.time())
        self._tasks[task.id] = task
        self._queue.put_nowait(task)
        return task

    def cancel(self, task: ProviderTask) -> None:
        """Stop a queued or running task. It is failed at once; the generator notices the event
        between steps and frees its worker shortly after."""
        task.cancel.set()
        self._finish(task, TaskStatus.FAILED, error="canceled")

    async def start(self) -> None:
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._workers = [
            asyncio.create_task(self._work(), name=f"provider-worker-{n}") for n in range(self.max_parallel)
        ]
        self._workers.append(asyncio.create_task(self._sweep(), name="provider-sweeper"))

    async def aclose(self) -> None:
        for task in self._tasks.values():
            if task.status in (TaskStatus.QUEUED, TaskStatus.RUNNING):
                task.cancel.set()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def _finish(self, task: ProviderTask, status: TaskStatus, *, error: str | None = None) -> None:
        if task.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED):
            return
        task.status = status
        task.error = error
        if status is TaskStatus.SUCCEEDED:
            task.progress = 1.0
        task.finished_at = time.monotonic()

    async def _work(self) -> None:
        while True:
            task = await self._queue.get()
            if task.status is TaskStatus.QUEUED:
                await self._execute(task)

    async def _execute(self, task: ProviderTask) -> None:
        task.status = TaskStatus.RUNNING
        partial = self.files_dir / f"{task.id}.part.mp4"
        try:
            await self.generator.generate(task.spec, partial, task.report, task.cancel)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the server is stopping, not the task
            self._finish(task, TaskStatus.FAILED, error="canceled")
        except BackendError as exc:
            self._finish(task, TaskStatus.FAILED, error=str(exc))
        except Exception:
            log.exception("generator %s failed on task %s", self.generator.name, task.id)
            self._finish(task, TaskStatus.FAILED, error="generation failed (internal error)")
        else:
            # A task canceled while the generator was finishing is failed already; its clip goes.
            if task.status is TaskStatus.RUNNING:
                if partial.is_file() and partial.stat().st_size > 0:
                    partial.replace(self.video_path(task))
                    self._finish(task, TaskStatus.SUCCEEDED)
                else:
                    self._finish(task, TaskStatus.FAILED, error="generation produced no video")
        finally:
            partial.unlink(missing_ok=True)

    async def _sweep(self) -> None:
        interval = min(60.0, max(0.05, self.ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for task in list(self._tasks.values()):
                if task.finished_at is not None and now - task.finished_at >= self.ttl_s:
                    del self._tasks[task.id]
                    self.video_path(task).unlink(missing_ok=True)


TASKS = web.AppKey("provider_tasks", TaskRegistry)
"""Where the app keeps its ``TaskRegistry``, for extra routes such as the simulator's controls."""


def build_provider_app(
    generator: Generator,
    *,
    api_key: str | None = None,
    max_parallel: int = 1,
    files_dir: Path,
    task_ttl_s: float = 3600,
    before_submit: SubmitHook | None = None,
    before_download: DownloadHook | None = None,
) -> web.Application:
    """Serve the provider contract under ``/v1`` over ``generator``.

    At most ``max_parallel`` tasks generate at once; the rest wait in submission order. Clips are
    written under ``files_dir`` and removed with their task ``task_ttl_s`` after it finishes.
    ``before_submit`` sees each valid submission and may refuse it with ``HTTPFault``. More
    routes may be added before the app starts; they sit behind the same key check.
    """
    registry = TaskRegistry(generator, files_dir=files_dir, max_parallel=max_parallel, ttl_s=task_ttl_s)
    api = _ProviderAPI(registry, api_key=api_key or "", before_submit=before_submit, before_download=before_download)
    app = web.Application(middlewares=[_json_errors, api.authenticate], client_max_size=_MAX_BODY_BYTES)
    app[TASKS] = registry

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await registry.start()
        yield
        await registry.aclose()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post(f"{API_PREFIX}/video/generations", api.submit_text_to_video)
    app.router.add_post(f"{API_PREFIX}/video/image-to-video", api.submit_image_to_video)
    app.router.add_get(f"{API_PREFIX}/video/generations/{{task_id}}", api.poll)
    app.router.add_post(f"{API_PREFIX}/video/generations/{{task_id}}/cancel", api.cancel)
    app.router.add_get(f"{API_PREFIX}/files/{{task_id:[A-Za-z0-9_-]+}}.mp4", api.download, name="file")
    app.router.add_get(f"{API_PREFIX}/health", api.health, name="health")
    return app


async def serve_provider(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving ``app`` on ``host:port`` (0 picks a free port, see ``bound_port``) and
    return the runner; ``await runner.cleanup()`` stops it and every task."""
    from bot.serving import guard_app, runner_options

    runner = web.AppRunner(guard_app(app), **runner_options())
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port a started runner listens on, e.g. after asking for port 0."""
    return int(runner.addresses[0][1])


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The JSON error body every route answers with."""
    error: dict[str, str] = {"code": code or _ERROR_CODES.get(status, "server_error"), "message": message}
    if param:
        error["param"] = param
    return web.json_response({"error": error}, status=status, headers=headers)


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Turn aiohttp's own errors (unknown route, wrong method, body too large) into JSON ones."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal server error")


class _ProviderAPI:
    """The route handlers, sharing one registry, key and submit hook."""

    def __init__(
        self,
        registry: TaskRegistry,
        *,
        api_key: str,
        before_submit: SubmitHook | None,
        before_download: DownloadHook | None = None,
    ) -> None:
        self.registry = registry
        self._key = api_key
        self._before_submit = before_submit
        self._before_download = before_download

    @web.middleware
    async def authenticate(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Require the bearer key everywhere but health; a signed file link stands in for it."""
        route = request.match_info.route.name
        if not self._key or route == "health":
            return await handler(request)
        if route == "file":
            signature = request.query.get("sig", "")
            if hmac.compare_digest(
                signature.encode(), self._signature(request.match_info["task_id"]).encode()
            ):
                return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._key.encode()):
            return await handler(request)
        return error_response(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})

    async def submit_text_to_video(self, request: web.Request) -> web.Response:
        return await self._submit(request, with_image=False)

    async def submit_image_to_video(self, request: web.Request) -> web.Response:
        return await self._submit(request, with_image=True)

    async def poll(self, request: web.Request) -> web.Response:
        task = self.registry.get(request.match_info["task_id"])
        if task is None:
            return error_response(404, "no such task (unknown or expired)")
        return web.json_response(self._task_body(request, task))

    async def cancel(self, request: web.Request) -> web.Response:
        task = self.registry.get(request.match_info["task_id"])
        if task is None:
            return error_response(404, "no such task (unknown or expired)")
        if task.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED):
            return error_response(409, f"task already {task.status.value}", code="task_finished")
        self.registry.cancel(task)
        return web.json_response(self._task_body(request, task))

    async def download(self, request: web.Request) -> web.StreamResponse:
        task = self.registry.get(request.match_info["task_id"])
        path = self.registry.video_path(task) if task is not None else None
        if task is None or task.status is not TaskStatus.SUCCEEDED or path is None or not path.is_file():
            return error_response(404, "no finished video for this task (unknown, unfinished or expired)")
        if self._before_download is not None:
            await self._before_download(task.spec)
        return web.FileResponse(path, headers={"Content-Type": "video/mp4"})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "generator": self.registry.generator.name,
                "queue_depth": self.registry.queue_depth,
                "running": self.registry.running,
                "max_parallel": self.registry.max_parallel,
                "details": self.registry.generator.health(),
            }
        )

    async def _submit(self, request: web.Request, *, with_image: bool) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response(400, "the request body must be JSON")
        try:
            spec = parse_submission(body, with_image=with_image)
            self.registry.generator.validate(spec)
        except InvalidParameter as exc:
            return error_response(400, str(exc), code="invalid_parameter", param=exc.param)
        except InvalidRequest as exc:
            return error_response(400, str(exc), code="invalid_parameter")
        if self._before_submit is not None:
            try:
                self._before_submit(spec)
            except HTTPFault as fault:
                headers = (
                    {"Retry-After": str(math.ceil(fault.retry_after))}
                    if fault.retry_after is not None
                    else None
                )
                return error_response(fault.status, str(fault), headers=headers)
        task = self.registry.add(spec)
        return web.json_response({"task_id": task.id, "status": task.status.value})

    def _task_body(self, request: web.Request, task: ProviderTask) -> dict[str, Any]:
        body: dict[str, Any] = {
            "task_id": task.id,
            "status": task.status.value,
            "progress": round(task.progress, 4),
            "created_at": datetime.fromtimestamp(task.created_at, UTC).isoformat(),
        }
        if task.status is TaskStatus.SUCCEEDED:
            body["output"] = {"video_url": self._video_url(request, task.id)}
        elif task.status is TaskStatus.FAILED:
            body["error"] = task.error or "failed"
        return body

    def _video_url(self, request: web.Request, task_id: str) -> str:
        """An absolute link built from the Host the client used, so it works wherever the client
        reached us (127.0.0.1:PORT in tests, a compose service name, a public name behind a proxy)."""
        url = request.url.origin().with_path(f"{API_PREFIX}/files/{task_id}.mp4")
        return str(url.with_query(sig=self._signature(task_id)) if self._key else url)

    def _signature(self, task_id: str) -> str:
        return hmac.new(self._key.encode(), f"file:{task_id}".encode(), hashlib.sha256).hexdigest()


# ── request parsing ────────────────────────────────────────────────────────────────────────


def parse_submission(body: Any, *, with_image: bool) -> GenerationSpec:
    """Check a submit body against the contract and build the spec; raise ``InvalidParameter``.

    Limits that belong to the contract (duration, fps, field types) are checked here; what a
    particular generator can make (its sizes, its image types) is its own ``validate``'s job.
    """
    if not isinstance(body, dict):
        raise InvalidParameter("body", "the request body must be a JSON object")
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidParameter("parameters", "parameters must be a JSON object")
    if "model" in body and not isinstance(body["model"], str):
        raise InvalidParameter("model", "model must be a string")

    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidParameter("prompt", "prompt is required and must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidParameter("prompt", f"prompt is longer than {MAX_PROMPT_CHARS} characters")
    negative = params.get("negative_prompt", body.get("negative_prompt", ""))
    if not isinstance(negative, str) or len(negative) > MAX_PROMPT_CHARS:
        raise InvalidParameter(
            "negative_prompt", f"negative_prompt must be a string of at most {MAX_PROMPT_CHARS} characters"
        )

    duration = params.get("duration", DEFAULT_DURATION_S)
    if not _is_int(duration) or not 1 <= duration <= MAX_DURATION_S:
        raise InvalidParameter(
            "parameters.duration",
            f"parameters.duration must be a whole number of seconds from 1 to {MAX_DURATION_S}",
        )
    resolution_text = params.get("resolution", DEFAULT_RESOLUTION)
    try:
        resolution = Resolution.parse(resolution_text) if isinstance(resolution_text, str) else None
    except ValueError:
        resolution = None
    if resolution is None or resolution.width < 1 or resolution.height < 1:
        raise InvalidParameter("parameters.resolution", 'parameters.resolution must look like "1280x720"')
    fps = params.get("fps", DEFAULT_FPS)
    if not _is_int(fps) or fps not in ALLOWED_FPS:
        raise InvalidParameter(
            "parameters.fps", f"parameters.fps must be {' or '.join(map(str, ALLOWED_FPS))}"
        )
    seed = params.get("seed")
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)
    elif not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise InvalidParameter(
            "parameters.seed", f"parameters.seed must be a whole number from 0 to {MAX_SEED}"
        )

    image, mime = _parse_image(body.get("image"), with_image=with_image)
    end_image, end_mime = None, None
    if body.get("end_image") is not None:
        if not with_image:
            raise InvalidParameter("end_image", "end_image is only accepted by /video/image-to-video")
        end_image, end_mime = _parse_image(body["end_image"], with_image=True, field="end_image")
    return GenerationSpec(
        prompt=prompt,
        width=resolution.width,
        height=resolution.height,
        duration_s=duration,
        fps=fps,
        seed=seed,
        negative_prompt=negative,
        image=image,
        image_mime=mime,
        end_image=end_image,
        end_image_mime=end_mime,
        guidance_scale=_optional_number(params, "guidance_scale", 0.0, 50.0),
        num_inference_steps=_optional_steps(params),
        motion_strength=_optional_number(params, "motion_strength", 0.0, 1.0),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_number(params: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidParameter(
            f"parameters.{name}", f"parameters.{name} must be a number from {low:g} to {high:g}"
        )
    return float(value)


def _optional_steps(params: dict[str, Any]) -> int | None:
    steps = params.get("num_inference_steps")
    if steps is not None and (not _is_int(steps) or not 1 <= steps <= 200):
        raise InvalidParameter(
            "parameters.num_inference_steps",
            "parameters.num_inference_steps must be a whole number from 1 to 200",
        )
    return steps


def _parse_image(value: Any, *, with_image: bool, field: str = "image") -> tuple[bytes | None, str | None]:
    if not with_image:
        if value is not None:
            raise InvalidParameter(field, f"{field} is only accepted by /video/image-to-video")
        return None, None
    if value is None:
        raise InvalidParameter(field, f'{field} is required: "data:image/png;base64,..."')
    match = _DATA_URI.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise InvalidParameter(field, f'{field} must be a data URI such as "data:image/jpeg;base64,..."')
    mime, payload = match.groups()
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise InvalidParameter(field, f"{field} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
    try:
        data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter(field, f"{field} is not valid base64") from None
    if not data:
        raise InvalidParameter(field, f"{field} is empty")
    return data, mime.lower()
