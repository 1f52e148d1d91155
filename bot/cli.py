"""The ``videobot`` command: serve the bots, make one clip, inspect jobs and usage, run servers."""

from __future__ import annotations

import asyncio
import errno
import getpass
import os
import shutil
import signal
import sys
from datetime import timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from bot.app import Core, enabled_adapters, freeze_startup_heap
from bot.errors import ConfigurationError, VideobotError
from bot.grammar import build_request
from bot.images import load_image
from bot.limits import LimitsError, load_limits, window_start
from bot.logs import configure_logging
from bot.models import Clip, Origin
from bot.notifier import DeliveryCheckpoint, ProgressUpdate, StatusMessage
from bot.settings import LOG_LEVELS, Settings, SettingsError, backend_table_problems, load_env_file
from storage.engine import make_engine, upgrade
from storage.repository import JobRepository
from storage.tables import Job, JobState, utcnow

app = typer.Typer(add_completion=False, no_args_is_help=True, help="videobot: AI video generation for Slack and Discord.")


def make_console(*, stderr: bool = False) -> Console:
    """Rich output that prints text as written (no markup: a prompt's ``[table]`` stays) and,
    off a terminal (``docker logs``, a pipe, a file), never wraps or cuts a line."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, markup=False, highlight=False)
    return Console(stderr=stderr, markup=False, highlight=False, soft_wrap=True, width=1000)


console = make_console(stderr=True)


def _version() -> str:
    try:
        return version("videobot")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        print(f"videobot {_version()}")
        raise typer.Exit(0)


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    """videobot: AI video generation for Slack and Discord."""
    load_env_file()


def _settings() -> Settings:
    try:
        settings = Settings.from_env(dotenv=False)
    except SettingsError as error:
        raise _fail_all(error.problems) from None
    configure_logging(settings.log_level, settings.secret_values)
    return settings


def _say(*parts: str | tuple[str, str]) -> None:
    """Print one line; a ``(text, style)`` part is styled, every text is printed as written."""
    console.print(Text.assemble(*parts))


def _fail(message: str, code: int = 2) -> typer.Exit:
    _say(("Error:", "bold red"), " ", message)
    return typer.Exit(code)


def _fail_all(problems: list[str], code: int = 2) -> typer.Exit:
    for problem in problems:
        _say(("Error:", "bold red"), " ", problem)
    return typer.Exit(code)


def _log_level() -> str:
    """The log level for ``simulator`` and ``worker``, which need no other setting."""
    raw = os.environ.get("VIDEOBOT_LOG_LEVEL", "").strip()
    level = raw.upper() or "INFO"
    if level not in LOG_LEVELS:
        raise _fail(f"VIDEOBOT_LOG_LEVEL={raw!r} is not valid: it takes one of {', '.join(LOG_LEVELS)}.")
    return level


def _listen_problem(where: str, host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"{where}: port {port} on {host} is already in use (another videobot?); choose a free port."
    if error.errno == errno.EACCES:
        return f"{where}: not allowed to listen on port {port} (ports below 1024 need privileges); choose another."
    return f"{where}: cannot listen on {host}:{port} ({error.strerror or error})."


def _database_shown(settings: Settings) -> str:
    """Where the jobs are stored, for people: a SQLite file's path, or the URL without its password."""
    if not settings.database_url:
        return settings.database.split("///")[-1]
    return make_url(settings.database).render_as_string(hide_password=True)


def _database_problem(settings: Settings, error: Exception) -> str:
    """One line for a database that cannot be opened; the URL is shown without its password."""
    try:
        where = make_url(settings.database).render_as_string(hide_password=True)
    except ArgumentError:
        return "DATABASE_URL is not a valid SQLAlchemy URL (e.g. postgresql+psycopg://user:pass@host/videobot)."
    if isinstance(error, (NoSuchModuleError, ImportError)):
        return f"DATABASE_URL={where}: its database driver is not installed ({error})."
    reason = getattr(error, "orig", None) or error
    text = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
    setting = "DATABASE_URL" if settings.database_url else "VIDEOBOT_DATA_DIR"
    return f"Could not open the database {where} ({text}); check {setting}."


async def _open_core(settings: Settings, **options: Any) -> Core:
    try:
        return await Core.create(settings, **options)
    except (SQLAlchemyError, OSError, ImportError) as error:
        raise ConfigurationError(_database_problem(settings, error)) from None


