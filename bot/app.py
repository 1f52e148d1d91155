"""The composition root: builds settings, storage, limits, backend, service and runner.

Everything is wired here and nowhere else. ``Core`` is what ``videobot serve`` and
``videobot generate`` run, and what tests start against a fresh SQLite file.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from aiohttp import web

from bot.backends.base import Backend
from bot.database import Database
from bot.errors import ConfigurationError
from bot.lease import EngineLease
from bot.limits import LimitsConfig, LimitsStore
from bot.media_pool import MediaPool
from bot.metrics import build_ops_app
from bot.runner import Runner, RunnerOptions
from bot.serving import guard_app, runner_options
from bot.service import Generator, JobService
from bot.settings import Settings
from storage.engine import make_engine, upgrade
from storage.repository import JobRepository

log = logging.getLogger(__name__)

SIMULATOR_LABEL = "simulator (no real model)"


@dataclass
class _Embedded:
    """Servers this process runs for itself (the built-in simulator, the ops endpoints)."""

    runners: list[web.AppRunner] = field(default_factory=list)

    async def close(self) -> None:
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()


async def build_generators(
    settings: Settings, config: LimitsConfig, embedded: _Embedded
) -> tuple[dict[str, Generator], str]:
    """The generators by name and the default one.

    With ``[backends.NAME]`` tables in the limits file, one per table (the first is the default
    wherever a scope names none); without them, the one ``VIDEOBOT_BACKEND`` names, exactly as
    before. Keys always come from the environment.
    """
    tables = config.backends
    if not tables:
        backend = await build_backend(settings, embedded)
        return {backend.name: Generator(backend)}, backend.name
    generators: dict[str, Generator] = {}
    for table in tables:
        if table.type in HOSTED:
            backend = hosted_backend(
                table.type,
                settings,
                name=table.name,
                t2v_model=table.t2v_model,
                i2v_model=table.i2v_model,
                max_concurrency=table.concurrency,
            )
        else:
            backend = await build_backend(
                settings, embedded, kind=table.type, name=table.name, model=table.t2v_model, concurrency=table.concurrency
            )
        if table.label:
            backend.label = table.label
        generators[table.name] = Generator(backend, tier=table.resolution, price_per_s=table.price_per_second)
    return generators, tables[0].name


async def build_backend(
    settings: Settings,
    embedded: _Embedded,
    *,
    kind: str | None = None,
    name: str | None = None,
    model: str | None = None,
    concurrency: int | None = None,
) -> Backend:
    """The backend ``kind`` (default: ``VIDEOBOT_BACKEND``) names; the simulator runs in process
    on loopback."""
    from bot.backends.http import HttpBackend

    kind = kind or settings.backend
    concurrency = concurrency or settings.max_concurrency or 4
    if kind == "http":
        if not settings.wan_api_base_url:
            raise ConfigurationError("VIDEOBOT_BACKEND=http needs WAN_API_BASE_URL (the provider's /v1 URL).")
        return HttpBackend(
            settings.wan_api_base_url,
            settings.wan_api_key,
            model=model or settings.wan_model,
            name=name or "http",
            max_concurrency=concurrency,
            audio=settings.wan_audio,
            download_stall_s=settings.download_stall_s,
        )
    if kind == "simulator":
        from bot.provider.server import bound_port, serve_provider
        from bot.provider.simulator import SimulatorOptions, build_simulator_app

        files = settings.data_dir / "simulator"
        files.mkdir(parents=True, exist_ok=True)
        simulator = build_simulator_app(
            SimulatorOptions(audio=settings.wan_audio), files_dir=files, max_parallel=concurrency
        )
        runner = await serve_provider(simulator, "127.0.0.1", 0)
        embedded.runners.append(runner)
        return HttpBackend(
            f"http://127.0.0.1:{bound_port(runner)}/v1",
            name=name or "simulator",
            label=SIMULATOR_LABEL,
            max_concurrency=concurrency,
            audio=settings.wan_audio,
            download_stall_s=settings.download_stall_s,
        )
    if kind == "diffusers" and settings.engine == "temporal":  # made by `videobot worker --engine temporal`
        from bot.temporal._gpu import GpuQueueBackend

        return GpuQueueBackend(name or "diffusers", max_concurrency=concurrency)
    if kind == "diffusers":
        from bot.gpu import DiffusersBackend, LoadOptions, Offload, Preset

        if not settings.videobot_model:
            raise ConfigurationError("VIDEOBOT_BACKEND=diffusers needs VIDEOBOT_MODEL (a model id or local path).")
        try:
            options = LoadOptions(
                preset=Preset(settings.gpu_preset),
                lora=settings.gpu_lora or None,
                offload=Offload(settings.gpu_offload),
                compile=settings.gpu_compile,
                vae_tiling=settings.gpu_vae_tiling,
            )
        except ValueError:
            raise ConfigurationError(
                "VIDEOBOT_PRESET must be quality or fast, and VIDEOBOT_OFFLOAD none, model or group."
            ) from None
        return await DiffusersBackend.open(settings.videobot_model, settings.media_dir / "gpu", options)
    if kind in HOSTED:
        return hosted_backend(kind, settings, name=name or kind)
    raise ConfigurationError(
        f"VIDEOBOT_BACKEND={kind!r} is not a backend; use http, simulator, diffusers, {', '.join(HOSTED)}."
    )


HOSTED = ("dashscope", "fal", "replicate")
"""Hosted providers with a module of their own in ``bot/backends``."""


def hosted_backend(
    kind: str,
    settings: Settings,
    *,
    name: str,
    t2v_model: str | None = None,
    i2v_model: str | None = None,
    max_concurrency: int | None = None,
) -> Backend:
    """A hosted provider's backend. Models: the arguments, else ``VIDEOBOT_T2V_MODEL`` /
    ``VIDEOBOT_I2V_MODEL``, else the backend's defaults; keys come from ``settings`` only."""
    options = {
        "name": name,
        "t2v_model": t2v_model or settings.t2v_model or None,
        "i2v_model": i2v_model or settings.i2v_model or None,
        "max_concurrency": max_concurrency or settings.max_concurrency or None,
    }
    if kind == "dashscope":
        from bot.backends.dashscope import DashScopeBackend

        return DashScopeBackend.from_settings(settings, **options)
    if kind == "fal":
        from bot.backends.fal import FalBackend

        return FalBackend.from_settings(settings, **options)
    if kind == "replicate":
        from bot.backends.replicate import ReplicateBackend

        return ReplicateBackend.from_settings(settings, **options)
    raise ConfigurationError(f"{kind!r} is not a hosted backend; use {', '.join(HOSTED)}.")


