"""``POST /v1/jobs`` and ``GET /v1/jobs/{id}``: the webhook platform's way in.

Requests carry ``Authorization: Bearer $VIDEOBOT_API_KEY``. A body is JSON:
``{"prompt": "a fox --duration 8", "callback_url": "https://…", "user_id": "…",
"workspace_id": "…", "image": "data:image/png;base64,…"}``; errors answer with the same
user-facing messages as chat (400 invalid, 403 not allowed, 429 over a limit, 503 when the
bot cannot store jobs for now, with nothing charged).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from aiohttp import web

from bot.errors import InvalidRequest, JobNotFound, LimitExceeded, NotAllowed, StoreUnavailable, VideobotError
from bot.grammar import parse_request
from bot.images import load_image
from bot.models import ImageInput, Origin
from bot.service import JobService

_STATUS = {InvalidRequest: 400, NotAllowed: 403, JobNotFound: 404, LimitExceeded: 429, StoreUnavailable: 503}


def job_routes(service: JobService, api_key: str) -> list[web.RouteDef]:
    def authorized(request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return bool(api_key) and hmac.compare_digest(given.encode(), api_key.encode())

    def refuse(error: VideobotError) -> web.Response:
        status = next((code for kind, code in _STATUS.items() if isinstance(error, kind)), 502)
        return web.json_response({"error": str(error)}, status=status)

    async def create(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": "missing or wrong API key"}, status=401)
        try:
            body: dict[str, Any] = await request.json()
        except ValueError:
            return web.json_response({"error": "the body must be JSON"}, status=400)
        callback = str(body.get("callback_url", ""))
        if not callback.startswith(("http://", "https://")):
            return web.json_response({"error": "callback_url must be an http(s) URL"}, status=400)
        origin = Origin(
            platform="webhook",
            workspace_id=str(body.get("workspace_id", "default")),
            channel_id=str(body.get("channel_id", "api")),
            user_id=str(body.get("user_id", "api")),
            user_name=str(body.get("user_name", "")),
            extra={"callback_url": callback},
        )
        try:
            image = _image(body.get("image"), service)
            job = await service.submit(
                parse_request(str(body.get("prompt", "")), image=image),
                origin,
                dedup_key=f"webhook:{body['request_id']}" if body.get("request_id") else None,
            )
        except VideobotError as error:
            return refuse(error)
        return web.json_response({"job_id": job.id, "state": job.state}, status=202)

    async def show(request: web.Request) -> web.Response:
        if not authorized(request):
            return web.json_response({"error": "missing or wrong API key"}, status=401)
        try:
            job = await service.status(int(request.match_info["job_id"]))
        except (ValueError, JobNotFound):
            return web.json_response({"error": "no such job"}, status=404)
        return web.json_response(
            {"job_id": job.id, "state": job.state, "progress": job.progress, "error": job.error}
        )

    return [web.post("/v1/jobs", create), web.get("/v1/jobs/{job_id}", show)]


def _image(value: object, service: JobService) -> ImageInput | None:
    if not value:
        return None
    text = str(value)
    if not text.startswith("data:") or ";base64," not in text:
        raise InvalidRequest("image must be a data URI: data:image/png;base64,…")
    try:
        data = base64.b64decode(text.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image is not valid base64.") from None
    config = service.limits.current()
    return load_image(data, max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels)