def _announce(core: Core) -> None:
    if core.backend.name == "simulator":
        _say(
            ("Backend: built-in simulator (no real model)", "yellow"),
            " — clips are synthetic. Set WAN_API_BASE_URL and WAN_API_KEY for real videos.",
        )
    else:
        _say(f"Backend: {core.backend.label}")


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
    core = await _open_core(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        # the Temporal engine takes no lease: Temporal hands each step to one worker
        if settings.engine != "temporal" and not await core.lease.acquire():
            if not standby:
                raise core.lease.refusal()
            holder = core.lease.other.detail if core.lease.other else "another process"
            _say(f"Standby: {holder} drives this database; taking over when its lease lapses.")
            if not await core.lease.wait(stop):
                return
            _say("Took over the engine lease; resuming unfinished jobs.")
        await _run(settings, core, stop)
    finally:
        await core.stop()
    _say("videobot stopped.")


async def _run(settings: Settings, core: Core, stop: asyncio.Event) -> None:
    """Serve until ``stop``: the chat adapters, the runner under the lease, health and admin."""
    started: list[Any] = []
    try:
        adapters = enabled_adapters(settings, core.service)
        for adapter in adapters:
            try:
                await adapter.start()
            except OSError as error:
                raise ConfigurationError(_listen_problem("SLACK_PORT", settings.http_host, settings.slack_port, error)) from None
            started.append(adapter)
        routes = [route for adapter in adapters for route in getattr(adapter, "routes", [])]
        if settings.admin_token and settings.http_port:
            from adapters.admin import admin_routes

            routes += admin_routes(core, settings.admin_token)
        freeze_startup_heap()
        await core.drive()
        if settings.http_port:
            try:
                port = await core.serve_ops(settings.http_host, settings.http_port, routes)
            except OSError as error:
                where = "VIDEOBOT_HTTP_PORT"
                raise ConfigurationError(_listen_problem(where, settings.http_host, settings.http_port, error)) from None
            _say(f"Health: http://localhost:{port}/healthz  Metrics: http://localhost:{port}/metrics")
            if settings.admin_token:
                _say(f"Admin page: http://localhost:{port}/admin")
            else:
                _say("Admin page: off (set VIDEOBOT_ADMIN_TOKEN to a long random secret to turn on /admin)")
        _announce(core)
        names = ", ".join(a.name for a in adapters) or "none (set SLACK_BOT_TOKEN or DISCORD_TOKEN)"
        _say(f"Chat platforms: {names}. Database: {_database_shown(settings)}")
        defaults = " (not found: built-in defaults; see videobot.example.toml)" if core.service.limits.from_defaults else ""
        _say(f"Limits: {settings.limits_path}{defaults}")
        if not adapters:
            _say('Try a clip from another terminal: videobot generate "a red fox in fresh snow" --output fox.mp4')
        _say("videobot is running; Ctrl-C stops it.")
        await stop.wait()
    finally:
        for adapter in started:
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
    silent: Annotated[bool, typer.Option("--silent", help="No sound, on models that make it.")] = False,
    end_image: Annotated[
        Optional[Path], typer.Option("--end-image", help="End the clip on this image (with --image; same orientation).")
    ] = None,
    loop: Annotated[bool, typer.Option("--loop", help="End on the first frame: plays seamlessly on repeat.")] = False,
    shots: Annotated[Optional[str], typer.Option(help="single, or multi: several shots (models that make them).")] = None,
) -> None:
    """Make one clip through the same service the bots use, and write it to --output."""
    settings = _settings()
    try:
        pictures = []
        for option, path in (("--image", image), ("--end-image", end_image)):
            if path is None:
                pictures.append(None)
                continue
            if not path.is_file():
                raise _fail(f"{option} {path}: no such file.")
            limits = load_limits(settings.limits_path)
            pictures.append(load_image(path.read_bytes(), max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels))
        request = build_request(
            prompt, duration=duration, aspect=aspect, resolution=resolution, fps=fps, seed=seed,
            negative=negative, hq=hq, image=pictures[0], silent=silent, end_image=pictures[1], loop=loop, shots=shots,
        )
        code = asyncio.run(_generate(settings, request, output))
    except (VideobotError, LimitsError) as error:
        raise _fail(str(error)) from None
    raise typer.Exit(code)