def configure_outbound(settings: Settings) -> None:
    """The hosts outbound requests may reach besides public addresses: those an admin listed in
    ``VIDEOBOT_ALLOWED_HOSTS`` and the endpoints an admin set (backend and chat API URLs). Each
    ``ProviderClient`` adds its own base URL as well, so a hosted backend needs nothing here."""
    from bot import outbound

    configured = [settings.wan_api_base_url, settings.slack_api_url, settings.dashscope_base_url,
                  settings.replicate_base_url]
    if settings.fal_host:
        configured.append(f"https://{settings.fal_host}")
    try:
        outbound.allow(*settings.allowed_hosts, *(url for url in configured if url))
    except (ValueError, httpx.InvalidURL):
        raise ConfigurationError(
            "VIDEOBOT_ALLOWED_HOSTS must list host or host:port entries, and each API URL must be a URL."
        ) from None


class Adapter(Protocol):
    """A chat platform plug-in: built with the service (registering its notifier), then started."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def enabled_adapters(settings: Settings, service: JobService) -> list[Adapter]:
    """The platforms whose credentials are set. Imported lazily: the core needs no platform SDK."""
    adapters: list[Adapter] = []
    if settings.slack_bot_token:
        from adapters.slack import build_adapter as slack

        adapters.append(slack(settings, service))
    if settings.discord_token:
        from adapters.discord import build_adapter as discord

        adapters.append(discord(settings, service))
    if settings.api_key:
        from adapters.webhook import build_adapter as webhook

        adapters.append(webhook(settings, service))
    return adapters


def freeze_startup_heap() -> None:
    """Exempt everything built at start-up from garbage collection.

    SQLAlchemy, Pillow, numpy and the platform SDKs leave ~150k long-lived objects; a full
    collection over them stops the event loop for ~100 ms, which lands in the middle of a
    burst of acks. Collect once, then freeze what is alive.
    """
    gc.collect()
    gc.freeze()


class Core:
    """The running core: one database, its generators, one service, one runner, and the media
    pool (``service.media``) whose worker processes do the clip work; ``stop`` ends them."""

    def __init__(self, settings: Settings, service: JobService, runner: Runner, embedded: _Embedded):
        self.settings = settings
        self.service = service
        self.runner = runner
        self.engine: Any = None
        """The ``TemporalEngine`` under ``VIDEOBOT_ENGINE=temporal`` (the service's dispatcher,
        its steps the runner's); None for the embedded engine."""
        if settings.engine == "temporal":
            from bot.temporal import TemporalEngine

            self.engine = TemporalEngine(settings, runner)
        self.lease = EngineLease(service.db, settings.lease_ttl_s)
        """Held by `videobot serve` (``drive``); other cores (the CLI's one job, tests) go without."""
        self._embedded = embedded
        self._keeper: asyncio.Task[None] | None = None

    @property
    def backend(self) -> Backend:
        """The default generator's backend."""
        return self.service.generators[self.service.default_generator].backend

    @classmethod
    async def create(
        cls,
        settings: Settings,
        *,
        backend: Backend | None = None,
        platforms: Sequence[str] | None = None,
        only_job_ids: set[int] | None = None,
    ) -> "Core":
        """Open (and migrate) the database, load the limits, build the generators; starts nothing
        yet. ``backend`` replaces them with one given backend (tests)."""
        embedded = _Embedded()
        configure_outbound(settings)
        limits = LimitsStore(settings.limits_path)
        engine = make_engine(settings.database)
        upgrade(engine)
        db = Database(JobRepository(engine))
        settings.media_dir.mkdir(parents=True, exist_ok=True)
        if backend is not None:
            generators, default = {backend.name: Generator(backend)}, backend.name
        else:
            generators, default = await build_generators(settings, limits.current(), embedded)
        service = JobService(
            db,
            limits,
            generators=generators,
            default_generator=default,
            media_dir=settings.media_dir.resolve(),
            media=MediaPool(),
        )
        options = RunnerOptions(
            poll_interval_s=settings.poll_interval_s,
            progress_interval_s=settings.progress_interval_s,
            job_timeout_s=settings.job_timeout_s,
            max_download_bytes=settings.max_download_bytes,
            media_retention_days=settings.media_retention_days,
            progress_to_db=settings.engine == "temporal",
        )
        runner = Runner(service, options, platforms=platforms, only_job_ids=only_job_ids)
        return cls(settings, service, runner, embedded)

    async def start(self, *, ops_port: int | None = None, ops_host: str = "0.0.0.0") -> None:
        """Resume unfinished jobs and start dispatching; serve /healthz and /metrics if a port is given."""
        if self.engine is not None:
            await self.engine.start()
        else:
            await self.runner.start()
        if ops_port is not None:
            await self.serve_ops(ops_host, ops_port)

    async def drive(self) -> None:
        """Start the runner under the engine lease, which must be held (``lease.acquire``): the
        runner asks the lease before each step, and a lost lease stops it until it is back.
        The Temporal engine needs no lease: it starts its workers and workflows."""
        if self.engine is not None:
            await self.engine.start()
            return
        if not await self.lease.renew():  # starting the adapters may have taken a while
            raise self.lease.refusal()
        self.runner.may_drive = self.lease.fresh
        await self.runner.start()
        self._keeper = asyncio.create_task(self.lease.keep(self.runner), name="videobot-lease")

    async def serve_ops(self, host: str, port: int, extra_routes: Sequence[web.RouteDef] = ()) -> int:
        app = guard_app(build_ops_app(self.runner.metrics, self.health, self._state_counts))
        app.add_routes(list(extra_routes))
        runner = web.AppRunner(app, access_log=None, **runner_options())
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._embedded.runners.append(runner)
        return int(runner.addresses[0][1])

    async def health(self) -> dict[str, Any]:
        """What /healthz shows; ``status`` is "ok" only while the database takes a write."""
        refused = await self.service.db.probe()
        counts = await self._state_counts()
        status = {"status": "ok"}
        if refused is not None:
            status = {"status": "unavailable", "reason": f"the database refuses writes: {refused}"}
        elif self._keeper is not None and not self.lease.fresh():
            status = {"status": "standby", "reason": "this process does not hold the engine lease now"}
        engine: dict[str, Any] = {"engine": self.settings.engine}
        if self.engine is not None:
            temporal = await self.engine.health()
            engine["temporal"] = temporal
            if not temporal["connected"] and refused is None:
                status = {"status": "unavailable", "reason": f"Temporal does not answer at {temporal['address']}"}
        return {
            **status,
            **engine,
            "backend": self.backend.name,
            "backend_label": self.backend.label,
            "backends": {name: g.backend.label for name, g in self.service.generators.items()},
            "queued": counts.get("queued", 0),
            "in_flight": self.runner.active_count,
            "platforms": sorted(self.service.notifiers),
        }

    async def _state_counts(self) -> dict[str, int]:
        return await self.service.db.run(self.service.db.repo.count_by_state)

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        if self.engine is not None:
            await self.engine.stop()
        await self.runner.stop()
        await self.lease.release()
        for generator in self.service.generators.values():
            await generator.backend.aclose()
        await self._embedded.close()
        await self.service.media.close()
        self.service.db.close()
