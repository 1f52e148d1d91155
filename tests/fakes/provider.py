"""A scriptable fake of the video provider's REST contract, served by aiohttp on loopback.

Tests exercise ``HttpBackend`` over real HTTP against it rather than patching httpx. Each route
answers from a queue of ``Reply`` objects the test lines up ("429, then 500, then OK") and falls
back to a sensible default; every request is recorded with its arrival time, so a test can check
what was sent and how long the client waited between tries.

    async with FakeProvider() as provider:
        provider.queue("t2v", Reply(429, headers={"Retry-After": "0.2"}), Reply(500))
        backend = HttpBackend(provider.base_url, "key")
        ...
        assert len(provider.requests_to("t2v")) == 3
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from aiohttp import web
from multidict import CIMultiDict

Route = Literal["t2v", "i2v", "poll", "cancel", "video"]

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    ``json`` is sent as a JSON body when set, else ``body`` as ``content_type``. ``hang`` never
    answers (until the fake stops), to make the client time out. ``stream`` sends the body in
    chunks without a Content-Length (unless ``declared_length`` states one), and ``stall`` then
    keeps the response open instead of finishing it, so a client that waits for the end would
    time out while one that stops reading early does not. ``trickle_s`` streams the body one byte
    at a time, that many seconds apart: a download that never quite stops.
    """

    status: int = 200
    json: Any = None
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    hang: bool = False
    stream: bool = False
    declared_length: int | None = None
    stall: bool = False
    trickle_s: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    route: Route
    method: str
    path: str
    headers: CIMultiDict[str]
    json: Any
    at: float
    """``time.monotonic()`` when the request arrived."""


class FakeProvider:
    """The provider contract on an ephemeral port of 127.0.0.1; see the module docstring.

    Defaults when a route's queue is empty: submits answer ``{"task_id": "task-<n>"}``, polls
    ``{"status": "queued"}``, cancels ``{}``, and ``/files/clip.mp4`` the bytes given to
    ``serve_video`` (404 before that).
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._queues: dict[Route, deque[Reply]] = {}
        self._video = Reply(404, json={"error": "no video yet"})
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._tasks = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def queue(self, route: Route, *replies: Reply) -> None:
        """Answer the next requests to ``route`` with ``replies``, in order."""
        self._queues.setdefault(route, deque()).extend(replies)

    def serve_video(self, size: int, *, stream: bool = False, trickle_s: float = 0.0) -> str:
        """Serve ``size`` bytes at ``/files/clip.mp4`` from now on; return its absolute URL."""
        body = video_bytes(size)
        self._video = Reply(body=body, content_type="video/mp4", stream=stream or bool(trickle_s), trickle_s=trickle_s)
        return f"{self.origin}/files/clip.mp4"

    def requests_to(self, route: Route) -> list[RecordedRequest]:
        return [r for r in self.requests if r.route == route]

    async def start(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.post("/v1/video/generations", self._handler("t2v")),
                web.post("/v1/video/image-to-video", self._handler("i2v")),
                web.get("/v1/video/generations/{task_id}", self._handler("poll")),
                web.post("/v1/video/generations/{task_id}/cancel", self._handler("cancel")),
                web.get("/files/clip.mp4", self._handler("video")),
            ]
        )
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Release hanging handlers, then shut the server down."""
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _handler(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            self.requests.append(
                RecordedRequest(
                    route=route,
                    method=request.method,
                    path=request.path,
                    headers=CIMultiDict(request.headers),
                    json=json.loads(raw) if raw else None,
                    at=time.monotonic(),
                )
            )
            queued = self._queues.get(route)
            reply = queued.popleft() if queued else self._default(route)
            return await self._answer(request, reply)

        return handle

    def _default(self, route: Route) -> Reply:
        if route in ("t2v", "i2v"):
            self._tasks += 1
            return Reply(json={"task_id": f"task-{self._tasks}"})
        if route == "poll":
            return Reply(json={"status": "queued"})
        if route == "cancel":
            return Reply(json={})
        return self._video

    async def _answer(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.hang:
            await self._released.wait()
            return web.Response(status=503)
        body = json.dumps(reply.json).encode() if reply.json is not None else reply.body
        if not reply.stream:
            return web.Response(
                status=reply.status, body=body, content_type=reply.content_type, headers=reply.headers
            )
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        response.content_type = reply.content_type
        if reply.declared_length is not None:
            response.content_length = reply.declared_length
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        step = 1 if reply.trickle_s else _CHUNK
        for start in range(0, len(body), step):
            await response.write(body[start : start + step])
            if reply.trickle_s:
                await asyncio.sleep(reply.trickle_s)
        if reply.stall:
            await self._released.wait()
            return response
        await response.write_eof()
        return response


def video_bytes(size: int) -> bytes:
    """Deterministic, non-repeating-looking bytes, so a test can compare what was saved."""
    pattern = bytes(range(251))  # a prime length keeps chunk boundaries from lining up
    return (pattern * (size // len(pattern) + 1))[:size]
