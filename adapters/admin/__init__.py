"""The admin page: queue, jobs, usage and limits in a browser, at /admin on the ops port.

On only when ``VIDEOBOT_ADMIN_TOKEN`` is set; ``videobot serve`` adds ``admin_routes`` to the
server that answers /healthz. Everything is rendered on the server; the page loads nothing from
any other host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from adapters.admin._site import AdminSite

if TYPE_CHECKING:
    from bot.app import Core


def admin_routes(core: Core, token: str) -> list[web.RouteDef]:
    """The /admin routes for ``core``, guarded by ``token``."""
    return AdminSite(core, token).routes()


__all__ = ["AdminSite", "admin_routes"]
