"""A fake of Replicate's HTTP API for the Wan official models, served by aiohttp on loopback.

Written from Replicate's public HTTP reference: a Bearer token on every API call (401
problem+json without it), ``POST /v1/models/{owner}/{name}/predictions`` answering 201 with a
prediction object (``id``, ``status``, ``urls.get``/``urls.cancel``, ``output``, ``error``,
``logs``), ``GET /v1/predictions/{id}`` moving it ``starting → processing → succeeded``,
``POST /v1/predictions/{id}/cancel``, and the Files API (``POST /v1/files`` multipart, field
``content``; its ``urls.get`` serves the bytes, with the token only). Refused inputs are 422
problem+json naming the field, as Replicate's are. Outputs are served from a second origin, like
replicate.delivery, and vanish ``output_ttl_s`` after the prediction finished (404 there, and
the prediction then shows ``data_removed`` with no output).

The fake is stricter than Replicate in one way: an input field the model's schema does not
declare is refused, so a backend that sends one fails here.

Clips are real mp4s with a sound track (``lavfi_clip``) lasting the asked duration. Prompt
markers script a prediction: ``[replicate:fail]`` ends it as failed with an ``error``,
``[replicate:hold]`` keeps it processing until ``release()``. Tests can also queue ``Reply``
answers ("429 with Retry-After") before the fake's own, for ``create``, ``get``, ``cancel``,
``upload`` and ``output``.

    async with FakeReplicate(tmp_path) as fake:
        backend = ReplicateBackend(TOKEN, base_url=fake.base_url)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from aiohttp import web
from multidict import CIMultiDict
from PIL import Image

from bot import outbound
from tests.clips import lavfi_clip
from tests.fakes.provider import Reply

TOKEN = "r8_FakeReplicateToken0123456789abcdefABCD"

Route = Literal["create", "get", "cancel", "upload", "file", "output"]

T2V_INPUTS = frozenset({"prompt", "negative_prompt", "size", "duration", "seed", "audio", "enable_prompt_expansion"})
I2V_INPUTS = frozenset(
    {"prompt", "image", "negative_prompt", "resolution", "duration", "seed", "audio", "enable_prompt_expansion"}
)
MODELS: dict[str, frozenset[str]] = {"wan-video/wan-2.5-t2v": T2V_INPUTS, "wan-video/wan-2.5-i2v": I2V_INPUTS}
SIZES = frozenset(
    {"832*480", "480*832", "624*624", "1280*720", "720*1280", "960*960", "1088*832", "832*1088",
     "1920*1080", "1080*1920", "1440*1440", "1632*1248", "1248*1632"}
)
RESOLUTIONS = ("480p", "720p", "1080p")
DURATIONS = (5, 10)
CLIP_SIZE = (160, 96)


@dataclass
class Prediction:
    id: str
    model: str
    input: dict[str, Any]
    status: str = "starting"
    polls: int = 0
    logs: str = ""
    output: str | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    completed_at: float | None = None
    image_size: tuple[int, int] | None = None
    """The pixel size of the image the prediction received (image-to-video)."""


@dataclass(frozen=True)
class Recorded:
    route: Route
    method: str
    path: str
    headers: CIMultiDict[str]
    json: Any
    at: float


@dataclass
class StoredFile:
    id: str
    name: str
    content_type: str
    data: bytes


class FakeReplicate:
    """Replicate's API on one loopback port and its delivery host on another; see the docstring."""

    def __init__(self, clips_dir: Path, *, token: str = TOKEN, polls_to_finish: int = 2,
                 output_ttl_s: float = 3600.0) -> None:
        self.token = token
        self.polls_to_finish = polls_to_finish
        self.output_ttl_s = output_ttl_s
        self.clips_dir = clips_dir
        self.requests: list[Recorded] = []
        self.predictions: dict[str, Prediction] = {}
        self.files: dict[str, StoredFile] = {}
        self.creates: Counter[str] = Counter()
        """How many predictions were created per prompt."""
        self.delivery_auth: list[str | None] = []
        """The Authorization header of every request to the delivery host (None when absent)."""
        self._queues: dict[Route, deque[Reply]] = {}
        self._clips: dict[int, bytes] = {}
        self._clip_lock = asyncio.Lock()
        self._released = asyncio.Event()
        self._runners: list[web.AppRunner] = []
        self._api_port = 0
        self._delivery_port = 0

    # -- what tests use ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._api_port}"

    @property
    def delivery_origin(self) -> str:
        return f"http://127.0.0.1:{self._delivery_port}"

    @property
    def cdn_host(self) -> str:
        """The replicate.delivery stand-in's ``host:port``, for a bot subprocess's ``VIDEOBOT_ALLOWED_HOSTS``."""
        return f"127.0.0.1:{self._delivery_port}"

    def queue(self, route: Route, *replies: Reply) -> None:
        """Answer the next requests to ``route`` with ``replies`` (after the auth check), in order."""
        self._queues.setdefault(route, deque()).extend(replies)

    def requests_to(self, route: Route) -> list[Recorded]:
        return [r for r in self.requests if r.route == route]

    def release(self) -> None:
        """Let ``[replicate:hold]`` predictions finish."""
        self._released.set()

    def expire(self, prediction_id: str) -> None:
        """Delete a finished prediction's output now, as Replicate does after an hour."""
        prediction = self.predictions[prediction_id]
        prediction.completed_at = time.time() - self.output_ttl_s - 1

    def only(self) -> Prediction:
        [prediction] = self.predictions.values()
        return prediction

    async def start(self) -> Self:
        api = web.Application(client_max_size=64 * 1024 * 1024)
        api.add_routes(
            [
                web.post("/v1/models/{owner}/{name}/predictions", self._create),
                web.get("/v1/predictions/{id}", self._get),
                web.post("/v1/predictions/{id}/cancel", self._cancel),
                web.post("/v1/files", self._upload),
                web.get("/v1/files/{id}/download", self._file),
            ]
        )
        delivery = web.Application()
        delivery.add_routes([web.get("/pbxt/{id}/output.mp4", self._output)])
        self._api_port = await self._serve(api)
        self._delivery_port = await self._serve(delivery)
        # The replicate.delivery stand-in is a public host to the bot: let this process's bot reach it.
        outbound.allow(self.cdn_host)
        return self

    async def stop(self) -> None:
        self._released.set()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- API routes ----------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await self._record("create", request)
        if (refusal := self._refuse(request, "create")) is not None:
            return refusal
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        if model not in MODELS:
            return _problem(404, "Not found", f"Model {model} does not exist or is not an official model.")
        inputs = body.get("input") if isinstance(body, dict) else None
        if not isinstance(inputs, dict):
            return _problem(422, "Input validation failed", "- input: Invalid type. Expected: object, given: null")
        problems = self._check_input(model, inputs)
        if problems:
            return _problem(422, "Input validation failed", "\n".join(f"- input.{f}: {m}" for f, m in problems),
                            invalid_fields=[{"type": "invalid", "field": f"input.{f}", "description": m}
                                            for f, m in problems])
        prediction = Prediction(id=_prediction_id(), model=model, input=inputs)
        if "image" in inputs:
            prediction.image_size = self._image_size(str(inputs["image"]))
            if prediction.image_size is None:
                return _problem(422, "Input validation failed", "- input.image: could not read the image")
        self.predictions[prediction.id] = prediction
        self.creates[str(inputs.get("prompt", ""))] += 1
        return web.json_response(self._view(prediction), status=201)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        await self._record("get", request)
        if (refusal := self._refuse(request, "get")) is not None:
            return refusal
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        await self._advance(prediction)
        return web.json_response(self._view(prediction))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        await self._record("cancel", request)
        if (refusal := self._refuse(request, "cancel")) is not None:
            return refusal
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        if prediction.status in ("starting", "processing"):
            prediction.status = "canceled"
            prediction.completed_at = time.time()
        return web.json_response(self._view(prediction))

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        await self._record("upload", request, read_json=False)
        if (refusal := self._refuse(request, "upload")) is not None:
            return refusal
        if not request.content_type.startswith("multipart/form-data"):
            return _problem(400, "Bad request", "Expected a multipart/form-data body with a 'content' part.")
        stored: StoredFile | None = None
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if getattr(part, "name", None) == "content":
                data = await part.read()  # type: ignore[union-attr]
                stored = StoredFile(
                    id=secrets.token_hex(8), name=part.filename or "file",  # type: ignore[union-attr]
                    content_type=part.headers.get("Content-Type", "application/octet-stream"), data=bytes(data),
                )
        if stored is None:
            return _problem(422, "Input validation failed", "- content: a file is required")
        self.files[stored.id] = stored
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return web.json_response(
            {
                "id": stored.id, "name": stored.name, "content_type": stored.content_type,
                "size": len(stored.data), "etag": stored.id, "checksums": {}, "metadata": {},
                "created_at": now, "expires_at": None,
                "urls": {"get": f"{self.base_url}/v1/files/{stored.id}/download"},
            },
            status=201,
        )

    async def _file(self, request: web.Request) -> web.StreamResponse:
        await self._record("file", request)
        if (refusal := self._refuse(request, "file")) is not None:
            return refusal
        stored = self.files.get(request.match_info["id"])
        if stored is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        return web.Response(body=stored.data, content_type=stored.content_type)

    # -- delivery host -------------------------------------------------------------------------

    async def _output(self, request: web.Request) -> web.StreamResponse:
        await self._record("output", request)
        self.delivery_auth.append(request.headers.get("Authorization"))
        queued = self._queues.get("output")
        if queued:
            return _answer(queued.popleft())
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None or prediction.output is None or self._expired(prediction):
            return web.Response(status=404, text="Not Found")
        body = await self._clip(int(prediction.input.get("duration", 5)))
        return web.Response(body=body, content_type="video/mp4")

    # -- behaviour -----------------------------------------------------------------------------

    async def _record(self, route: Route, request: web.Request, *, read_json: bool = True) -> Any:
        body: Any = None
        if read_json:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw
        self.requests.append(Recorded(route, request.method, request.path, CIMultiDict(request.headers), body,
                                      time.monotonic()))
        return body

    def _refuse(self, request: web.Request, route: Route) -> web.StreamResponse | None:
        """401 without our token; else the next scripted reply for ``route``, if any."""
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        queued = self._queues.get(route)
        return _answer(queued.popleft()) if queued else None

    def _check_input(self, model: str, inputs: dict[str, Any]) -> list[tuple[str, str]]:
        problems = [(k, "Additional property is not allowed") for k in sorted(set(inputs) - MODELS[model])]
        if not isinstance(inputs.get("prompt"), str) or not inputs["prompt"]:
            problems.append(("prompt", "prompt is required"))
        duration = inputs.get("duration", 5)
        if duration not in DURATIONS:
            problems.append(("duration", "duration must be one of the following: 5, 10"))
        if "size" in inputs and inputs["size"] not in SIZES:
            problems.append(("size", f"size must be one of the following: {', '.join(sorted(SIZES))}"))
        if "resolution" in inputs and inputs["resolution"] not in RESOLUTIONS:
            problems.append(("resolution", "resolution must be one of the following: 480p, 720p, 1080p"))
        if model.endswith("i2v") and "image" not in inputs:
            problems.append(("image", "image is required"))
        if "seed" in inputs and not isinstance(inputs["seed"], int):
            problems.append(("seed", "Invalid type. Expected: integer"))
        return problems

    def _image_size(self, ref: str) -> tuple[int, int] | None:
        """Open the image a prediction was given (a data: URI or one of our files' URLs)."""
        data: bytes | None = None
        if ref.startswith("data:") and ";base64," in ref:
            try:
                data = base64.b64decode(ref.split(";base64,", 1)[1], validate=True)
            except (binascii.Error, ValueError):
                return None
        prefix = f"{self.base_url}/v1/files/"
        if ref.startswith(prefix):
            stored = self.files.get(ref.removeprefix(prefix).split("/", 1)[0])
            data = stored.data if stored else None
        if data is None:
            return None
        try:
            with Image.open(io.BytesIO(data)) as image:
                return image.size
        except OSError:
            return None

    async def _advance(self, prediction: Prediction) -> None:
        """One poll's worth of progress: starting, then processing, then the end."""
        if prediction.status not in ("starting", "processing"):
            return
        prediction.polls += 1
        prompt = str(prediction.input.get("prompt", ""))
        if prediction.status == "starting":
            prediction.status = "processing"
            prediction.logs = "Generating video...\n  0%|          | 0/40\n"
            return
        if "[replicate:hold]" in prompt and not self._released.is_set():
            prediction.logs += "  50%|█████     | 20/40\n"
            return
        if prediction.polls < self.polls_to_finish:
            prediction.logs += "  50%|█████     | 20/40\n"
            return
        prediction.completed_at = time.time()
        if "[replicate:fail]" in prompt:
            prediction.status = "failed"
            prediction.error = "The input or output was flagged as sensitive. Please try again with different inputs."
            return
        await self._clip(int(prediction.input.get("duration", 5)))
        prediction.logs += " 100%|██████████| 40/40\n"
        prediction.output = f"{self.delivery_origin}/pbxt/{prediction.id}/output.mp4"
        prediction.status = "succeeded"

    def _expired(self, prediction: Prediction) -> bool:
        return prediction.completed_at is not None and time.time() - prediction.completed_at > self.output_ttl_s

    def _view(self, prediction: Prediction) -> dict[str, Any]:
        removed = prediction.output is not None and self._expired(prediction)
        return {
            "id": prediction.id,
            "model": prediction.model,
            "version": "hidden",
            "input": prediction.input,
            "logs": prediction.logs,
            "output": None if removed else prediction.output,
            "data_removed": removed,
            "error": prediction.error,
            "status": prediction.status,
            "source": "api",
            "created_at": _iso(prediction.created_at),
            "completed_at": _iso(prediction.completed_at) if prediction.completed_at else None,
            "urls": {
                "get": f"{self.base_url}/v1/predictions/{prediction.id}",
                "cancel": f"{self.base_url}/v1/predictions/{prediction.id}/cancel",
                "web": f"https://replicate.com/p/{prediction.id}",
            },
        }

    async def _clip(self, duration: int) -> bytes:
        """A real mp4 of ``duration`` seconds with sound, made once per duration."""
        async with self._clip_lock:
            if duration not in self._clips:
                path = self.clips_dir / f"replicate-{duration}s.mp4"
                width, height = CLIP_SIZE
                await asyncio.to_thread(
                    lavfi_clip, path, f"testsrc2=s={width}x{height}:r=24:d={duration}",
                    audio=f"sine=f=440:d={duration}",
                )
                self._clips[duration] = path.read_bytes()
            return self._clips[duration]

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runners.append(runner)
        return int(runner.addresses[0][1])


def _problem(status: int, title: str, detail: str, **extra: Any) -> web.Response:
    body = {"type": "about:blank", "title": title, "detail": detail, "status": status, **extra}
    return web.Response(status=status, text=json.dumps(body), content_type="application/problem+json")


def _answer(reply: Reply) -> web.Response:
    body = json.dumps(reply.json).encode() if reply.json is not None else reply.body
    return web.Response(status=reply.status, body=body, content_type=reply.content_type, headers=reply.headers)


def _prediction_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(26))


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1e6):06d}Z"
