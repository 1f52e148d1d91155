"""``POST /v1/jobs`` and ``GET /v1/jobs/{id}``: the webhook platform's way in.

Requests carry ``Authorization: Bearer $VIDEOBOT_API_KEY``. A body is a JSON object:
``{"prompt": "a fox --duration 8", "callback_url": "https://…", "user_id": "…",
"workspace_id": "…", "image": "data:image/png;base64,…"}``; errors answer with the same
user-facing messages as chat (400 invalid, 403 not allowed, 413 too large, 429 over a limit, 503 when the
bot cannot store jobs for now, with nothing charged).

Every field has a type (``prompt`` a string, ids strings or whole numbers, ``image`` a data URI
or null) and anything else is a 400 naming the field, never a 500. The body may be as large as
the limits file's ``max_image_mb`` allows for the image (base64 adds a third) plus room for the
rest. The key may act for any user id and workspace unless ``VIDEOBOT_API_WORKSPACE`` binds it
to one (see the README's trust model).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web

from bot import serving
from bot.errors import (
    InvalidRequest,
    JobNotFound,
    LimitExceeded,
    NotAllowed,
    StoreUnavailable,
    VideobotError,
)
from bot.grammar import clean_text, parse_job_id, parse_request
from bot.images import load_image
from bot.models import ImageInput, Origin
from bot.outbound import BlockedDestination, OutboundPolicy
from bot.service import JobService
from bot.serving import streams_body

_STATUS = {InvalidRequest: 400, NotAllowed: 403, JobNotFound: 404, LimitExceeded: 429, StoreUnavailable: 503}
_ID_MAX_CHARS = 200
_TEXT_MAX_CHARS = 100_000
_BODY_SPARE_BYTES = 256 * 1024
"""Room beside the image for the prompt, ids and JSON syntax."""
_MAX_DEPTH = 3


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class JobBody:
    """A checked ``POST /v1/jobs`` body."""

    prompt: str
    callback_url: str
    workspace_id: str
    channel_id: str
    user_id: str
    user_name: str
    image: str | None
    request_id: str | None


def job_routes(service: JobService, api_key: str, *, workspace: str = "") -> list[web.RouteDef]:
    """The job API's routes. ``workspace`` (when set) is the only workspace the key may act in."""

    def authorized(request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return bool(api_key) and hmac.compare_digest(given.encode(), api_key.encode())

    def refuse(error: VideobotError) -> web.Response:
        status = next((code for kind, code in _STATUS.items() if isinstance(error, kind)), 502)
        return web.json_response({"error": str(error)}, status=status)

    @streams_body
    async def create(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": "missing or wrong API key"}, status=401)
        config = service.limits.current()
        limit = config.max_image_bytes * 4 // 3 + _BODY_SPARE_BYTES
        try:
            async with asyncio.timeout(serving.BODY_TIMEOUT_S):
                raw = await _read_body(request, limit)
        except TimeoutError:
            return serving.too_slow()
        except _TooLarge:
            return web.json_response(
                {"error": f"the body is larger than {limit / 2**20:.1f} MiB (max_image_mb plus the prompt)"},
                status=413,
            )
        try:
            body = parse_job_body(raw)
            if workspace and body.workspace_id not in ("default", workspace):
                raise NotAllowed(f"This API key may only make jobs in workspace {workspace!r}.")
            origin = Origin(
                platform="webhook",
                workspace_id=workspace or body.workspace_id,
                channel_id=body.channel_id,
                user_id=body.user_id,
                user_name=body.user_name,
                extra={"callback_url": body.callback_url},
            )
            await _check_callback(body.callback_url)
            image = _image(body.image, service)
            job = await service.submit(
                parse_request(body.prompt, image=image),
                origin,
                dedup_key=f"webhook:{body.request_id}" if body.request_id else None,
            )
        except VideobotError as error:
            return refuse(error)
        return web.json_response({"job_id": job.id, "state": job.state}, status=202)

    async def show(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": "missing or wrong API key"}, status=401)
        try:
            job = await service.status(parse_job_id(request.match_info["job_id"]))
            if workspace and job.workspace_id != workspace:
                raise JobNotFound("no such job")
        except (InvalidRequest, JobNotFound):
            return web.json_response({"error": "no such job"}, status=404)
        return web.json_response(
            {"job_id": job.id, "state": job.state, "progress": job.progress, "error": job.error}
        )

    return [web.post("/v1/jobs", create), web.get("/v1/jobs/{job_id}", show)]


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` bytes (declared or not)."""
    if request.content_length is not None and request.content_length > limit:
        raise _TooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def parse_job_body(raw: bytes) -> JobBody:
    """Check a job body; raise ``InvalidRequest`` naming the first field that is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, a 5,000-digit number, nesting
        raise InvalidRequest("The body must be a JSON object.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object.")
    for key, value in data.items():
        if _depth(value) > _MAX_DEPTH:
            raise InvalidRequest(f"{_field_name(key)} is nested too deeply.")
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidRequest("prompt must be a string (the description, with any --options).")
    if len(prompt) > _TEXT_MAX_CHARS:
        raise InvalidRequest(f"prompt must be at most {_TEXT_MAX_CHARS:,} characters.")
    callback = data.get("callback_url")
    if not isinstance(callback, str) or not callback.startswith(("http://", "https://")) or len(callback) > 2000:
        raise InvalidRequest("callback_url must be an http(s) URL.")
    image = data.get("image")
    if image is not None and not isinstance(image, str):
        raise InvalidRequest("image must be a data URI string (data:image/png;base64,…) or null.")
    return JobBody(
        prompt=clean_text(prompt),
        callback_url=callback,
        workspace_id=_identifier(data, "workspace_id", "default"),
        channel_id=_identifier(data, "channel_id", "api"),
        user_id=_identifier(data, "user_id", "api"),
        user_name=_identifier(data, "user_name", "", blank=True),
        image=image or None,
        request_id=_identifier(data, "request_id", "", blank=True) or None,
    )


async def _check_callback(url: str) -> None:
    """Refuse a callback the bot would never post to (loopback, private, link-local …) now,
    rather than after the video is made; the notifier checks again on every post."""
    try:
        await OutboundPolicy().check(httpx.URL(url))
    except httpx.InvalidURL:
        raise InvalidRequest("callback_url must be an http(s) URL.") from None
    except BlockedDestination as blocked:
        raise InvalidRequest(f"callback_url is refused: {blocked}.") from None


def _identifier(data: dict[str, Any], name: str, default: str, *, blank: bool = False) -> str:
    """A string (or a whole number, which ids often are) of at most 200 characters."""
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**18:
        return str(value)
    if not isinstance(value, str) or len(value) > _ID_MAX_CHARS or (not blank and not value.strip()):
        raise InvalidRequest(f"{name} must be a non-empty string of at most {_ID_MAX_CHARS} characters.")
    return clean_text(value)


def _depth(value: object, _level: int = 0) -> int:
    if _level > _MAX_DEPTH:
        return _level
    if isinstance(value, dict):
        return max((_depth(v, _level + 1) for v in value.values()), default=_level + 1)
    if isinstance(value, list):
        return max((_depth(v, _level + 1) for v in value), default=_level + 1)
    return _level


def _field_name(key: str) -> str:
    return clean_text(key)[:40]


def _image(value: str | None, service: JobService) -> ImageInput | None:
    if not value:
        return None
    if not value.startswith("data:") or ";base64," not in value:
        raise InvalidRequest("image must be a data URI: data:image/png;base64,…")
    try:
        data = base64.b64decode(value.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image is not valid base64.") from None
    config = service.limits.current()
    return load_image(data, max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels)


__all__: list[str] = ["JobBody", "job_routes", "parse_job_body"]
