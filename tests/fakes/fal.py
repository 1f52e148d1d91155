"""A fake of fal.ai's queue (``queue.fal.run``) and its CDN, over HTTPS on loopback.

Written from fal's public docs (docs.fal.ai "Queue", the fal-ai/wan-25-preview model pages) and
its Python client, so ``FalBackend`` is tested over real TLS and real HTTP:

- every queue call needs ``Authorization: Key <key>`` (else 401 with a ``detail``);
- ``POST /{endpoint id}`` answers ``request_id`` plus ``status_url``, ``response_url`` and
  ``cancel_url`` under the app id alone (``/fal-ai/wan-25-preview/requests/{id}/status``: the
  endpoint's sub-path is dropped, as fal does); the sub-path form answers 404;
- ``GET status_url`` walks IN_QUEUE (with ``queue_position``) -> IN_PROGRESS -> COMPLETED
  (with ``error`` for a failed request), ``logs`` when asked with ``?logs=1``;
- ``GET response_url`` gives ``{"video": {"url"}}``, a 422 ``{"detail": [{loc, msg, type}]}``
  for an input the model refuses (wan-25's schema: duration "5"/"10", resolution tiers,
  aspect ratios, prompt up to 800 characters, image sides 360–2000 px, no unknown field; Wan
  2.2 A14B's frame counts), or a 500 for a failed request;
- ``PUT cancel_url`` answers 202 ``CANCELLATION_REQUESTED`` while queued, 400 after;
- the clip comes from a second origin standing for fal.media, on an expiring URL, made from
  FFmpeg's lavfi sources as long as asked, with a sound track from wan-25 (it always makes
  sound) and without one from Wan 2.2;
- ``fal-ai/wan-flf2v`` (Wan 2.1 first-last-frame) needs ``start_image_url`` and
  ``end_image_url`` (sides 360–2000 px), ``num_frames`` 81–100, ``frames_per_second`` 5–24,
  resolution 480p/720p; its clip *honours the frames*: a crossfade from the start image to the
  end image at the tier's size in the start image's shape (divided by 8), silent, so a test
  finds the end image in the last decoded frame. The image fields' names, in the order
  received, are kept per request in ``frame_fields``.

Any route can be scripted ahead of these rules (``queue("status", Reply(429, ...))``), and the
fake counts submits per prompt, decodes images people sent, and records every request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import ssl
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Literal, Self

import trustme
from aiohttp import web
from multidict import CIMultiDict
from PIL import Image

from bot import outbound
from tests.clips import crossfade_clip, lavfi_clip
from tests.fakes.provider import Reply

Route = Literal["submit", "status", "result", "cancel", "video"]

KEY = "fal-key-id-0123:fal-key-secret-4567"

T2V = "fal-ai/wan-25-preview/text-to-video"
I2V = "fal-ai/wan-25-preview/image-to-video"

_COMMON = {"prompt", "negative_prompt", "audio_url", "resolution", "duration", "enable_prompt_expansion", "seed",
           "enable_safety_checker"}
A14B_T2V = "fal-ai/wan/v2.2-a14b/text-to-video"
A14B_I2V = "fal-ai/wan/v2.2-a14b/image-to-video"
_A14B = {"prompt", "negative_prompt", "seed", "resolution", "aspect_ratio", "num_frames", "frames_per_second",
         "num_inference_steps", "enable_safety_checker", "enable_prompt_expansion", "acceleration", "guidance_scale",
         "shift", "video_quality"}
_FIELDS = {T2V: _COMMON | {"aspect_ratio"}, I2V: _COMMON | {"image_url"}, A14B_T2V: _A14B,
           A14B_I2V: _A14B | {"image_url"}}
FLF2V = "fal-ai/wan-flf2v"
_FIELDS[FLF2V] = {"prompt", "negative_prompt", "start_image_url", "end_image_url", "num_frames", "frames_per_second",
                  "seed", "resolution", "num_inference_steps", "guide_scale", "shift", "enable_safety_checker",
                  "enable_prompt_expansion", "acceleration", "aspect_ratio"}
_IMAGE_ENDPOINTS = (I2V, A14B_I2V)
_TIER_AREA = {"480p": 832 * 480, "580p": 1024 * 576, "720p": 1280 * 720}


@dataclass(frozen=True)
class Recorded:
    route: Route
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    json: Any
    at: float


@dataclass
class FalRequest:
    """One queued request as the fake sees it."""

    id: str
    endpoint: str
    app: str
    input: dict[str, Any]
    polls: int = 0
    canceled: bool = False
    error: str | None = None
    image_size: tuple[int, int] | None = None
    image_bytes: int = 0
    refusal: list[dict[str, Any]] = field(default_factory=list)
    frames: tuple[bytes, bytes] | None = None
    """The decoded start and end images of a first-last-frame request."""
    images: list[tuple[int, int]] = field(default_factory=list)
    """Each image's size, in the order its field came."""


