"""Settings from the environment: every mistake an admin can make is one line naming the
variable and what it takes, exit code 2, at start and in `videobot check-config` alike."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.settings import Settings, SettingsError
from tests.conftest import subprocess_env

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
_OURS = ("WAN_", "VIDEOBOT_", "SLACK_", "DISCORD_", "DASHSCOPE_", "FAL_", "REPLICATE_", "DATABASE_URL")

# (environment, the variable the line must name, words of what it takes)
MISTAKES = {
    "port-not-a-number": ({"VIDEOBOT_HTTP_PORT": "80x80"}, "VIDEOBOT_HTTP_PORT='80x80'", "a port number from 0 to 65535"),
    "port-too-big": ({"SLACK_PORT": "70000"}, "SLACK_PORT='70000'", "a port number from 0 to 65535"),
    "port-with-inline-comment": (
        {"VIDEOBOT_HTTP_PORT": "8080   # /healthz"}, "VIDEOBOT_HTTP_PORT", "put comments on their own line",
    ),
    "guild-id": ({"DISCORD_GUILD_IDS": "# sync commands"}, "DISCORD_GUILD_IDS", "comma-separated server ids"),
    "backend": ({"VIDEOBOT_BACKEND": "gpu"}, "VIDEOBOT_BACKEND='gpu'", "http, simulator, diffusers, dashscope, fal, replicate"),
    "url": ({"WAN_API_BASE_URL": "api.example.com/v1"}, "WAN_API_BASE_URL", "an http(s) URL"),
    "slack-url": ({"SLACK_API_URL": "ftp://slack.com/api/"}, "SLACK_API_URL", "an http(s) URL"),
    "provider-url": ({"REPLICATE_BASE_URL": "replicate"}, "REPLICATE_BASE_URL", "an http(s) URL"),
    "log-level": ({"VIDEOBOT_LOG_LEVEL": "loud"}, "VIDEOBOT_LOG_LEVEL='loud'", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    "offload": ({"VIDEOBOT_OFFLOAD": "cpu"}, "VIDEOBOT_OFFLOAD='cpu'", "none, model or group"),
    "preset": ({"VIDEOBOT_PRESET": "turbo"}, "VIDEOBOT_PRESET='turbo'", "quality or fast"),
    "allowed-hosts": ({"VIDEOBOT_ALLOWED_HOSTS": "ok.example.com,bad host"}, "VIDEOBOT_ALLOWED_HOSTS", "host:port"),
    "negative-concurrency": ({"VIDEOBOT_MAX_CONCURRENCY": "-1"}, "VIDEOBOT_MAX_CONCURRENCY", "0 or more"),
    "slack-without-app-token": (
        {"SLACK_BOT_TOKEN": "xoxb-1-2-3"}, "SLACK_BOT_TOKEN needs SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET",
    ),
    "slack-app-token-alone": ({"SLACK_APP_TOKEN": "xapp-1-2"}, "SLACK_APP_TOKEN is set but SLACK_BOT_TOKEN", "needs both"),
    "slack-user-token-as-bot-token": (
        {"SLACK_BOT_TOKEN": "xoxp-1-2", "SLACK_APP_TOKEN": "xapp-1-2"}, "SLACK_BOT_TOKEN is not valid", "xoxb-",
    ),
    "http-without-url": ({"VIDEOBOT_BACKEND": "http"}, "VIDEOBOT_BACKEND=http needs WAN_API_BASE_URL", "/v1"),
    "diffusers-without-model": ({"VIDEOBOT_BACKEND": "diffusers"}, "VIDEOBOT_BACKEND=diffusers needs VIDEOBOT_MODEL", "local folder"),
    "hosted-without-key": ({"VIDEOBOT_BACKEND": "fal"}, "VIDEOBOT_BACKEND=fal needs FAL_KEY", ""),
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith(_OURS):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.mark.parametrize(("env", "names", "takes"), MISTAKES.values(), ids=MISTAKES.keys())
def test_each_mistake_is_one_line_naming_the_variable(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], names: str, takes: str
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env()
    assert len(caught.value.problems) == 1, caught.value.problems
    line = caught.value.problems[0]
    assert "\n" not in line
    assert names in line and takes in line


def test_a_secret_is_never_repeated_in_its_error(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SLACK_BOT_TOKEN", "not-a-token-but-secret")
    clean_env.setenv("SLACK_APP_TOKEN", "xapp-1")
    with pytest.raises(SettingsError) as caught:
        Settings.from_env()
    assert "not-a-token-but-secret" not in str(caught.value)
    assert "SLACK_BOT_TOKEN is not valid: it takes a bot token starting xoxb-." in str(caught.value)


def test_every_mistake_at_once_is_listed(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("VIDEOBOT_HTTP_PORT", "x")
    clean_env.setenv("VIDEOBOT_LOG_LEVEL", "x")
    with pytest.raises(SettingsError) as caught:
        Settings.from_env()
    assert [p.split("=")[0] for p in caught.value.problems] == ["VIDEOBOT_HTTP_PORT", "VIDEOBOT_LOG_LEVEL"]


def test_good_values_are_typed(clean_env: pytest.MonkeyPatch) -> None:
    env = {
        "VIDEOBOT_BACKEND": " HTTP ", "WAN_API_BASE_URL": "http://gpu-host:8900/v1", "DISCORD_GUILD_IDS": "123, 456",
        "VIDEOBOT_ALLOWED_HOSTS": "Hooks.Example.com, 10.0.0.5:8443,[::1]:9000", "VIDEOBOT_LOG_LEVEL": "debug",
        "VIDEOBOT_OFFLOAD": "Group", "VIDEOBOT_COMPILE": "yes", "VIDEOBOT_HTTP_PORT": "0", "SLACK_BOT_TOKEN": "xoxb-1",
        "SLACK_SIGNING_SECRET": "s3cret", "VIDEOBOT_DATA_DIR": "/data", "FAL_QUEUE_RUN_HOST": "127.0.0.1:9000",
    }
    for name, value in env.items():
        clean_env.setenv(name, value)
    settings = Settings.from_env()
    assert settings.backend == "http" and settings.wan_api_base_url == "http://gpu-host:8900/v1"
    assert settings.discord_guild_ids == (123, 456)
    assert settings.allowed_hosts == ("hooks.example.com", "10.0.0.5:8443", "[::1]:9000")
    assert (settings.log_level, settings.gpu_offload, settings.gpu_compile) == ("DEBUG", "group", True)
    assert settings.http_port == 0 and settings.data_dir == Path("/data") and settings.fal_host == "127.0.0.1:9000"


def test_empty_values_mean_the_defaults(clean_env: pytest.MonkeyPatch) -> None:
    for name in ("VIDEOBOT_BACKEND", "VIDEOBOT_HTTP_PORT", "DISCORD_GUILD_IDS", "VIDEOBOT_ALLOWED_HOSTS", "VIDEOBOT_COMPILE"):
        clean_env.setenv(name, "")
    assert Settings.from_env() == Settings(ssl_cert_file=os.environ.get("SSL_CERT_FILE", "").strip())


def _docker_env_file(path: Path) -> dict[str, str]:
    """Read a file the way Docker's ``env_file`` / ``--env-file`` does: ``KEY=VALUE`` taken
    literally (no inline comments, no quote removal), ``#`` lines and blank lines skipped."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value
    return env


