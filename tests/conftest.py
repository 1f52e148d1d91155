"""Shared fixtures: a core on a fresh SQLite file (or PostgreSQL database, ``tests/pg.py``) with
the simulator, and a webhook receiver."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.app import Core
from bot.models import Origin
from bot.settings import Settings
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.pg import on_postgres, postgres_cluster, postgres_url, start_before_tests  # noqa: F401  (fixtures)

SettingsFactory = Callable[..., Settings]

FORBID_SKIPS = "VIDEOBOT_FORBID_SKIPS"
"""Set (by .ci/run) to fail the run when any test but a ``cuda``-marked one is skipped: CI has
every extra installed, so a skip there means a test silently stopped running."""

_unexpected_skips: list[str] = []


def _record_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and "cuda" not in report.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _unexpected_skips.append(f"{report.nodeid}: {reason.removeprefix('Skipped: ')}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record_skip(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _record_skip(report)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput") or not os.environ.get(FORBID_SKIPS) or not _unexpected_skips:
        return
    writer = session.config.get_terminal_writer()
    writer.line()
    writer.line(f"{FORBID_SKIPS}: only CUDA tests may be skipped here, but these were:", red=True)
    for line in _unexpected_skips:
        writer.line(f"  {line}", red=True)
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


async def start_serve(env: dict[str, str], log: Path, health_url: str, timeout: float = 60) -> asyncio.subprocess.Process:
    """Start `videobot serve` (output appended to ``log``) and return once ``health_url`` answers
    200. The wait is generous because a loaded 2-core machine took over 15 s to start one; a
    process that exits meanwhile ends the wait at once, its log in the failure."""
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "serve", stdout=out, stderr=out, env=env)
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline and process.returncode is None:
            try:
                if (await client.get(health_url)).status_code == 200:
                    return process
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"serve did not start (exit code {process.returncode}):\n{log.read_text()}")


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for a `videobot` subprocess: this machine's, minus any videobot, provider
    or platform setting, plus a data folder and limits file of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAN_", "VIDEOBOT_", "SLACK_", "DISCORD_"))}
    env.update(VIDEOBOT_DATA_DIR=str(tmp_path / "data"), VIDEOBOT_LIMITS=str(tmp_path / "videobot.toml"),
               VIDEOBOT_POLL_INTERVAL="0.2")
    env.update(extra)
    return env


def this_database() -> str:
    """This test's ``database_url`` (what the ``database_url`` fixture gives), for settings a test
    builds itself rather than through ``make_settings``: "" (the SQLite file in the data folder),
    or this test's PostgreSQL database when the run is on PostgreSQL."""
    return os.environ.get("DATABASE_URL", "")


def stored_at(tmp_path: Path) -> str:
    """The database URL a `videobot` subprocess with ``subprocess_env(tmp_path)`` stores its jobs
    at: this test's PostgreSQL database (``DATABASE_URL``), else the SQLite file in its data folder."""
    return this_database() or f"sqlite:///{tmp_path / 'data' / 'videobot.db'}"


def assert_not_stored(secret: str, *urls: str) -> None:
    """``secret`` is nowhere in these databases: in a SQLite file's bytes (and its WAL), or in
    any row of a PostgreSQL database's tables."""
    from sqlalchemy import inspect, text

    from storage.engine import make_engine

    for url in urls:
        if url.startswith("sqlite"):
            database = Path(url.split(":///", 1)[1])
            stored = list(database.parent.glob(database.name + "*"))
            assert stored, f"no database at {database}"
            assert not [path for path in stored if secret.encode() in path.read_bytes()], f"{secret} stored in {database}"
            continue
        engine = make_engine(url)
        try:
            with engine.connect() as db:
                for table in inspect(db).get_table_names():
                    rows = db.execute(text(f'SELECT * FROM "{table}"')).fetchall()
                    assert secret not in str(rows), f"{secret} stored in {table}"
        finally:
            engine.dispose()


@pytest.fixture
def another_database(request: pytest.FixtureRequest, database_url: str) -> Callable[[], str]:
    """Makes the ``database_url`` of a second, separate store for this test: "" (the SQLite file
    of another data folder) on SQLite, a fresh PostgreSQL database when the run is on it."""
    if not database_url:
        return lambda: ""
    return request.getfixturevalue("postgres_cluster").database


@pytest.fixture(autouse=True)
def outbound_hosts() -> Any:
    """Each test starts with no admin-configured outbound hosts (``bot.outbound``) and leaves none."""
    from bot import outbound

    outbound.configure()
    yield
    outbound.configure()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.option.collectonly:
        start_before_tests(items)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite: about the SQLite file itself; stays on SQLite when the suite runs on PostgreSQL")


@pytest.fixture(autouse=True)
def database_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test's database URL: "" (a SQLite file in the data folder) unless the run is on
    PostgreSQL (``VIDEOBOT_TEST_DATABASE=postgresql``); then a fresh database of its own, also
    handed to `videobot` subprocesses as ``DATABASE_URL`` (which is unset otherwise: a
    developer's own never reaches a test)."""
    if not on_postgres() or request.node.get_closest_marker("sqlite"):
        monkeypatch.delenv("DATABASE_URL", raising=False)
        return ""
    url = str(request.getfixturevalue("postgres_url"))
    monkeypatch.setenv("DATABASE_URL", url)
    return url


@pytest.fixture(scope="module")
def module_database_url(request: pytest.FixtureRequest) -> str:
    """``database_url`` for a module-scoped fixture (a `videobot serve` that a file's tests share),
    which is set up before any test's own: "" on SQLite, else a fresh PostgreSQL database; hand
    it to the subprocess as ``DATABASE_URL``."""
    if not on_postgres():
        return ""
    return str(request.getfixturevalue("postgres_cluster").database())


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> SettingsFactory:
    """Settings on this test's own data folder; ``limits`` is the TOML text admins would write."""

    def make(limits: str = "", **overrides: Any) -> Settings:
        path = tmp_path / "videobot.toml"
        path.write_text(limits)
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "limits_path": path,
            "poll_interval_s": 0.2,
            "progress_interval_s": 0.0,
            "http_port": 0,
            "database_url": database_url,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[WebhookReceiver]:
    folder = tmp_path / "received"
    folder.mkdir()
    hook = await WebhookReceiver(folder).start()
    from bot import outbound

    outbound.allow(f"127.0.0.1:{hook.port}")  # a receiver on the LAN, as VIDEOBOT_ALLOWED_HOSTS lists it
    yield hook
    await hook.stop()


@pytest.fixture
async def make_core(make_settings: SettingsFactory) -> AsyncIterator[Callable[..., Any]]:
    """Start a core (simulator backend unless given) with the webhook notifier registered."""
    from adapters.webhook import WebhookNotifier

    started: list[tuple[Core, WebhookNotifier]] = []

    async def make(limits: str = "", *, start: bool = True, **overrides: Any) -> Core:
        backend = overrides.pop("backend", None)
        core = await Core.create(make_settings(limits, **overrides), backend=backend)
        notifier = WebhookNotifier()
        core.service.register_notifier(notifier)
        started.append((core, notifier))
        if start:
            await core.start()
        return core

    yield make
    for core, notifier in started:
        await core.stop()
        await notifier.aclose()


def webhook_origin(receiver: WebhookReceiver, user: str = "alice", **fields: Any) -> Origin:
    values: dict[str, Any] = {
        "platform": "webhook",
        "workspace_id": "acme",
        "channel_id": "general",
        "user_id": user,
        "user_name": user.title(),
        "extra": {"callback_url": receiver.url},
    }
    values.update(fields)
    return Origin(**values)
