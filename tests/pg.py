"""A throwaway PostgreSQL cluster for the tests, and a fresh database in it per test.

``postgres_cluster`` (one per session, so one per xdist worker) runs Debian's server binaries
(``/usr/lib/postgresql/*/bin``) on a free loopback port with its socket and data in a temporary
folder and ``fsync=off``: it starts in well under a second and leaves nothing behind.
``postgres_url`` creates an empty database from ``template0`` for one test and yields its
SQLAlchemy URL (``postgresql+psycopg://postgres@127.0.0.1:PORT/tN``).

Where the binaries or psycopg are missing, both fixtures skip with the reason; ``.ci/run``
installs them and counts any such skip as a failure (``VIDEOBOT_FORBID_SKIPS``).

``VIDEOBOT_TEST_DATABASE=postgresql`` runs the whole suite on PostgreSQL: ``tests/conftest.py``
then gives every test's settings (and every ``videobot`` subprocess, through ``DATABASE_URL``)
a database of its own here. Tests marked ``sqlite`` are about the SQLite file itself and stay
on it.
"""

from __future__ import annotations

import atexit
import importlib.util
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TEST_DATABASE = "VIDEOBOT_TEST_DATABASE"
"""``postgresql`` runs the suite's storage on PostgreSQL; unset or ``sqlite``: on SQLite files."""

INSTALL_HINT = "apt-get install -y postgresql, and pip install 'psycopg[binary]'"


def on_postgres() -> bool:
    """Whether this run puts every test's storage on PostgreSQL."""
    return os.environ.get(TEST_DATABASE, "sqlite").strip().lower() in ("postgresql", "postgres", "pg")


def server_binaries() -> Path | None:
    """The newest installed server's bin folder (the one holding ``initdb`` and ``pg_ctl``)."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()]
    if not found:
        return None
    return max(found, key=lambda folder: _version(folder.parent.name))


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresCluster:
    """One server on loopback, in a folder of its own; ``database()`` makes an empty database."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.root = Path(tempfile.mkdtemp(prefix="videobot-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._names = itertools.count(1)
        self._admin: object | None = None
        # initdb refuses to run as root: as root, the server runs as Debian's postgres user
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def start(self) -> PostgresCluster:
        (self.root / "owner").write_text(str(os.getpid()))
        if self._as:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(self.binaries / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")  # fmt: skip
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB -c timezone=UTC"
        )
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-w", "-t", "60", "-o", options, "start")  # fmt: skip
        atexit.register(self.stop)
        self._watch()
        return self

    def _watch(self) -> None:
        """Stop the server when this process dies without stopping it (a killed test run)."""
        stop = " ".join([*self._as, str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])
        script = (f"while kill -0 {os.getpid()} 2>/dev/null && [ -d {self.data} ]; do sleep 1; done; "
                  f"if [ -d {self.data} ]; then {stop} >/dev/null 2>&1; rm -rf {self.root}; fi")  # fmt: skip
        subprocess.Popen(["sh", "-c", script], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        if self._admin is None:
            self._admin = psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                                          autocommit=True)  # fmt: skip
        name = f"t{next(self._names)}"
        self._admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')  # type: ignore[attr-defined]
        return self.url(name)

    def stop(self) -> None:
        if not self.data.exists():
            return
        if self._admin is not None:
            self._admin.close()  # type: ignore[attr-defined]
            self._admin = None
        subprocess.run([*self._as, str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                        "stop"], capture_output=True, timeout=60, check=False)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


def _sweep(binaries: Path) -> None:
    """Stop clusters whose test run was killed before it could (their owner process is gone)."""
    for root in Path(tempfile.gettempdir()).glob("videobot-pg-*"):
        try:
            os.kill(int((root / "owner").read_text()), 0)
            continue  # its run is alive
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, str(binaries / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w",
                        "stop"], capture_output=True, timeout=60, check=False)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def start_cluster() -> PostgresCluster:
    """Start a cluster, or skip the asking test with what to install."""
    binaries = server_binaries()
    if binaries is None:
        pytest.skip(f"PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin ({INSTALL_HINT})")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip(f"psycopg is not installed ({INSTALL_HINT})")
    _sweep(binaries)
    started = time.monotonic()
    cluster = PostgresCluster(binaries).start()
    cluster.started_in_s = time.monotonic() - started  # type: ignore[attr-defined]
    return cluster


_early: PostgresCluster | Exception | None = None


def start_before_tests(items: list[pytest.Item]) -> None:
    """Start this process's cluster once the tests are collected, when the run is on PostgreSQL
    or one of ``items`` uses it: initdb on a busy machine can take longer than the first test's
    own timeout (10 s in some files), and a session fixture that failed errors every later test.
    Where the binaries or psycopg are missing, ``postgres_cluster`` skips as before."""
    global _early
    if _early is not None or server_binaries() is None or importlib.util.find_spec("psycopg") is None:
        return
    if on_postgres() or any("postgres_cluster" in item.fixturenames for item in items):
        try:
            _early = start_cluster()
        except Exception as error:  # reported by the first test that asks for the cluster
            _early = error


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL server for this session (this xdist worker)."""
    if isinstance(_early, Exception):
        raise _early
    cluster = _early or start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh, empty database for this test: its ``postgresql+psycopg://`` URL."""
    return postgres_cluster.database()
