"""A fake of Alibaba Model Studio's (DashScope's) video API, served by aiohttp on loopback.

Written from the public API reference, so ``DashScopeBackend`` is tested over real HTTP against
what DashScope does, not against what the backend expects:

- the real paths under ``/api/v1``: ``services/aigc/video-generation/video-synthesis`` (and
  ``services/aigc/image2video/video-synthesis`` for the ``kf2v`` first/last-frame models),
  ``tasks/{id}`` and ``tasks/{id}/cancel``;
- ``Authorization: Bearer <key>`` on every API call (401 ``InvalidApiKey`` otherwise) and
  ``X-DashScope-Async: enable`` on submits (403 ``AccessDenied``: HTTP calls must be async);
- each body checked against the model table: text-to-video's ``parameters.size`` as
  ``"W*H"`` among the model's sizes, image-to-video's ``parameters.resolution`` among its tiers,
  ``duration`` among its lengths (wan2.5 only 5 or 10), ``img_url`` a data URI of a JPEG, PNG,
  WEBP or BMP of 360–2000 px a side and at most 10 MB (its size is recorded);
- the ``kf2v`` models need ``input.first_frame_url`` and take ``input.last_frame_url`` (same
  rules); ``last_frame_url`` anywhere else is refused. Given both, the clip *honours the frames*:
  it opens on the first image and ends on the last, a crossfade at the output size (the first
  image's shape; the last is centre-cropped to it), so a test finds its end image in the last
  decoded frame. The input fields' names, in the order received, are kept in ``frame_fields``;
- ``parameters.shot_type`` (``"single"`` / ``"multi"``) only on the multi-shot models (Wan
  2.6), and ``"multi"`` only with ``prompt_extend: true`` (DashScope splits shots while
  rewriting the prompt); otherwise 400 ``InvalidParameter``;
  refusals are 400 ``{code, message, request_id}``;
- tasks go PENDING → RUNNING → SUCCEEDED one poll at a time (``busy`` keeps them PENDING,
  ``hold`` keeps them RUNNING);
  ``fail_next`` makes the next task end FAILED with a code and message; cancel works only
  while PENDING (else 400 ``UnsupportedOperation``); an unknown id polls as UNKNOWN;
- ``output.video_url`` is a signed OSS-style link on another port (another origin) whose ``Expires`` is
  checked (expired: 403, as OSS answers); the clip is an h264 mp4 with an AAC tone when the
  model makes sound and ``audio`` was not false, at the asked duration and at the asked size
  divided by ``shrink`` (8 unless a test needs the real size), made from FFmpeg's lavfi sources;
- ``queue(route, Reply(...))`` scripts the next answers of a route (a 429 ``Throttling`` with
  ``Retry-After``, a 500); every request is recorded with its arrival time, and submits are
  counted per prompt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import itertools
import json
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from aiohttp import web
from multidict import CIMultiDict
from PIL import Image

from bot import outbound
from bot.catalog import MODELS, TIER_SIZES
from bot.models import Mode
from tests.clips import crossfade_clip, lavfi_clip

Route = Literal["t2v", "i2v", "kf2v", "poll", "cancel", "video"]

KEY = "sk-fake-dashscope-0123456789abcdef"
_OSS_SECRET = b"fake-oss-signing-secret"
_IMAGE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
_DASHSCOPE_MODELS = {name for name in MODELS if name.startswith(("wan2.", "wanx2."))}


@dataclass(frozen=True)
class Reply:
    """One scripted answer: ``json`` as the body, with ``status`` and ``headers``."""

    status: int = 200
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


def throttled(retry_after: str = "0.3") -> Reply:
    """DashScope's answer past a rate limit."""
    return Reply(429, {"code": "Throttling.RateQuota", "message": "Requests rate limit exceeded, please try again later.",
                       "request_id": str(uuid.uuid4())}, {"Retry-After": retry_after})


@dataclass(frozen=True)
class RecordedRequest:
    route: Route
    method: str
    path: str
    headers: CIMultiDict[str]
    json: Any
    at: float


@dataclass
class Task:
    id: str
    model: str
    prompt: str
    width: int
    height: int
    duration: int
    audio: bool
    status: str = "PENDING"
    polls: int = 0
    failure: tuple[str, str] | None = None
    image_size: tuple[int, int] | None = None
    frames: tuple[bytes, bytes] | None = None
    """The first and last images as received, for a first-and-last-frame task."""


