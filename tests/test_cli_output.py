"""What an admin sees at the command line: one-line errors for every mistake, whole lines off a
terminal, text printed as written (no rich markup), and no Alembic chatter."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import Job, JobState
from storage.engine import make_engine, upgrade
from storage.repository import JobRepository
from tests.conftest import stored_at, subprocess_env

pytestmark = pytest.mark.timeout(60)


def videobot(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=tmp_path, env=subprocess_env(tmp_path, **env),
        capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_version(tmp_path: Path) -> None:
    result = videobot(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.startswith("videobot ")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["simulator", "--fail-rate", "2"], "Invalid value for '--fail-rate'"),
        (["simulator", "--port", "70000"], "Invalid value for '--port'"),
        (["jobs", "--limit", "many"], "Invalid value for '--limit'"),
        (["generate", "a fox", "--dur", "5"], "No such option: --dur"),
        (["serve", "--now"], "No such option: --now"),
        (["server"], "No such command 'server'"),
    ],
    ids=["fail-rate", "port", "limit", "unknown-option", "serve-option", "unknown-command"],
)
def test_a_bad_flag_is_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    result = videobot(tmp_path, *args)
    assert result.returncode == 2
    line = _one_error_line(result)
    assert words in line and "--help" in line


def test_simulator_on_a_port_in_use(tmp_path: Path, busy_port: int) -> None:
    result = videobot(tmp_path, "simulator", "--port", str(busy_port))
    assert result.returncode == 1
    assert f"--port {busy_port}: port {busy_port} on 127.0.0.1 is already in use" in _one_error_line(result)


def test_serve_on_a_port_in_use(tmp_path: Path, busy_port: int) -> None:
    result = videobot(tmp_path, "serve", VIDEOBOT_HTTP_PORT=str(busy_port), VIDEOBOT_HTTP_HOST="127.0.0.1",
                      VIDEOBOT_LOG_LEVEL="WARNING")  # fmt: skip
    assert result.returncode == 1
    assert f"VIDEOBOT_HTTP_PORT: port {busy_port} on 127.0.0.1 is already in use" in _one_error_line(result)


def test_worker_without_the_gpu_extra(tmp_path: Path) -> None:
    blocked = tmp_path / "no-gpu-extra" / "torch"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'torch\'", name="torch")\n')
    env = subprocess_env(tmp_path)
    env["PYTHONPATH"] = f"{blocked.parent}:{env.get('PYTHONPATH', '')}"
    result = subprocess.run([sys.executable, "-m", "bot", "worker", "--model", "x"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=50, check=False)  # fmt: skip
    assert result.returncode == 1
    assert "needs the gpu extra: pip install 'videobot[gpu]'" in _one_error_line(result)


@pytest.mark.sqlite  # the SQLite file's folder cannot be made
@pytest.mark.parametrize("command", ["serve", "jobs", "generate"])
def test_a_database_that_cannot_be_opened(tmp_path: Path, command: str) -> None:
    (tmp_path / "file").write_text("not a folder")
    args = [command, "a fox"] if command == "generate" else [command]
    result = videobot(tmp_path, *args, VIDEOBOT_DATA_DIR=str(tmp_path / "file" / "data"), VIDEOBOT_HTTP_PORT="0")
    assert result.returncode in (1, 2)
    line = _one_error_line(result)
    assert "Could not open the database sqlite:///" in line and "check VIDEOBOT_DATA_DIR" in line


def test_a_database_url_whose_driver_is_missing_hides_the_password(tmp_path: Path) -> None:
    result = videobot(tmp_path, "jobs", DATABASE_URL="postgresql+nosuchdriver://bot:hunter2@db.example/videobot")
    line = _one_error_line(result)
    assert "DATABASE_URL=postgresql+nosuchdriver://bot:***@db.example/videobot" in line and "hunter2" not in line


# -- output ------------------------------------------------------------------------------------


def _store_jobs(tmp_path: Path) -> None:
    engine = make_engine(stored_at(tmp_path))
    upgrade(engine)
    repository = JobRepository(engine)
    for state in JobState:
        repository.create(Job(
            prompt="[table] a fox in [bold]snow[/bold]", platform="slack", workspace_id="T1", channel_id="C1",
            user_id="U1", user_name="[red]mallory[/red]", state=state.value,
            error="[sim:fail] asked to fail" if state is JobState.FAILED else None,
        ))  # fmt: skip


def test_jobs_in_a_pipe_shows_whole_states_and_text_as_written(tmp_path: Path) -> None:
    _store_jobs(tmp_path)
    result = videobot(tmp_path, "jobs", COLUMNS="60", VIDEOBOT_LOG_LEVEL="INFO")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "mallory" in line]
    assert len(rows) == len(JobState)
    for state in JobState:
        assert any(f" {state.value} " in row for row in rows), (state, result.stdout)
    assert all("[table] a fox in [bold]snow[/bold]" in row and "[red]mallory[/red]" in row for row in rows)
    assert any("[sim:fail] asked to fail" in row for row in rows)
    assert result.stderr == ""  # no Alembic lines: the schema was current


def test_migrations_say_one_line_when_they_run_and_nothing_after(tmp_path: Path) -> None:
    first = videobot(tmp_path, "jobs", VIDEOBOT_LOG_LEVEL="INFO")
    assert first.returncode == 0
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and "database: migrating the schema from empty to" in lines[0], first.stderr
    assert "alembic" not in first.stderr
    again = videobot(tmp_path, "usage", VIDEOBOT_LOG_LEVEL="INFO")
    assert again.returncode == 0 and again.stderr == ""


def test_messages_print_bracketed_text_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from bot import cli

    console = cli.make_console(stderr=True)
    console.print(cli.Text("use [table] or [bold]x[/bold]"))
    with pytest.raises(typer.Exit):
        raise cli._fail("the prompt [table] is blocked")
    cli._say(("Job #1 failed:", "bold red"), " ", "[sim:fail] asked to fail")
    err = capsys.readouterr().err
    assert "use [table] or [bold]x[/bold]" in err
    assert "Error: the prompt [table] is blocked" in err
    assert "Job #1 failed: [sim:fail] asked to fail" in err


def test_off_a_terminal_long_lines_are_not_wrapped(capsys: pytest.CaptureFixture[str]) -> None:
    from bot import cli

    cli._say("x" * 300)
    assert capsys.readouterr().err.strip() == "x" * 300
