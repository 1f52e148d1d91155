"""The ``videobot`` command: serve the bots, make one clip, inspect jobs and usage, run servers."""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
from datetime import timezone
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.app import Core, enabled_adapters, freeze_startup_heap
from bot.errors import VideobotError
from bot.grammar import build_request
from bot.images import load_image
from bot.limits import LimitsError, load_limits, window_start
from bot.logs import configure_logging
from bot.models import Clip, Origin
from bot.notifier import DeliveryCheckpoint, ProgressUpdate, StatusMessage
from bot.settings import Settings
from storage.engine import make_engine, upgrade
from storage.repository import JobRepository
from storage.tables import Job, JobState, utcnow

app = typer.Typer(add_completion=False, no_args_is_help=True, help="videobot: AI video generation for Slack and Discord.")
console = Console(stderr=True)


def _settings() -> Settings:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.secret_values)
    return settings


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]Error:[/] {message}")
    return typer.Exit(code)


def _announce(core: Core) -> None:
    if core.backend.name == "simulator":
        console.print(
            "[yellow]Backend: built-in simulator (no real model)[/] — clips are synthetic. "
            "Set WAN_API_BASE_URL and WAN_API_KEY for real videos."
        )
    else:
        console.print(f"Backend: {core.backend.label}")


# -- serve --------------------------------------------------------------------------------


@app.command()
def serve(
    standby: Annotated[
        bool, typer.Option("--standby", help="If another serve drives this database, wait and take over when it stops.")
    ] = False,
) -> None:
    """Run the enabled chat adapters and the job runner until stopped."""
    settings = _settings()
    try:
        asyncio.run(_serve(settings, standby=standby))
    except (VideobotError, LimitsError) as error:
        raise _fail(str(error), 1) from None


async def _serve(settings: Settings, *, standby: bool = False) -> None:
    core = await Core.create(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if not await core.lease.acquire():
            if not standby:
                raise core.lease.refusal()
            holder = core.lease.other.detail if core.lease.other else "another process"
            console.print(f"Standby: {holder} drives this database; taking over when its lease lapses.")
            if not await core.lease.wait(stop):
                return
            console.print("Took over the engine lease; resuming unfinished jobs.")
        await _run(settings, core, stop)
    finally:
        await core.stop()


async def _run(settings: Settings, core: Core, stop: asyncio.Event) -> None:
    adapters = enabled_adapters(settings, core.service)
    for adapter in adapters:
        await adapter.start()
    routes = [route for adapter in adapters for route in getattr(adapter, "routes", [])]
    freeze_startup_heap()
    await core.drive()
    if settings.http_port:
        port = await core.serve_ops(settings.http_host, settings.http_port, routes)
        console.print(f"Health: http://localhost:{port}/healthz  Metrics: http://localhost:{port}/metrics")
    _announce(core)
    names = ", ".join(a.name for a in adapters) or "none (set SLACK_BOT_TOKEN or DISCORD_TOKEN)"
    console.print(f"Chat platforms: {names}. Database: {settings.database.split('///')[-1]}")
    defaults = " (not found: built-in defaults; see videobot.example.toml)" if core.service.limits.from_defaults else ""
    console.print(f"Limits: {settings.limits_path}{defaults}")
    if not adapters:
        console.print('Try a clip from another terminal: videobot generate "a red fox in fresh snow" --output fox.mp4')
    console.print("videobot is running; Ctrl-C stops it.")
    await stop.wait()
    for adapter in adapters:
        await adapter.stop()


# -- generate -----------------------------------------------------------------------------


class _TerminalNotifier:
    """Shows one job's progress as a bar and writes its clip to the output path."""

    platform = "cli"

    def __init__(self, output: Path, progress: Progress, task: TaskID) -> None:
        self.output = output
        self.bar = progress
        self.task = task
        self.failure: str | None = None

    async def acknowledge(self, job: Job, queue_position: int) -> StatusMessage | None:
        ahead = f", {queue_position} ahead" if queue_position else ""
        self.bar.update(self.task, description=f"job #{job.id} queued{ahead}")
        return None

    async def progress(self, job: Job, update: ProgressUpdate) -> None:
        part = f" (part {update.segment}/{update.segments})" if update.segments > 1 else ""
        self.bar.update(self.task, completed=update.percent, description=f"job #{job.id} {update.stage.value}{part}")

    async def deliver(self, job: Job, clip: Clip, checkpoint: DeliveryCheckpoint) -> str:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        partial = self.output.with_name(self.output.name + ".part")
        await asyncio.to_thread(shutil.copyfile, clip.path, partial)
        partial.replace(self.output)
        self.bar.update(self.task, completed=100, description=f"job #{job.id} done")
        return str(self.output)

    async def fail(self, job: Job, message: str) -> None:
        self.failure = message


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the mp4.")] = Path("videobot.mp4"),
    image: Annotated[Optional[Path], typer.Option(help="Animate this image (image-to-video).")] = None,
    duration: Annotated[Optional[str], typer.Option(help="Seconds of video (default 5).")] = None,
    aspect: Annotated[Optional[str], typer.Option(help="16:9, 9:16 or 1:1.")] = None,
    resolution: Annotated[Optional[str], typer.Option(help="Exact size, e.g. 832x480.")] = None,
    fps: Annotated[Optional[str], typer.Option(help="16 or 24.")] = None,
    seed: Annotated[Optional[str], typer.Option(help="Repeat a result exactly.")] = None,
    negative: Annotated[Optional[str], typer.Option(help="What to keep out.")] = None,
    hq: Annotated[bool, typer.Option("--hq", help="Higher quality, slower.")] = False,
) -> None:
    """Make one clip through the same service the bots use, and write it to --output."""
    settings = _settings()
    try:
        picture = None
        if image is not None:
            if not image.is_file():
                raise _fail(f"--image {image}: no such file.")
            limits = load_limits(settings.limits_path)
            picture = load_image(image.read_bytes(), max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels)
        request = build_request(
            prompt, duration=duration, aspect=aspect, resolution=resolution, fps=fps, seed=seed,
            negative=negative, hq=hq, image=picture,
        )
        code = asyncio.run(_generate(settings, request, output))
    except (VideobotError, LimitsError) as error:
        raise _fail(str(error)) from None
    raise typer.Exit(code)


