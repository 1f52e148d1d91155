"""``videobot worker``: the provider REST contract served from a GPU machine.

The worker is our provider server (``bot.provider.server``) with a ``DiffusersGenerator``
behind it, so the guide's own client, our http backend and any other client of that contract
work against a self-hosted GPU unchanged. Requests are authenticated by bearer key; the health
endpoint (open, it carries no secret) tells an operator which model is resident, which GPU,
how deep the queue is and how much memory is in use.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from pathlib import Path

from aiohttp import web

from bot.gpu.generator import DiffusersGenerator
from bot.gpu.pipeline import LoadOptions
from bot.provider.server import bound_port, build_provider_app, serve_provider

log = logging.getLogger(__name__)


def build_worker_app(
    generator: DiffusersGenerator, *, api_key: str | None, files_dir: Path, task_ttl_s: float = 3600.0
) -> web.Application:
    """The provider app over ``generator``, one job on the GPU at a time.

    Its ``/v1/health`` route carries ``generator.health()`` under ``details``: model, GPU,
    memory and the GPU queue, next to the server's own task counts.
    """
    return build_provider_app(
        generator, api_key=api_key, max_parallel=1, files_dir=files_dir, task_ttl_s=task_ttl_s
    )


async def start_worker(
    generator: DiffusersGenerator,
    host: str,
    port: int,
    *,
    api_key: str | None = None,
    files_dir: Path,
    task_ttl_s: float = 3600.0,
) -> web.AppRunner:
    """Serve ``generator`` on ``host:port`` (0 picks a free port; ``bound_port`` tells which)."""
    if not api_key and not _is_loopback(host):
        log.warning("worker on %s without an API key: anyone who can reach it can use the GPU", host)
    app = build_worker_app(generator, api_key=api_key, files_dir=files_dir, task_ttl_s=task_ttl_s)
    return await serve_provider(app, host, port)


def run_worker(
    host: str,
    port: int,
    model: str,
    api_key: str | None = None,
    *,
    options: LoadOptions | None = None,
    files_dir: Path = Path("videobot-worker"),
    task_ttl_s: float = 3600.0,
) -> None:
    """Load ``model``, then serve it under ``http://host:port/v1`` until SIGINT or SIGTERM.

    Loading comes first, so the port opens only once the model is resident and the first
    request does not wait minutes behind a download.
    """
    asyncio.run(_serve_until_stopped(host, port, model, api_key, options, files_dir, task_ttl_s))


async def _serve_until_stopped(
    host: str,
    port: int,
    model: str,
    api_key: str | None,
    options: LoadOptions | None,
    files_dir: Path,
    task_ttl_s: float,
) -> None:
    generator = await asyncio.to_thread(DiffusersGenerator.load, model, options)
    files_dir.mkdir(parents=True, exist_ok=True)
    runner = await start_worker(
        generator, host, port, api_key=api_key, files_dir=files_dir, task_ttl_s=task_ttl_s
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker serving %s on http://%s:%d/v1", generator.family_label, host, bound_port(runner))
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await asyncio.to_thread(generator.close)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