async def _generate(settings: Settings, request, output: Path) -> int:  # type: ignore[no-untyped-def]
    mine: set[int] = set()
    core = await _open_core(settings, platforms=["cli"], only_job_ids=mine)
    _announce(core)
    columns = (TextColumn("{task.description}", markup=False), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn())
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
        _say((f"Job #{job.id} {job.state}:", "bold red"), " ", job.error or notifier.failure or "no reason given")
        return 1
    _say(f"Wrote {output} ({job.duration_s} s, {job.width}x{job.height}, {job.fps} fps, seed {job.seed})")
    return 0


# -- inspecting ---------------------------------------------------------------------------


def _repository(settings: Settings) -> JobRepository:
    """The job store alone: reading jobs needs no backend and no runner."""
    try:
        engine = make_engine(settings.database)
        upgrade(engine)
    except (SQLAlchemyError, OSError, ImportError) as error:
        raise _fail(_database_problem(settings, error), 1) from None
    return JobRepository(engine)


_STATE_WIDTH = max(len(state.value) for state in JobState)


@app.command()
def jobs(limit: Annotated[int, typer.Option(min=1, help="How many recent jobs.")] = 20) -> None:
    """List recent jobs and their states."""
    rows = _repository(_settings()).recent(limit)
    table = Table("id", "state", "who", "where", "prompt", "dur", "size", "created (UTC)", "error")
    table.columns[1].no_wrap = True
    table.columns[1].min_width = _STATE_WIDTH
    for job in rows:
        cells = (
            str(job.id), job.state, job.user_name or job.user_id, f"{job.platform}:{job.channel_id}",
            job.prompt[:40], f"{job.duration_s}s", f"{job.width}x{job.height}",
            job.created_at.strftime("%Y-%m-%d %H:%M"), (job.error or "")[:40],
        )
        table.add_row(*(Text(cell) for cell in cells))
    make_console().print(table)


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
        cells = (row.platform, row.user_name or row.user_id, str(row.jobs_today), str(row.jobs_month), f"{row.spend_month:.2f}")
        table.add_row(*(Text(cell) for cell in cells))
    make_console().print(table)


@app.command("check-config")
def check_config() -> None:
    """Validate the settings and the limits file; exit non-zero naming each problem.

    The settings are checked exactly as ``serve`` checks them at start (exit 2), then the
    limits file (exit 1): what this calls OK, ``serve`` accepts.
    """
    try:
        settings = Settings.from_env(dotenv=False)
    except SettingsError as error:
        raise _fail_all(error.problems) from None
    try:
        config = load_limits(settings.limits_path)
    except LimitsError as error:
        raise _fail(str(error), 1) from None
    problems = backend_table_problems(settings, config.backends)
    if problems:
        raise _fail_all(problems, 1)
    where = settings.limits_path if settings.limits_path.exists() else f"{settings.limits_path} (missing: built-in defaults)"
    _say(("OK", "green"), f" settings; limits: {where}; timezone {config.timezone.key}; backend {settings.backend}")


# -- servers ------------------------------------------------------------------------------


@app.command()
def simulator(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")] = 8900,
    latency: Annotated[float, typer.Option(min=0.0, help="Seconds each task takes beyond rendering.")] = 0.0,
    fail_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="Fraction of tasks that fail (0 to 1).")] = 0.0,
    rate_limit_rate: Annotated[
        float, typer.Option("--429-rate", min=0.0, max=1.0, help="Fraction of submits answered 429 (0 to 1).")
    ] = 0.0,
    error_rate: Annotated[
        float, typer.Option("--500-rate", min=0.0, max=1.0, help="Fraction of submits answered 500 (0 to 1).")
    ] = 0.0,
    hang: Annotated[bool, typer.Option(help="Tasks never finish.")] = False,
    bad_video: Annotated[bool, typer.Option(help="Finished tasks serve garbage instead of an mp4.")] = False,
    cache_clips: Annotated[bool, typer.Option(help="Render once per shape and reuse (benchmarks).")] = False,
    audio: Annotated[bool, typer.Option("--audio", help="Clips carry a tone as sound (pitch follows the seed).")] = False,
    max_parallel: Annotated[int, typer.Option(min=1, help="Tasks rendered at once; the rest wait queued.")] = 4,
    files_dir: Annotated[Optional[Path], typer.Option(help="Where clips are kept.")] = None,
    api_key: Annotated[str, typer.Option(envvar="SIMULATOR_API_KEY", help="Require this bearer key.")] = "",
) -> None:
    """Serve the provider REST API with synthetic clips, at http://HOST:PORT/v1."""
    from bot.provider.simulator import SimulatorOptions, run_simulator

    configure_logging(_log_level(), [api_key] if api_key else [])
    options = SimulatorOptions(
        latency_s=latency, fail_rate=fail_rate, http_429_rate=rate_limit_rate, http_500_rate=error_rate,
        hang=hang, bad_video=bad_video, cache_clips=cache_clips, audio=audio,
    )
    try:
        run_simulator(host, port, options, files_dir=files_dir, api_key=api_key or None, max_parallel=max_parallel)
    except OSError as error:
        raise _fail(_listen_problem(f"--port {port}", host, port, error), 1) from None