async def _generate(settings: Settings, request, output: Path) -> int:  # type: ignore[no-untyped-def]
    mine: set[int] = set()
    core = await Core.create(settings, platforms=["cli"], only_job_ids=mine)
    _announce(core)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as bar:
            notifier = _TerminalNotifier(output, bar, bar.add_task("submitting", total=100))
            core.service.register_notifier(notifier)
            user = getpass.getuser()
            origin = Origin(platform="cli", workspace_id="local", channel_id="terminal", user_id=user, user_name=user)
            job = await core.service.submit(request, origin)
            mine.add(job.id or 0)
            await core.runner.start()
            await core.runner.wait_idle()
        job = await core.service.status(job.id or 0)
    finally:
        await core.stop()
    if job.job_state is not JobState.SUCCEEDED:
        console.print(f"[bold red]Job #{job.id} {job.state}:[/] {job.error or notifier.failure or 'no reason given'}")
        return 1
    console.print(f"Wrote {output} ({job.duration_s} s, {job.width}x{job.height}, {job.fps} fps, seed {job.seed})")
    return 0


# -- inspecting ---------------------------------------------------------------------------


def _repository(settings: Settings) -> JobRepository:
    """The job store alone: reading jobs needs no backend and no runner."""
    engine = make_engine(settings.database)
    upgrade(engine)
    return JobRepository(engine)


@app.command()
def jobs(limit: Annotated[int, typer.Option(help="How many recent jobs.")] = 20) -> None:
    """List recent jobs and their states."""
    rows = _repository(_settings()).recent(limit)
    table = Table("id", "state", "who", "where", "prompt", "dur", "size", "created (UTC)", "error")
    for job in rows:
        table.add_row(
            str(job.id), job.state, job.user_name or job.user_id, f"{job.platform}:{job.channel_id}",
            job.prompt[:40], f"{job.duration_s}s", f"{job.width}x{job.height}",
            job.created_at.strftime("%Y-%m-%d %H:%M"), (job.error or "")[:40],
        )
    Console().print(table)


@app.command()
def usage() -> None:
    """Videos and spend per user this month, across every platform."""
    settings = _settings()
    try:
        config = load_limits(settings.limits_path)
    except LimitsError as error:
        raise _fail(str(error), 1) from None
    now = utcnow()
    rows = _repository(settings).usage_by_user(
        platform=None,
        workspace_id=None,
        day_start=window_start(now, "day", config.timezone).replace(tzinfo=timezone.utc),
        month_start=window_start(now, "month", config.timezone).replace(tzinfo=timezone.utc),
    )
    table = Table("platform", "user", "today", "this month", "spend (USD)")
    for row in rows:
        table.add_row(row.platform, row.user_name or row.user_id, str(row.jobs_today), str(row.jobs_month), f"{row.spend_month:.2f}")
    Console().print(table)