class FakeDashScope:
    """DashScope's video API on an ephemeral port of 127.0.0.1; see the module docstring."""

    def __init__(self, clips_dir: Path, *, key: str = KEY, shrink: int = 8, url_ttl_s: float = 3600.0) -> None:
        self.clips_dir = clips_dir
        self.key = key
        self.shrink = shrink
        self.url_ttl_s = url_ttl_s
        self.hold = False
        """True: tasks stay RUNNING until a test sets it back to False."""
        self.busy = False
        """True: tasks stay PENDING (the account's two task slots are taken), so they can be canceled."""
        self.requests: list[RecordedRequest] = []
        self.tasks: dict[str, Task] = {}
        self.submits: Counter[str] = Counter()
        """Accepted submits per prompt."""
        self.images: list[tuple[int, int, int, str]] = []
        """Each received image: width, height, bytes, mime."""
        self.frame_fields: list[list[str]] = []
        """Per accepted image submit, the names of its ``input`` image fields in the order sent."""
        self._queues: dict[Route, deque[Reply]] = {}
        self._failures: deque[tuple[str, str]] = deque()
        self._clips: dict[tuple[int, int, int, bool], Path] = {}
        self._clip_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._oss_port = 0

    # -- what tests use -------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def oss_origin(self) -> str:
        """Where results are served from: another port, so another origin, as OSS is."""
        return f"http://127.0.0.1:{self._oss_port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/api/v1"

    @property
    def cdn_host(self) -> str:
        """The bucket's ``host:port``, for a bot subprocess's ``VIDEOBOT_ALLOWED_HOSTS``."""
        return f"127.0.0.1:{self._oss_port}"

    def queue(self, route: Route, *replies: Reply) -> None:
        """Answer the next requests to ``route`` with ``replies``, in order, before any check."""
        self._queues.setdefault(route, deque()).extend(replies)

    def fail_next(self, code: str, message: str) -> None:
        """The next task accepted ends FAILED with this ``code`` and ``message``."""
        self._failures.append((code, message))

    def requests_to(self, route: Route) -> list[RecordedRequest]:
        return [r for r in self.requests if r.route == route]

    async def start(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes(
            [
                web.post("/api/v1/services/aigc/video-generation/video-synthesis", self._handler("t2v", self._submit)),
                web.post("/api/v1/services/aigc/image2video/video-synthesis", self._handler("kf2v", self._submit)),
                web.get("/api/v1/tasks/{task_id}", self._handler("poll", self._poll)),
                web.post("/api/v1/tasks/{task_id}/cancel", self._handler("cancel", self._cancel)),
                web.get("/oss/dashscope-result/{name}", self._handler("video", self._video)),
            ]
        )
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()  # the "OSS" bucket: another origin
        self._port = self._runner.addresses[0][1]
        self._oss_port = self._runner.addresses[1][1]
        # The bucket stands in for a public host: let this process's bot reach it.
        outbound.allow(self.cdn_host)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the API ----------------------------------------------------------------------------

    def _handler(
        self, route: Route, answer: Callable[[web.Request, Any], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            recorded = route
            if route == "t2v" and isinstance(body, dict) and isinstance(body.get("input"), dict) and (
                "img_url" in body["input"]
            ):
                recorded = "i2v"
            self.requests.append(
                RecordedRequest(recorded, request.method, request.path, CIMultiDict(request.headers), body, time.monotonic())
            )
            queued = self._queues.get(recorded)
            if queued:
                reply = queued.popleft()
                return web.json_response(reply.json, status=reply.status, headers=reply.headers)
            on_oss = request.url.port == self._oss_port
            if (route == "video") != on_oss:
                return _error(404, "NotFound", "no such path on this host")
            if route != "video" and request.headers.get("Authorization") != f"Bearer {self.key}":
                return _error(401, "InvalidApiKey", "Invalid API-key provided.")
            return await answer(request, body)

        return handle

    async def _submit(self, request: web.Request, body: Any) -> web.StreamResponse:
        if request.headers.get("X-DashScope-Async") != "enable":
            return _error(403, "AccessDenied", "current user api does not support synchronous calls")
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return _error(400, "InvalidParameter", "input is required")
        name = body.get("model")
        if name not in _DASHSCOPE_MODELS:
            return _error(400, "InvalidParameter", f"Model not exist: {name}")
        model = MODELS[name]
        keyframes = "kf2v" in name
        if keyframes != request.path.endswith("image2video/video-synthesis"):
            return _error(400, "InvalidParameter", f"url error, please check url! ({name} is not served here)")
        inputs: dict[str, Any] = body["input"]
        parameters: dict[str, Any] = body.get("parameters") or {}
        prompt = inputs.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return _error(400, "InvalidParameter", "Field required: input.prompt")
        if any(word in prompt.lower() for word in ("forbidden", "gore")):
            return _error(400, "DataInspectionFailed", "Input data may contain inappropriate content.")
        duration = parameters.get("duration", 5)
        if not isinstance(duration, int) or not model.durations.accepts(duration):
            return _error(400, "InvalidParameter", f"The duration parameter is invalid: {name} supports "
                          f"{model.durations.describe()}, got {duration!r}")
        image_key = "first_frame_url" if keyframes else "img_url"
        image_size: tuple[int, int] | None = None
        frames: tuple[bytes, bytes] | None = None
        if "last_frame_url" in inputs and not keyframes:
            return _error(400, "InvalidParameter", f"{name} does not take last_frame_url; use a kf2v model")
        shot_type = parameters.get("shot_type")
        if shot_type is not None:
            if shot_type not in ("single", "multi") or not model.multi_shot:
                return _error(400, "InvalidParameter", f"The shot_type parameter is invalid for {name}: {shot_type!r}")
            if shot_type == "multi" and parameters.get("prompt_extend", True) is not True:
                return _error(400, "InvalidParameter", "shot_type multi requires prompt_extend to be true")
        if Mode.IMAGE_TO_VIDEO in model.modes:
            if "size" in parameters:
                return _error(400, "InvalidParameter", "size is not supported for image-to-video; use resolution")
            tier = str(parameters.get("resolution", "1080P"))
            if tier.lower() not in model.tiers or tier != tier.upper():
                return _error(400, "InvalidParameter", f"The resolution parameter is invalid: {tier!r}")
            checked = self._image(inputs.get(image_key))
            if isinstance(checked, web.Response):
                return checked
            image_size = checked
            if "last_frame_url" in inputs:
                last = self._image(inputs.get("last_frame_url"))
                if isinstance(last, web.Response):
                    return last
                frames = (_decoded(inputs[image_key]), _decoded(inputs["last_frame_url"]))
            self.frame_fields.append([key for key in inputs if key.endswith("_url")])
            width, height = _following(image_size, tier.lower())
        else:
            if "resolution" in parameters or image_key in inputs:
                return _error(400, "InvalidParameter", f"{name} takes size, not resolution or an image")
            size = str(parameters.get("size", "1920*1080"))
            sizes = {f"{s.width}*{s.height}" for s in model.sizes()}
            if size not in sizes:
                return _error(400, "InvalidParameter", f"The size parameter is invalid: {size!r}")
            width, height = (int(v) for v in size.split("*"))
        audio = model.audio and parameters.get("audio", True) is not False
        task = Task(uuid.uuid4().hex, name, prompt, width, height, duration, audio, image_size=image_size,
                    frames=frames)
        if self._failures:
            task.failure = self._failures.popleft()
        self.tasks[task.id] = task
        self.submits[prompt] += 1
        return web.json_response({"output": {"task_status": "PENDING", "task_id": task.id},
                                  "request_id": str(uuid.uuid4())})

    def _image(self, value: object) -> tuple[int, int] | web.Response:
        if not isinstance(value, str) or not value.startswith("data:") or ";base64," not in value:
            return _error(400, "InvalidParameter", "img_url must be a URL or a base64 data URI")
        header, encoded = value.split(";base64,", 1)
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return _error(400, "InvalidParameter", "img_url is not valid base64")
        if len(data) > 10 * 1024 * 1024:
            return _error(400, "InvalidParameter", "The image is larger than 10MB.")
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height, kind = image.width, image.height, image.format
        except OSError:
            return _error(400, "InvalidParameter", "The image cannot be decoded.")
        if kind not in _IMAGE_FORMATS or header != f"data:{_IMAGE_FORMATS[kind]}":
            return _error(400, "InvalidParameter", f"Unsupported image format {kind} (declared {header[5:]}).")
        self.images.append((width, height, len(data), _IMAGE_FORMATS[kind]))
        if not (360 <= width <= 2000 and 360 <= height <= 2000):
            return _error(400, "InvalidParameter", f"The image resolution {width}x{height} is out of [360, 2000].")
        return width, height

    async def _poll(self, request: web.Request, body: Any) -> web.StreamResponse:
        task = self.tasks.get(request.match_info["task_id"])
        request_id = str(uuid.uuid4())
        if task is None:
            return web.json_response({"request_id": request_id,
                                      "output": {"task_id": request.match_info["task_id"], "task_status": "UNKNOWN"}})
        task.polls += 1
        if task.status == "PENDING" and not self.busy:
            task.status = "RUNNING"
        elif task.status == "RUNNING" and not self.hold:
            task.status = "FAILED" if task.failure else "SUCCEEDED"
        output: dict[str, Any] = {"task_id": task.id, "task_status": task.status,
                                  "submit_time": "2026-12-02 01:30:00.000"}
        if task.status == "SUCCEEDED":
            output |= {"video_url": self._signed_url(task), "orig_prompt": task.prompt, "actual_prompt": task.prompt}
            return web.json_response({"request_id": request_id, "output": output,
                                      "usage": {"video_duration": task.duration, "video_count": 1, "SR": task.height}})
        if task.status == "FAILED" and task.failure:
            output |= {"code": task.failure[0], "message": task.failure[1]}
        return web.json_response({"request_id": request_id, "output": output})

    async def _cancel(self, request: web.Request, body: Any) -> web.StreamResponse:
        task = self.tasks.get(request.match_info["task_id"])
        if task is None:
            return _error(404, "NotFound", "task not found")
        if task.status != "PENDING":
            return _error(400, "UnsupportedOperation", "Failed to cancel the task, please confirm if the task status is PENDING.")
        task.status = "CANCELED"
        return web.json_response({"request_id": str(uuid.uuid4())})

    async def _video(self, request: web.Request, body: Any) -> web.StreamResponse:
        name = request.match_info["name"]
        task = self.tasks.get(name.removesuffix(".mp4"))
        expires = request.query.get("Expires", "")
        signature = request.query.get("Signature", "")
        if task is None or not expires.isdigit() or not hmac.compare_digest(signature, _sign(name, expires)):
            return web.Response(status=403, text=_oss_error("SignatureDoesNotMatch", "The request signature we calculated does not match."),
                                content_type="application/xml")
        if int(expires) < time.time():
            return web.Response(status=403, text=_oss_error("AccessDenied", "Request has expired."),
                                content_type="application/xml")
        path = await self._clip(task)
        return web.Response(body=path.read_bytes(), content_type="video/mp4")

    def _signed_url(self, task: Task) -> str:
        name = f"{task.id}.mp4"
        expires = str(int(time.time() + self.url_ttl_s))
        return (f"{self.oss_origin}/oss/dashscope-result/{name}?Expires={expires}"
                f"&OSSAccessKeyId=LTAI5tFakeAccessKey&Signature={_sign(name, expires)}")

    async def _clip(self, task: Task) -> Path:
        width = max(2, task.width // self.shrink // 2 * 2)
        height = max(2, task.height // self.shrink // 2 * 2)
        if task.frames is not None:
            path = self.clips_dir / f"kf2v-{task.id}.mp4"
            if not path.exists():
                self.clips_dir.mkdir(parents=True, exist_ok=True)
                await asyncio.to_thread(
                    crossfade_clip, path, *task.frames, width=width, height=height, seconds=task.duration,
                    tone_hz=440 if task.audio else None,
                )
            return path
        key = (width, height, task.duration, task.audio)
        async with self._clip_lock:
            if key not in self._clips:
                self.clips_dir.mkdir(parents=True, exist_ok=True)
                path = self.clips_dir / f"clip-{next(_numbers)}.mp4"
                sound = f"sine=f=440:d={task.duration}" if task.audio else None
                self._clips[key] = await asyncio.to_thread(
                    lavfi_clip, path, f"testsrc2=s={width}x{height}:r=24:d={task.duration}", audio=sound
                )
        return self._clips[key]


_numbers = itertools.count(1)


def _following(image: tuple[int, int], tier: str) -> tuple[int, int]:
    """The output size for an image: the tier's area at the image's aspect, sides even."""
    area = TIER_SIZES[tier]["16:9"].width * TIER_SIZES[tier]["16:9"].height
    ratio = image[0] / image[1]
    height = (area / ratio) ** 0.5
    return int(height * ratio) // 2 * 2, int(height) // 2 * 2


def _decoded(data_uri: str) -> bytes:
    return base64.b64decode(data_uri.split(";base64,", 1)[1])


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message, "request_id": str(uuid.uuid4())}, status=status)


def _sign(name: str, expires: str) -> str:
    return hashlib.sha1(_OSS_SECRET + f"{name}:{expires}".encode()).hexdigest()[:24]


def _oss_error(code: str, message: str) -> str:
    return f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
