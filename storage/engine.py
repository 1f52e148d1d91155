"""Engine set-up and schema migrations.

SQLite is the embedded default: WAL so readers never wait for the writer, a busy timeout so a
second process waits instead of failing, ``synchronous=NORMAL`` (durable at every checkpoint,
safe against process crashes, which is what a kill -9 is). Any SQLAlchemy URL works through
``DATABASE_URL``; PostgreSQL (``postgresql+psycopg://``) is the one tested beside SQLite, for
several processes sharing one database. Its sessions run in UTC, so timestamps read back the
same on both. The schema is owned by Alembic and upgraded on start, so a newer release
upgrades an existing database in place without losing jobs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """Create an engine for ``url``; SQLite files get their folder, WAL and a busy timeout."""
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, connect_args={"options": "-c timezone=UTC"})
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000, "isolation_level": None},
        poolclass=NullPool if path == ":memory:" else None,
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn) -> None:  # type: ignore[no-untyped-def]
        # Take the write lock at BEGIN: a quota check and the insert it allows must not
        # interleave with another writer's, in this process or another.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_MIGRATION_LOCK = 0x76626D67  # "vbmg": the advisory lock key migrations take on PostgreSQL


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision; one log line when a migration runs, nothing
    (and no Alembic chatter) when the schema is already current."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Several processes may start on one new database at once: one migrates, the others
            # wait here for its commit and then find the schema current.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        current = MigrationContext.configure(connection).get_current_revision()
        if current == head:
            return
        log.info("database: migrating the schema from %s to %s", current or "empty", head)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
