"""PostgreSQL storage, where several `videobot` processes share one database: the schema migrates
the same as on SQLite, and the quota, deduplication, cancel and the engine lease hold when two
replicas write at once. Runs on a throwaway cluster (``tests/pg.py``) in every run."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from bot.database import Database
from bot.errors import LimitExceeded, StoreUnavailable
from bot.grammar import parse_request
from bot.models import TaskStatus
from storage.engine import MIGRATIONS_DIR, make_engine, upgrade
from storage.repository import JobRepository
from storage.tables import Job, JobState, Lease
from tests.conftest import subprocess_env, webhook_origin

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


# -- the engine lease and a server that goes away ---------------------------------------------


def test_two_processes_racing_to_take_the_first_lease_both_get_an_answer(postgres_url: str) -> None:
    """The lease row does not exist yet and two processes insert it at once: one holds it, the
    other is told who does (not an IntegrityError at start)."""
    engines = [make_engine(postgres_url) for _ in range(4)]
    upgrade(engines[0])
    repos = [JobRepository(engine) for engine in engines]
    for round_ in range(15):
        name = f"engine-{round_}"
        gate = threading.Barrier(len(repos))

        def take(index: int, name: str = name, gate: threading.Barrier = gate) -> Lease:
            gate.wait()
            claim = Lease(name=name, holder=f"p{index}", host="h", pid=index + 1, detail=f"process {index}")
            return repos[index].acquire_lease(claim, 30.0)

        with ThreadPoolExecutor(len(repos)) as pool:
            answers = list(pool.map(take, range(len(repos))))
        holders = {lease.holder for lease in answers}
        assert len(holders) == 1, answers
        assert repos[0].get_lease(name).holder in holders
    for engine in engines:
        engine.dispose()


def _set_database(postgres_cluster, url: str, setting: str) -> None:
    """ALTER the test's database and end its open sessions, as a failover or a restart would."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(f"host=127.0.0.1 port={postgres_cluster.port} user=postgres dbname=postgres",
                         autocommit=True) as admin:  # fmt: skip
        admin.execute(f'ALTER DATABASE "{name}" {setting}')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


@pytest.mark.parametrize(
    ("refuse", "allow", "why"),
    [
        ("WITH ALLOW_CONNECTIONS false", "WITH ALLOW_CONNECTIONS true", "not currently accepting connections"),
        ("SET default_transaction_read_only = on", "RESET default_transaction_read_only", "read-only transaction"),
    ],
    ids=["unreachable", "read-only"],
)
async def test_a_postgresql_server_that_refuses_writes_holds_jobs_until_it_is_back(
    postgres_cluster, postgres_url: str, refuse: str, allow: str, why: str
) -> None:
    """A lost connection or a read-only server (a standby after a failover) is ``StoreUnavailable``:
    a person's call fails at once, the runner's write waits and lands once the server is back."""
    engine = make_engine(postgres_url)
    upgrade(engine)
    db = Database(JobRepository(engine))
    try:
        job, _, _ = await db.interactive(db.repo.create, Job(prompt="p", platform="webhook", workspace_id="w",
                                                              channel_id="c", user_id="u"))  # fmt: skip
        _set_database(postgres_cluster, postgres_url, refuse)
        with pytest.raises(StoreUnavailable) as refused:
            await db.interactive(db.repo.probe_write)
        assert why in refused.value.reason and db.unwritable == refused.value.reason
        landing = asyncio.create_task(db.persist(db.repo.transition, job.id, JobState.SUBMITTED,
                                                 expect=[JobState.QUEUED], task_id="t-1"))  # fmt: skip
        await asyncio.sleep(0.6)
        assert not landing.done()
        _set_database(postgres_cluster, postgres_url, allow)
        moved = await asyncio.wait_for(landing, 20)
        assert (moved.state, moved.task_id) == ("submitted", "t-1") and db.unwritable is None
        assert await db.probe() is None
    finally:
        _set_database(postgres_cluster, postgres_url, allow)
        db.close()


# -- a real `videobot serve` on PostgreSQL -------------------------------------------------------

API_KEY = "vb-test-key-0123456789"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_videobot_serve_on_postgresql_delivers_a_job_once(tmp_path: Path, receiver, postgres_url: str) -> None:
    """DATABASE_URL=postgresql+psycopg://… is all it takes: the job API's request sent twice makes
    one job, its clip is delivered, and a second serve on the same database is refused."""
    (tmp_path / "videobot.toml").write_text(f"[defaults]\nuser_concurrent_jobs = 0\n{SMALL}")
    port = _free_port()
    env = subprocess_env(tmp_path, DATABASE_URL=postgres_url, VIDEOBOT_API_KEY=API_KEY, VIDEOBOT_HTTP_PORT=str(port),
                         VIDEOBOT_HTTP_HOST="127.0.0.1", VIDEOBOT_ALLOWED_HOSTS="127.0.0.1", VIDEOBOT_LOG_LEVEL="INFO")  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "serve", stdout=out, stderr=out, env=env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(400):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert serve.returncode is None, log.read_text()
                await asyncio.sleep(0.05)
            body = {"prompt": "a lighthouse --duration 1 --resolution 832x480", "callback_url": receiver.url, "user_id": "ann",
                    "request_id": "evt-1"}  # fmt: skip
            answers = [await client.post("/v1/jobs", headers={"Authorization": f"Bearer {API_KEY}"}, json=body)
                       for _ in range(2)]  # fmt: skip
            assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
            job_ids = {a.json()["job_id"] for a in answers}
            assert len(job_ids) == 1
            [job_id] = job_ids
            delivered = await receiver.wait_for(job_id, "delivered", 60)
            assert delivered["job_id"] == job_id
        second = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "serve", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**env, "VIDEOBOT_HTTP_PORT": "0"},
        )
        said = (await asyncio.wait_for(second.communicate(), 60))[0].decode()
        assert second.returncode == 1 and "Another videobot serve drives this database" in said, said
    finally:
        serve.terminate()
        await serve.wait()
    text = log.read_text()
    assert f"Database: {postgres_url}" in text, text
    engine = make_engine(postgres_url)
    [job] = JobRepository(engine).recent()
    engine.dispose()
    assert (job.id, job.state, job.dedup_key) == (job_id, "succeeded", "webhook:evt-1")
