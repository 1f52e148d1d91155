"""The webhook platform: jobs submitted over HTTP, results posted back to a callback URL.

For scripts, CI pipelines and chat systems without a native adapter: ``POST /v1/jobs`` with
a prompt (the same grammar as ``/video``) and a ``callback_url``; progress, the clip and any
failure arrive at that URL. The routes are served beside /healthz on ``VIDEOBOT_HTTP_PORT``.
"""

from __future__ import annotations

from aiohttp import web

from adapters.webhook.api import job_routes
from adapters.webhook.notifier import WebhookNotifier
from bot.service import JobService
from bot.settings import Settings


class WebhookAdapter:
    name = "webhook"

    def __init__(self, service: JobService, api_key: str, *, workspace: str = "") -> None:
        self.notifier = WebhookNotifier()
        self.routes: list[web.RouteDef] = job_routes(service, api_key, workspace=workspace)
        service.register_notifier(self.notifier)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.notifier.aclose()


def build_adapter(settings: Settings, service: JobService) -> WebhookAdapter:
    return WebhookAdapter(service, settings.api_key, workspace=settings.api_workspace)


__all__ = ["WebhookAdapter", "WebhookNotifier", "build_adapter", "job_routes"]