@app.command("check-config")
def check_config() -> None:
    """Validate the limits file and settings; exit non-zero naming each problem."""
    settings = Settings.from_env()
    try:
        config = load_limits(settings.limits_path)
    except LimitsError as error:
        raise _fail(str(error), 1) from None
    where = settings.limits_path if settings.limits_path.exists() else f"{settings.limits_path} (missing: built-in defaults)"
    console.print(f"[green]OK[/] limits: {where}; timezone {config.timezone.key}; backend {settings.backend}")
    if settings.backend == "http" and not settings.wan_api_base_url:
        raise _fail("VIDEOBOT_BACKEND=http needs WAN_API_BASE_URL.", 1)


# -- servers ------------------------------------------------------------------------------


@app.command()
def simulator(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8900,
    latency: Annotated[float, typer.Option(help="Seconds each task takes beyond rendering.")] = 0.0,
    fail_rate: Annotated[float, typer.Option(help="Fraction of tasks that fail.")] = 0.0,
    rate_limit_rate: Annotated[float, typer.Option("--429-rate", help="Fraction of submits answered 429.")] = 0.0,
    error_rate: Annotated[float, typer.Option("--500-rate", help="Fraction of submits answered 500.")] = 0.0,
    hang: Annotated[bool, typer.Option(help="Tasks never finish.")] = False,
    bad_video: Annotated[bool, typer.Option(help="Finished tasks serve garbage instead of an mp4.")] = False,
    cache_clips: Annotated[bool, typer.Option(help="Render once per shape and reuse (benchmarks).")] = False,
    max_parallel: Annotated[int, typer.Option(help="Tasks rendered at once; the rest wait queued.")] = 4,
    files_dir: Annotated[Optional[Path], typer.Option(help="Where clips are kept.")] = None,
    api_key: Annotated[str, typer.Option(envvar="SIMULATOR_API_KEY", help="Require this bearer key.")] = "",
) -> None:
    """Serve the provider REST API with synthetic clips, at http://HOST:PORT/v1."""
    from bot.provider.simulator import SimulatorOptions, run_simulator

    configure_logging(os.environ.get("VIDEOBOT_LOG_LEVEL", "INFO").upper(), [api_key] if api_key else [])
    options = SimulatorOptions(
        latency_s=latency, fail_rate=fail_rate, http_429_rate=rate_limit_rate, http_500_rate=error_rate,
        hang=hang, bad_video=bad_video, cache_clips=cache_clips,
    )
    run_simulator(host, port, options, files_dir=files_dir, api_key=api_key or None, max_parallel=max_parallel)


@app.command()
def worker(
    model: Annotated[str, typer.Option(help="A Wan checkpoint: Hugging Face id or local folder.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8900,
    api_key: Annotated[str, typer.Option(envvar="WORKER_API_KEY", help="Require this bearer key.")] = "",
    preset: Annotated[str, typer.Option(help="quality (the model's steps) or fast (step-distilled LoRA).")] = "quality",
    lora: Annotated[Optional[str], typer.Option(help="Step-distillation LoRA for --preset fast.")] = None,
    offload: Annotated[str, typer.Option(help="none, model or group: for GPUs smaller than the model.")] = "none",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the transformer.")] = False,
    vae_tiling: Annotated[bool, typer.Option("--vae-tiling", help="Decode in tiles to save memory.")] = False,
    files_dir: Annotated[Path, typer.Option(help="Where finished clips are kept.")] = Path("videobot-worker"),
) -> None:
    """Serve the provider REST API at http://HOST:PORT/v1 with the model on this machine's GPU."""
    configure_logging(os.environ.get("VIDEOBOT_LOG_LEVEL", "INFO").upper(), [api_key] if api_key else [])
    from bot.gpu import LoadOptions, Offload, Preset, run_worker

    try:
        options = LoadOptions(preset=Preset(preset), lora=lora, offload=Offload(offload), compile=compile,
                              vae_tiling=vae_tiling)
    except ValueError:
        raise _fail("--preset must be quality or fast, and --offload none, model or group.") from None
    run_worker(host, port, model, api_key or None, options=options, files_dir=files_dir)


def main() -> None:
    app()