class FakeFal:
    """fal's queue on one HTTPS port of 127.0.0.1 and its CDN on another; see the module docstring.

    ``queue_polls`` status polls answer IN_QUEUE (the position counting down to 0), the next
    ``progress_polls`` IN_PROGRESS, then COMPLETED, unless ``hold()`` keeps every request
    IN_PROGRESS until ``release()``. A prompt containing one of ``fail_prompts`` completes with
    that error. Video URLs expire after ``url_ttl_s``.
    """

    def __init__(self, folder: Path, *, key: str = KEY, queue_polls: int = 2, progress_polls: int = 2,
                 url_ttl_s: float = 600.0) -> None:
        self.folder = folder
        self.key = key
        self.queue_polls = queue_polls
        self.progress_polls = progress_polls
        self.url_ttl_s = url_ttl_s
        self.fail_prompts: dict[str, str] = {}
        self.requests: list[Recorded] = []
        self.tasks: dict[str, FalRequest] = {}
        self.submits: Counter[str] = Counter()
        self.frame_fields: list[list[str]] = []
        """Per submit, the names of its image fields in the order sent."""
        self.ca = trustme.CA()
        self.ca_path = folder / "fal-ca.pem"
        self._queues: dict[Route, deque[Reply]] = {}
        self._held = False
        self._clips: dict[tuple[float, bool], bytes] = {}
        self._clip_lock = asyncio.Lock()
        self._runners: list[web.AppRunner] = []
        self._port = 0
        self._cdn_port = 0

    # -- what a test reads and scripts ---------------------------------------------------------

    @property
    def host(self) -> str:
        """What ``FAL_QUEUE_RUN_HOST`` is set to."""
        return f"127.0.0.1:{self._port}"

    @property
    def cdn_origin(self) -> str:
        return f"https://127.0.0.1:{self._cdn_port}"

    @property
    def cdn_host(self) -> str:
        """The fal.media stand-in's ``host:port``, for a bot subprocess's ``VIDEOBOT_ALLOWED_HOSTS``."""
        return f"127.0.0.1:{self._cdn_port}"

    def queue(self, route: Route, *replies: Reply) -> None:
        """Answer the next requests to ``route`` with ``replies``, before any rule applies."""
        self._queues.setdefault(route, deque()).extend(replies)

    def hold(self) -> None:
        self._held = True

    def release(self) -> None:
        self._held = False

    def requests_to(self, route: Route) -> list[Recorded]:
        return [r for r in self.requests if r.route == route]

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the fake's CA (for tests that build the backend in process)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)

        queue = web.Application(client_max_size=64 * 1024 * 1024)
        queue.add_routes([
            web.get("/{app:.+}/requests/{id}/status", self._recorded("status", self._status)),
            web.put("/{app:.+}/requests/{id}/cancel", self._recorded("cancel", self._cancel)),
            web.get("/{app:.+}/requests/{id}", self._recorded("result", self._result)),
            web.post("/{endpoint:.+}", self._recorded("submit", self._submit)),
        ])
        cdn = web.Application()
        cdn.add_routes([web.get("/files/{token}/{name}", self._recorded("video", self._video))])
        self._port = await self._serve(queue, server)
        self._cdn_port = await self._serve(cdn, server)
        # The fal.media stand-in is a public host to the bot: let this process's bot reach it.
        outbound.allow(self.cdn_host)
        return self

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _serve(self, app: web.Application, context: ssl.SSLContext) -> int:
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self._runners.append(runner)
        return runner.addresses[0][1]

    # -- routes --------------------------------------------------------------------------------

    def _recorded(self, route: Route, handler: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
            self.requests.append(Recorded(route, request.method, request.path, dict(request.query),
                                          CIMultiDict(request.headers), body, time.monotonic()))
            if route != "video" and request.headers.get("Authorization") != f"Key {self.key}":
                return web.json_response({"detail": "No user found for Key ID and Secret"}, status=401)
            scripted = self._queues.get(route)
            if scripted:
                reply = scripted.popleft()
                data = json.dumps(reply.json).encode() if reply.json is not None else reply.body
                return web.Response(status=reply.status, body=data, content_type=reply.content_type,
                                    headers=reply.headers)
            return await handler(request, body)

        return handle

    async def _submit(self, request: web.Request, body: Any) -> web.Response:
        endpoint = request.match_info["endpoint"]
        if endpoint not in _FIELDS:
            return web.json_response({"detail": f"Application '{endpoint}' not found"}, status=404)
        if not isinstance(body, dict):
            return web.json_response({"detail": "Body must be a JSON object"}, status=400)
        app = "/".join(endpoint.split("/")[:2])
        task = FalRequest(str(uuid.uuid4()), endpoint, app, body)
        self.tasks[task.id] = task
        self.submits[str(body.get("prompt", ""))] += 1
        self.frame_fields.append([key for key in body if key.endswith("image_url")])
        task.refusal = self._validate(task)
        for marker, error in self.fail_prompts.items():
            if marker in str(body.get("prompt", "")):
                task.error = error
        base = f"https://{self.host}/{app}/requests/{task.id}"
        return web.json_response({"request_id": task.id, "response_url": base, "status_url": f"{base}/status",
                                  "cancel_url": f"{base}/cancel", "queue_position": self.queue_polls})

    def _state(self, task: FalRequest) -> str:
        if task.canceled:
            return "COMPLETED"
        if task.polls <= self.queue_polls:
            return "IN_QUEUE"
        if self._held or task.polls <= self.queue_polls + self.progress_polls:
            return "IN_PROGRESS"
        return "COMPLETED"

    def _find(self, request: web.Request) -> FalRequest | None:
        task = self.tasks.get(request.match_info["id"])
        return task if task is not None and task.app == request.match_info["app"] else None

    async def _status(self, request: web.Request, body: Any) -> web.Response:
        task = self._find(request)
        if task is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        task.polls += 1
        state = self._state(task)
        base = f"https://{self.host}/{task.app}/requests/{task.id}"
        answer: dict[str, Any] = {"status": state, "request_id": task.id, "response_url": base,
                                  "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}
        logs = request.query.get("logs") in ("1", "true")
        if state == "IN_QUEUE":
            answer["queue_position"] = self.queue_polls - task.polls
        else:
            answer["logs"] = [{"message": "Generating video", "level": "INFO", "source": "user",
                               "timestamp": "2026-01-01T00:00:00Z"}] if logs else None
        if state == "COMPLETED":
            answer["metrics"] = {"inference_time": 1.5}
            error = "Request was cancelled" if task.canceled else task.error
            if error:
                answer["error"] = error
                answer["error_type"] = "request_cancelled" if task.canceled else "runner_error"
        return web.json_response(answer, status=200 if state == "COMPLETED" else 202)

    async def _result(self, request: web.Request, body: Any) -> web.Response:
        task = self._find(request)
        if task is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        if self._state(task) != "COMPLETED":
            return web.json_response({"detail": "Request is still in progress"}, status=400)
        if task.canceled:
            return web.json_response({"detail": "Request was cancelled"}, status=400)
        if task.error:
            return web.json_response({"detail": task.error}, status=500, headers={"X-Fal-Error-Type": "runner_error"})
        if task.refusal:
            return web.json_response({"detail": task.refusal}, status=422)
        size = len(await self._task_clip(task))
        expires = int(time.time() + self.url_ttl_s)
        url = f"{self.cdn_origin}/files/{task.id}/output.mp4?expires={expires}"
        return web.json_response({"video": {"url": url, "content_type": "video/mp4", "file_name": "output.mp4",
                                            "file_size": size},
                                  "seed": task.input.get("seed", 42), "actual_prompt": task.input.get("prompt")})

    async def _cancel(self, request: web.Request, body: Any) -> web.Response:
        task = self._find(request)
        if task is None:
            return web.json_response({"status": "NOT_FOUND"}, status=404)
        if self._state(task) != "IN_QUEUE":
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        task.canceled = True
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    async def _video(self, request: web.Request, body: Any) -> web.Response:
        expires = request.query.get("expires", "")
        if not expires.isdigit() or int(expires) < time.time():
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code>Request has expired</Error>",
                                content_type="application/xml")
        task = self.tasks.get(request.match_info["token"])
        if task is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=await self._task_clip(task), content_type="video/mp4")

    # -- the model -----------------------------------------------------------------------------

    def _validate(self, task: FalRequest) -> list[dict[str, Any]]:
        """What the endpoint's input schema refuses (wan-25's, or Wan 2.2 A14B's), as FastAPI's
        validation detail."""
        body, problems = task.input, []

        def refuse(name: str, msg: str, kind: str) -> None:
            problems.append({"loc": ["body", name], "msg": msg, "type": kind})

        for name in sorted(set(body) - _FIELDS[task.endpoint]):
            refuse(name, "Extra inputs are not permitted", "extra_forbidden")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            refuse("prompt", "Field required", "missing")
        elif len(prompt) > 800:
            refuse("prompt", "String should have at most 800 characters", "string_too_long")
        if task.endpoint == FLF2V:
            if not 81 <= int(body.get("num_frames", 81)) <= 100:
                refuse("num_frames", "Input should be between 81 and 100", "less_than_equal")
            if not 5 <= int(body.get("frames_per_second", 16)) <= 24:
                refuse("frames_per_second", "Input should be between 5 and 24", "less_than_equal")
            if body.get("resolution", "720p") not in ("480p", "720p"):
                refuse("resolution", "Input should be '480p' or '720p'", "enum")
            if body.get("aspect_ratio", "auto") not in ("auto", "16:9", "9:16", "1:1"):
                refuse("aspect_ratio", "Input should be 'auto', '16:9', '9:16' or '1:1'", "enum")
            decoded: list[bytes] = []
            for name in ("start_image_url", "end_image_url"):
                problem = self._image(task, body.get(name))
                if problem:
                    refuse(name, problem, "value_error")
                else:
                    task.images.append(task.image_size or (0, 0))
                    decoded.append(base64.b64decode(str(body[name]).split(";base64,", 1)[1]))
            if len(decoded) == 2:
                task.frames = (decoded[0], decoded[1])
                task.image_size = task.images[0]
        elif task.endpoint in (T2V, I2V):
            if body.get("duration", "5") not in ("5", "10"):
                refuse("duration", "Input should be '5' or '10'", "enum")
            if body.get("resolution", "1080p") not in ("480p", "720p", "1080p"):
                refuse("resolution", "Input should be '480p', '720p' or '1080p'", "enum")
            if "aspect_ratio" in body and body["aspect_ratio"] not in ("16:9", "9:16", "1:1"):
                refuse("aspect_ratio", "Input should be '16:9', '9:16' or '1:1'", "enum")
        else:
            if not 17 <= int(body.get("num_frames", 81)) <= 161:
                refuse("num_frames", "Input should be between 17 and 161", "less_than_equal")
            if not 4 <= int(body.get("frames_per_second", 16)) <= 60:
                refuse("frames_per_second", "Input should be between 4 and 60", "less_than_equal")
            if body.get("resolution", "720p") not in ("480p", "580p", "720p"):
                refuse("resolution", "Input should be '480p', '580p' or '720p'", "enum")
            if body.get("aspect_ratio", "auto") not in ("auto", "16:9", "9:16", "1:1"):
                refuse("aspect_ratio", "Input should be 'auto', '16:9', '9:16' or '1:1'", "enum")
        if task.endpoint in _IMAGE_ENDPOINTS:
            problem = self._image(task, body.get("image_url"))
            if problem:
                refuse("image_url", problem, "value_error")
        return problems

    def _image(self, task: FalRequest, url: object) -> str | None:
        if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
            return "Field required: a URL or base64 data URI of an image"
        try:
            data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
            with Image.open(BytesIO(data)) as image:
                image.load()
                task.image_size, task.image_bytes = image.size, len(data)
        except (binascii.Error, OSError, ValueError):
            return "The image could not be decoded"
        if not all(360 <= side <= 2000 for side in task.image_size):
            return f"Image sides must be 360–2000 px (got {task.image_size[0]}x{task.image_size[1]})"
        return None

    @staticmethod
    def _made(task: FalRequest) -> tuple[float, bool]:
        """How long the clip a request makes lasts, and whether it has sound (wan-25 always,
        Wan 2.2 never); A14B counts frames at a rate."""
        if task.endpoint in (T2V, I2V):
            return float(task.input.get("duration", "5")), True
        return int(task.input.get("num_frames", 81)) / int(task.input.get("frames_per_second", 16)), False

    async def _task_clip(self, task: FalRequest) -> bytes:
        """The request's clip: a crossfade between its frames (first-last-frame), else the stock one."""
        if task.frames is None:
            return await self._clip(*self._made(task))
        path = self.folder / f"fal-flf2v-{task.id}.mp4"
        if not path.exists():
            width, height = task.image_size or (16, 9)
            area = _TIER_AREA.get(str(task.input.get("resolution", "720p")), _TIER_AREA["720p"])
            out_h = (area / (width / height)) ** 0.5
            out_w = out_h * width / height
            seconds, _ = self._made(task)
            fps = int(task.input.get("frames_per_second", 16))
            await asyncio.to_thread(crossfade_clip, path, *task.frames, width=max(2, int(out_w) // 8 // 2 * 2),
                                    height=max(2, int(out_h) // 8 // 2 * 2), seconds=seconds, fps=fps)
        return path.read_bytes()

    async def _clip(self, seconds: float, sound: bool) -> bytes:
        """A small clip of ``seconds``, with a 440 Hz tone when ``sound``, made once per kind."""
        async with self._clip_lock:
            if (seconds, sound) not in self._clips:
                path = self.folder / f"fal-clip-{seconds:g}{'-sound' if sound else ''}.mp4"
                await asyncio.to_thread(lavfi_clip, path, f"testsrc2=s=160x96:r=24:d={seconds:g}",
                                        audio=f"sine=f=440:d={seconds:g}" if sound else None)
                self._clips[seconds, sound] = path.read_bytes()
            return self._clips[seconds, sound]

