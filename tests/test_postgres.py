"""PostgreSQL storage, where several `videobot` processes share one database: the schema migrates
the same as on SQLite, and the quota, deduplication, cancel and the engine lease hold when two
replicas write at once. Runs on a throwaway cluster (``tests/pg.py``) in every run."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from storage.engine import MIGRATIONS_DIR, make_engine, upgrade
from storage.repository import JobRepository
from storage.tables import Job

import pytest

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