@app.command()
def worker(
    model: Annotated[
        str, typer.Option(envvar="VIDEOBOT_MODEL", help="A Wan checkpoint: Hugging Face id or local folder.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8900,
    api_key: Annotated[str, typer.Option(envvar="WORKER_API_KEY", help="Require this bearer key.")] = "",
    preset: Annotated[
        str, typer.Option(envvar="VIDEOBOT_PRESET", help="quality (the model's steps) or fast (step-distilled LoRA).")
    ] = "quality",
    lora: Annotated[Optional[str], typer.Option(envvar="VIDEOBOT_LORA", help="Step-distillation LoRA for --preset fast.")] = None,
    offload: Annotated[
        str, typer.Option(envvar="VIDEOBOT_OFFLOAD", help="none, model or group: for GPUs smaller than the model.")
    ] = "none",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the transformer.")] = False,
    vae_tiling: Annotated[bool, typer.Option("--vae-tiling", help="Decode in tiles to save memory.")] = False,
    files_dir: Annotated[Path, typer.Option(help="Where finished clips are kept.")] = Path("videobot-worker"),
    engine: Annotated[
        str,
        typer.Option(help="http: serve the provider REST API; temporal: poll the Temporal gpu task queue "
                          "(TEMPORAL_ADDRESS, DATABASE_URL and VIDEOBOT_DATA_DIR as the bot has them)."),
    ] = "http",
    dtype: Annotated[str, typer.Option(help="bfloat16, float16 or float32 (float32 on a CPU).")] = "bfloat16",
) -> None:
    """Serve the provider REST API at http://HOST:PORT/v1 with the model on this machine's GPU,
    or with --engine temporal take GPU jobs from the Temporal gpu task queue, one at a time."""
    if engine not in ("http", "temporal"):
        raise _fail("--engine must be http or temporal.")
    settings = _settings() if engine == "temporal" else None
    configure_logging(_log_level(), [api_key] if api_key else [])
    try:
        from bot.gpu import LoadOptions, Offload, Preset, run_worker
    except ImportError as error:
        raise _fail(str(error), 1) from None

    try:
        options = LoadOptions(preset=Preset(preset.lower()), lora=lora or None, offload=Offload(offload.lower()),
                              compile=compile, vae_tiling=vae_tiling, dtype=dtype.lower())
    except ValueError:
        raise _fail("--preset must be quality or fast, and --offload none, model or group.") from None
    if settings is not None:
        from bot.temporal._gpu import run_gpu_worker

        try:
            asyncio.run(run_gpu_worker(settings, model, options))
        except VideobotError as error:
            raise _fail(str(error), 1) from None
        return
    try:
        run_worker(host, port, model, api_key or None, options=options, files_dir=files_dir)
    except OSError as error:
        raise _fail(_listen_problem(f"--port {port}", host, port, error), 1) from None


# typer >= 0.2x carries its own copy of click; the exceptions live beside ``typer.BadParameter``.
_clicks = sys.modules[typer.BadParameter.__module__]


def main() -> None:
    """The ``videobot`` entry point: a wrong flag or value is one line naming it, then a pointer
    to ``--help``, never a usage box or a traceback."""
    no_args = getattr(_clicks, "NoArgsIsHelpError", ())
    try:
        code = app(standalone_mode=False)
    except no_args as error:  # bare ``videobot``: the help, as before
        print(error.ctx.get_help() if error.ctx else "")
        code = 2
    except _clicks.UsageError as error:
        command = error.ctx.command_path if error.ctx else "videobot"
        _say(("Error:", "bold red"), f" {error.format_message()} (see {command} --help)")
        code = error.exit_code
    except _clicks.ClickException as error:
        _say(("Error:", "bold red"), f" {error.format_message()}")
        code = error.exit_code
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
