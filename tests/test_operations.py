"""What an operator relies on: health and metrics, the job API's answers, secrets kept out, schema upgrades."""

from __future__ import annotations

import logging
import sqlite3

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from adapters.webhook import job_routes
from bot.backends.http import HttpBackend
from bot.grammar import parse_request
from bot.logs import RedactSecrets
from bot.provider.server import bound_port, serve_provider
from bot.provider.simulator import build_simulator_app
from storage.engine import MIGRATIONS_DIR, make_engine, upgrade
from storage.repository import JobRepository
from storage.tables import Job
from tests.conftest import assert_not_stored, webhook_origin

pytestmark = pytest.mark.timeout(60)

SMALL = '[defaults]\nresolutions = ["832x480"]\nuser_concurrent_jobs = 0\n'
SECRET = "sk-live-SECRET-4f9a2b7c"


async def test_healthz_and_metrics_report_jobs_by_state(make_core, receiver) -> None:
    core = await make_core(SMALL)
    port = await core.serve_ops("127.0.0.1", 0)
    job = await core.service.submit(parse_request("a mill --duration 1 --resolution 832x480"), webhook_origin(receiver))
    await receiver.wait_for(job.id, "delivered")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        health = (await client.get("/healthz")).json()
        metrics = (await client.get("/metrics")).text
    assert health["status"] == "ok" and health["backend"] == "simulator" and "webhook" in health["platforms"]
    assert 'videobot_jobs{state="succeeded"} 1.0' in metrics
    assert "videobot_queue_depth 0.0" in metrics
    assert 'videobot_stage_seconds_count{stage="delivering"} 1.0' in metrics


async def test_job_api_answers_with_the_users_messages(make_core, receiver) -> None:
    core = await make_core(SMALL + "user_daily_jobs = 1\n", start=False)
    port = await core.serve_ops("127.0.0.1", 0, job_routes(core.service, "api-key-123456"))
    headers = {"Authorization": "Bearer api-key-123456"}
    body = {"prompt": "a dam --resolution 832x480", "callback_url": receiver.url, "user_id": "u1"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.post("/v1/jobs", json=body)).status_code == 401
        bad = await client.post("/v1/jobs", json={**body, "prompt": "a dam --fps 30"}, headers=headers)
        assert bad.status_code == 400 and bad.json()["error"] == "--fps must be 16 or 24 (got 30)."
        first = await client.post("/v1/jobs", json={**body, "request_id": "r1"}, headers=headers)
        again = await client.post("/v1/jobs", json={**body, "request_id": "r1"}, headers=headers)
        assert first.status_code == again.status_code == 202 and first.json()["job_id"] == again.json()["job_id"]
        over = await client.post("/v1/jobs", json=body, headers=headers)
        assert over.status_code == 429 and "used 1 of your 1 videos" in over.json()["error"]
        shown = await client.get(f"/v1/jobs/{first.json()['job_id']}", headers=headers)
        assert shown.json()["state"] == "queued"


async def test_the_provider_key_never_reaches_logs_errors_or_the_database(
    make_core, receiver, tmp_path, caplog, another_database
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = await serve_provider(build_simulator_app(files_dir=tmp_path / "sim", api_key=SECRET), "127.0.0.1", 0)
    try:
        good = HttpBackend(f"http://127.0.0.1:{bound_port(provider)}/v1", SECRET, name="http", max_retries=0)
        core = await make_core(SMALL, backend=good)
        job = await core.service.submit(parse_request("a tower --duration 1 --resolution 832x480"), webhook_origin(receiver))
        await receiver.wait_for(job.id, "delivered")
        wrong = HttpBackend(f"http://127.0.0.1:{bound_port(provider)}/v1", SECRET + "-wrong", max_retries=0)
        core2 = await make_core(SMALL, backend=wrong, data_dir=tmp_path / "data2", database_url=another_database())
        failed = await core2.service.submit(parse_request("a tower --duration 1 --resolution 832x480"), webhook_origin(receiver))
        message = (await receiver.wait_for(failed.id, "failed"))["message"]
        assert "rejected our API key" in message and SECRET not in message
    finally:
        await provider.cleanup()
    assert SECRET not in caplog.text
    assert_not_stored(SECRET, core.settings.database, core2.settings.database)


def test_log_filter_masks_secrets_in_messages_and_tracebacks() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "calling %s", (f"https://x/?key={SECRET}",), None)
    try:
        raise RuntimeError(f"boom {SECRET}")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    RedactSecrets([SECRET]).filter(record)
    assert SECRET not in record.getMessage() and SECRET not in (record.exc_text or "")
    assert "***" in record.getMessage()


@pytest.mark.sqlite  # on PostgreSQL: tests/test_postgres.py
def test_upgrading_an_existing_database_keeps_its_jobs(tmp_path) -> None:
    """A database written by the previous release (revision 0002) keeps its jobs at head."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
    old = Job(prompt="kept", platform="slack", workspace_id="T1", channel_id="C1", user_id="U1")
    with engine.begin() as connection:
        jobs = sa.Table("jobs", sa.MetaData(), autoload_with=connection)
        row = {column.name: getattr(old, column.name) for column in jobs.columns if column.name != "id"}
        connection.execute(jobs.insert().values(**row))
    engine.dispose()
    engine = make_engine(url)
    upgrade(engine)
    [job] = JobRepository(engine).recent()
    assert (job.prompt, job.model, job.audio) == ("kept", "", False)
    engine.dispose()
    with sqlite3.connect(tmp_path / "old.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0004"
        assert raw.execute("SELECT count(*) FROM leases").fetchone()[0] == 0
