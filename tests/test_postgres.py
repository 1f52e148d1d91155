"""PostgreSQL storage, where several `videobot` processes share one database: the schema migrates
the same as on SQLite, and the quota, deduplication, cancel and the engine lease hold when two
replicas write at once. Runs on a throwaway cluster (``tests/pg.py``) in every run."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from bot.errors import LimitExceeded
from bot.grammar import parse_request
from bot.models import TaskStatus
from storage.engine import MIGRATIONS_DIR, make_engine, upgrade
from storage.repository import JobRepository
from storage.tables import Job
from tests.conftest import webhook_origin

pytestmark = pytest.mark.timeout(90)


def _alembic(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def test_migrations_upgrade_a_postgresql_database_and_keep_its_jobs(postgres_url: str) -> None:
    """A database at the previous release's revision (0002) keeps its jobs at head; the schema
    also goes down to nothing and up again, as on SQLite."""
    engine = make_engine(postgres_url)
    with engine.begin() as connection:
        command.upgrade(_alembic(connection), "0002")
    old = Job(prompt="kept", platform="slack", workspace_id="T1", channel_id="C1", user_id="U1",
              origin_extra={"thread": "1700000000.000100"})  # fmt: skip
    with engine.begin() as connection:
        jobs = sa.Table("jobs", sa.MetaData(), autoload_with=connection)
        row = {column.name: getattr(old, column.name) for column in jobs.columns if column.name != "id"}
        connection.execute(jobs.insert().values(**row))
    upgrade(engine)
    [job] = JobRepository(engine).recent()
    assert (job.prompt, job.model, job.audio, job.loop, job.shots) == ("kept", "", False, False, "single")
    assert job.origin_extra == {"thread": "1700000000.000100"}
    assert job.created_at.utcoffset() is not None and abs(job.created_at - old.created_at).total_seconds() < 1e-3
    with engine.begin() as connection:
        assert connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0004"
        assert connection.execute(sa.text("SELECT count(*) FROM leases")).scalar_one() == 0
        columns = {c["name"]: c["type"] for c in sa.inspect(connection).get_columns("jobs")}
        assert isinstance(columns["created_at"], sa.DateTime) and columns["created_at"].timezone
    with engine.begin() as connection:
        command.downgrade(_alembic(connection), "base")
    with engine.begin() as connection:
        assert set(sa.inspect(connection).get_table_names()) == {"alembic_version"}
    upgrade(engine)
    assert JobRepository(engine).recent() == []
    engine.dispose()


# -- two replicas on one database ----------------------------------------------------------

SMALL = 'resolutions = ["832x480"]\n'


async def _replicas(make_core, postgres_url: str, limits: str, *, drive: bool = False):
    """Two cores on one PostgreSQL database, each with its own engine and database thread, as two
    `videobot serve` processes have; the first drives jobs when ``drive``."""
    first = await make_core(limits, start=drive, database_url=postgres_url)
    second = await make_core(limits, start=False, database_url=postgres_url)
    return first, second


async def test_fifty_submits_through_two_replicas_under_a_limit_of_five_admit_exactly_five(
    make_core, receiver, postgres_url
) -> None:
    one, two = await _replicas(make_core, postgres_url, f"[defaults]\nuser_daily_jobs = 5\nuser_concurrent_jobs = 0\n{SMALL}")
    origin = webhook_origin(receiver)
    request = parse_request("a fox in the snow --resolution 832x480")
    results = await asyncio.gather(
        *(core.service.submit(request, origin) for _ in range(25) for core in (one, two)), return_exceptions=True
    )
    accepted = [r for r in results if isinstance(r, Job)]
    refused = [r for r in results if isinstance(r, LimitExceeded)]
    assert len(accepted) == 5 and len(refused) == 45, [r for r in results if not isinstance(r, (Job, LimitExceeded))]
    assert len({job.id for job in accepted}) == 5
    assert len(one.service.db.repo.recent(100)) == 5


async def test_the_same_event_reaching_two_replicas_makes_one_job(make_core, receiver, postgres_url) -> None:
    """A platform's retry landing on the other replica, at the same moment: one job, and the
    repeat is answered with it, not refused by the quota the first one used up."""
    one, two = await _replicas(make_core, postgres_url, f"[defaults]\nuser_daily_jobs = 1\n{SMALL}")
    origin = webhook_origin(receiver)
    request = parse_request("a heron at dawn --resolution 832x480")
    results = await asyncio.gather(
        *(core.service.submit(request, origin, dedup_key="slack:Ev042") for _ in range(10) for core in (one, two)),
        return_exceptions=True,
    )
    assert all(isinstance(r, Job) for r in results), results
    assert len({job.id for job in results}) == 1
    assert len(two.service.db.repo.recent(100)) == 1


async def test_a_replica_that_did_not_make_the_job_cancels_it(make_core, receiver, postgres_url) -> None:
    """The driving replica notices the cancel in the database, stops the provider task and
    delivers nothing."""
    driver, other = await _replicas(make_core, postgres_url, f"[defaults]\nuser_concurrent_jobs = 0\n{SMALL}", drive=True)
    owner = webhook_origin(receiver)
    job = await driver.service.submit(parse_request("[sim:hang] stars --duration 1 --resolution 832x480"), owner)
    for _ in range(200):
        running = await other.service.status(job.id)
        if running.state == "running":
            break
        await asyncio.sleep(0.05)
    assert running.state == "running" and running.task_id
    canceled = await other.service.cancel(job.id, owner)
    assert canceled.state == "canceled" and canceled.counts_toward_quota  # it had started
    for _ in range(200):
        if not driver.runner.active_count:
            break
        await asyncio.sleep(0.05)
    assert driver.runner.active_count == 0
    task = await driver.backend.poll(running.task_id)
    assert task.status is not TaskStatus.RUNNING
    assert (await driver.service.status(job.id)).state == "canceled"
    assert not [d for d in receiver.deliveries.values() if d.job_id == job.id]