def test_env_example_works_unchanged_as_a_docker_env_file(clean_env: pytest.MonkeyPatch) -> None:
    env = _docker_env_file(ROOT / ".env.example")
    assert not any("#" in value for value in env.values()), "inline comments would be read as values"
    for name, value in env.items():
        clean_env.setenv(name, value)
    settings = Settings.from_env(dotenv=False)
    assert settings.backend == "simulator" and settings.discord_token == "" and settings.slack_bot_token == ""
    # the image's own paths (/data, /config/videobot.toml) are not overridden
    assert not env.get("VIDEOBOT_DATA_DIR") and not env.get("VIDEOBOT_LIMITS")


def test_env_example_lists_every_setting() -> None:
    from bot.settings import EnvironmentSettings

    text = (ROOT / ".env.example").read_text()
    listed = set(_docker_env_file(ROOT / ".env.example")) | set(re.findall(r"^# ([A-Z_]+)=", text, re.MULTILINE))
    variables = {str(f.validation_alias) for f in EnvironmentSettings.model_fields.values()} - {"SSL_CERT_FILE"}
    assert variables - listed == set()


# -- the same lines from the command, with exit code 2 -----------------------------------------


def _videobot(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in subprocess_env(tmp_path).items() if not k.startswith(_OURS)}
    full.update(VIDEOBOT_DATA_DIR=str(tmp_path / "data"), VIDEOBOT_LIMITS=str(tmp_path / "videobot.toml"))
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=50, check=False
    )


@pytest.mark.parametrize(("env", "names", "takes"), MISTAKES.values(), ids=MISTAKES.keys())
def test_check_config_fails_on_each_mistake_with_its_line(
    tmp_path: Path, env: dict[str, str], names: str, takes: str
) -> None:
    result = _videobot(tmp_path, "check-config", **env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and names in lines[0] and takes in lines[0], lines
    assert "OK settings" not in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["serve", "generate", "jobs"])
def test_every_command_refuses_bad_settings_in_one_line(tmp_path: Path, command: str) -> None:
    args = [command, "a fox"] if command == "generate" else [command]
    result = _videobot(tmp_path, *args, DISCORD_GUILD_IDS="# enables the Discord adapter")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (
            "Error: DISCORD_GUILD_IDS='# enables the Discord adapter' is not valid: it takes comma-separated server "
            "ids (numbers), e.g. 123456789012345678,234567890123456789."
        )
    ]


def test_check_config_says_ok_for_what_serve_accepts(tmp_path: Path) -> None:
    result = _videobot(tmp_path, "check-config", SLACK_BOT_TOKEN="xoxb-1", SLACK_APP_TOKEN="xapp-1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("OK settings; limits:")


def test_simulator_and_worker_read_dot_env_like_serve(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("VIDEOBOT_LOG_LEVEL=loud\n")
    for command in (["simulator", "--port", "0"], ["worker", "--model", "none"], ["serve"]):
        result = _videobot(tmp_path, *command)
        assert result.returncode == 2, (command, result.stderr)
        assert "VIDEOBOT_LOG_LEVEL='loud' is not valid" in result.stderr


def test_check_config_names_a_backend_table_whose_key_is_missing(tmp_path: Path) -> None:
    (tmp_path / "videobot.toml").write_text('[backends.final]\ntype = "fal"\n')
    result = _videobot(tmp_path, "check-config")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: [backends.final] is type fal, which needs FAL_KEY."
    assert _videobot(tmp_path, "check-config", FAL_KEY="fal-key-1").returncode == 0
