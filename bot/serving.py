"""Every HTTP server videobot runs (Slack's HTTP mode, /healthz and the job API, the provider
server) gives each client a bounded time to send its request, so slow clients cannot hold
sockets open forever (slow-loris).

- Headers: a connection that has not sent a complete request head within ``HEADER_TIMEOUT_S``
  of opening (or of its previous answer) is closed. aiohttp's keep-alive timer does this: it
  closes a connection that is waiting for a request, however many bytes have trickled in.
- Body: ``read_body_within`` middleware reads the whole body within ``BODY_TIMEOUT_S`` before
  the handler runs and answers ``408`` otherwise; a handler that streams its body itself (the
  job API, whose limit follows ``max_image_mb``) is marked ``streams_body`` and bounds its own
  reads with ``BODY_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

__all__ = ["BODY_TIMEOUT_S", "HEADER_TIMEOUT_S", "guard_app", "runner_options", "streams_body", "too_slow"]

HEADER_TIMEOUT_S = 15.0
BODY_TIMEOUT_S = 60.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Callable[..., Any])


def streams_body(handler: H) -> H:
    """Mark a handler that reads (and bounds the time of) its own body."""
    handler.streams_body = True  # type: ignore[attr-defined]
    return handler


@web.middleware
async def read_body_within(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.body_exists and not getattr(request.match_info.handler, "streams_body", False):
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                await request.read()
        except TimeoutError:
            return too_slow()
    return await handler(request)


def too_slow() -> web.Response:
    """408, and the connection closed: the rest of a trickled body is not waited for."""
    response = web.json_response({"error": "the request body was not sent in time"}, status=408)
    response.force_close()
    return response


def guard_app(app: web.Application) -> web.Application:
    """Add the body deadline to ``app`` (before it is frozen by a runner)."""
    app.middlewares.append(read_body_within)
    return app


def runner_options() -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner``: the header deadline."""
    return {"keepalive_timeout": HEADER_TIMEOUT_S, "lingering_time": 1.0}
