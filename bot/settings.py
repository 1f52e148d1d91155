"""Every setting videobot reads from the environment, read once, in one place.

``Settings.from_env()`` reads the environment (and ``.env``) through a typed pydantic-settings
model, ``EnvironmentSettings``: every variable is checked at start, and each mistake becomes one
line naming the variable and what it accepts (``SettingsError.problems``), never a traceback.
The same check backs ``videobot check-config``, so what it calls OK is what ``serve`` accepts.

``Settings`` itself stays a plain frozen dataclass: tests and the composition root build it
directly, with no environment involved.

Secrets (tokens, API keys) come from here only; ``secret_values`` lists them so the log filter
can mask them wherever they might appear. An error about a secret never repeats its value.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from dotenv import load_dotenv
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.errors import ConfigurationError

BACKENDS = ("http", "simulator", "diffusers", "dashscope", "fal", "replicate")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
HOSTED_KEYS = {"dashscope": "DASHSCOPE_API_KEY", "fal": "FAL_KEY", "replicate": "REPLICATE_API_TOKEN"}


@dataclass(frozen=True)
class Settings:
    # which generator: "http" (a provider or our worker), "simulator" (built in), "diffusers"
    # (local GPU), or a hosted provider ("dashscope", "fal", "replicate")
    backend: str = "simulator"
    wan_api_base_url: str = ""
    wan_api_key: str = field(default="", repr=False)
    wan_model: str = "wan-2.6"
    # http and simulator: the generator makes sound (`videobot simulator --audio`); the built-in
    # simulator then gives its clips a tone
    wan_audio: bool = False
    # hosted providers (VIDEOBOT_BACKEND=dashscope, fal or replicate); keys stay in the environment
    dashscope_api_key: str = field(default="", repr=False)
    dashscope_base_url: str = "https://dashscope-intl.aliyuncs.com/api/v1"
    fal_key: str = field(default="", repr=False)
    fal_host: str = "queue.fal.run"
    ssl_cert_file: str = ""
    replicate_api_token: str = field(default="", repr=False)
    replicate_base_url: str = "https://api.replicate.com"
    # the provider model ids for each mode; empty: the backend's default (bot/catalog.py)
    t2v_model: str = ""
    i2v_model: str = ""
    # outbound requests may also go to these hosts ("host" or "host:port"), beyond the backends'
    allowed_hosts: tuple[str, ...] = ()
    # storage: any SQLAlchemy URL; by default a SQLite file in the data folder
    database_url: str = ""
    data_dir: Path = Path("./videobot-data")
    limits_path: Path = Path("videobot.toml")
    # runner: how many backend tasks may run at once (0: the backend's own default)
    max_concurrency: int = 0
    poll_interval_s: float = 5.0
    progress_interval_s: float = 3.0
    job_timeout_s: float = 1800.0
    max_download_bytes: int = 200 * 1024 * 1024
    # a clip download that brings under 64 KiB in this many seconds is cut as stalled
    download_stall_s: float = 30.0
    media_retention_days: int = 7
    # the engine lease: one serve drives a database; a standby takes over this long after a crash
    lease_ttl_s: float = 30.0
    # what runs jobs: "embedded" (this process, under the lease) or "temporal" (workflows on a
    # Temporal server; any number of serve replicas and GPU workers, no lease)
    engine: str = "embedded"
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_task_queue_prefix: str = "videobot"
    # a worker that has not heartbeated for this long is presumed dead; its step runs elsewhere
    temporal_heartbeat_timeout_s: float = 30.0
    # operations: /healthz and /metrics; 0 turns the endpoint off
    http_port: int = 8080
    http_host: str = "0.0.0.0"
    # bearer key for the job API (POST /v1/jobs); unset turns the API off
    api_key: str = field(default="", repr=False)
    # the admin page at /admin on the same port; unset turns it off
    admin_token: str = field(default="", repr=False)
    # the one workspace the job API key may act in; empty: any workspace and user id it names
    api_workspace: str = ""
    log_level: str = "INFO"
    # Slack
    slack_bot_token: str = field(default="", repr=False)
    slack_app_token: str = field(default="", repr=False)
    slack_signing_secret: str = field(default="", repr=False)
    slack_port: int = 3000
    slack_api_url: str = "https://slack.com/api/"
    # Discord
    discord_token: str = field(default="", repr=False)
    discord_guild_ids: tuple[int, ...] = ()
    # sharding across replicas: the total number of shards (0: one connection, unsharded) and the
    # shards this process connects (empty: all of them); each id below the count
    discord_shard_count: int = 0
    discord_shard_ids: tuple[int, ...] = ()
    # local GPU (VIDEOBOT_BACKEND=diffusers, and `videobot worker` defaults)
    videobot_model: str = ""
    gpu_preset: str = "quality"
    gpu_lora: str = ""
    gpu_offload: str = "none"
    gpu_compile: bool = False
    gpu_vae_tiling: bool = False

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'videobot.db').resolve()}"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def secret_values(self) -> list[str]:
        return [
            s
            for s in (
                self.wan_api_key,
                self.dashscope_api_key,
                self.fal_key,
                self.replicate_api_token,
                self.api_key,
                self.admin_token,
                self.slack_bot_token,
                self.slack_app_token,
                self.slack_signing_secret,
                self.discord_token,
            )
            if s
        ]

    @classmethod
    def from_env(cls, *, dotenv: bool = True) -> "Settings":
        """Read the environment (and ``.env`` in the working folder, which never overrides it).

        Raises ``SettingsError`` listing every variable that is wrong, one line each.
        """
        if dotenv:
            load_env_file()
        try:
            environment = EnvironmentSettings()
        except ValidationError as error:
            raise SettingsError([_problem(e) for e in error.errors()]) from None
        values = environment.model_dump()
        if not values["backend"]:
            values["backend"] = "http" if values["wan_api_base_url"] else "simulator"
        settings = cls(**values)
        problems = requirement_problems(settings)
        if problems:
            raise SettingsError(problems)
        return settings


class SettingsError(ConfigurationError):
    """Environment settings that videobot cannot run with; ``problems`` holds one line for each,
    naming the variable and what it accepts (``str()`` joins them with newlines)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_env_file(folder: Path | None = None) -> None:
    """Load ``.env`` from ``folder`` (default: the working folder) into the environment; a
    variable already set wins. Every command reads it, ``serve``, ``simulator`` and ``worker`` alike."""
    load_dotenv((folder or Path.cwd()) / ".env", override=False)


# -- the typed reading of the environment ----------------------------------------------------

_SECRETS = {
    "WAN_API_KEY", "DASHSCOPE_API_KEY", "FAL_KEY", "REPLICATE_API_TOKEN", "VIDEOBOT_API_KEY", "VIDEOBOT_ADMIN_TOKEN",
    "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "DISCORD_TOKEN",
}  # fmt: skip
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(\d{1,5}))?$")
_URL = "an http(s) URL such as "
_PORT = "a port number from 0 to 65535"


def _env(name: str, accepts: str, **kwargs: Any) -> Any:
    return Field(validation_alias=name, description=accepts, **kwargs)


class EnvironmentSettings(BaseSettings):
    """The environment as typed fields named like ``Settings``'; each field's alias is its
    variable and its description says what the variable accepts (the error message's words).

    Unset and empty variables both mean the default, as in ``.env.example``'s empty lines.
    """

    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore")

    backend: Literal["", "http", "simulator", "diffusers", "dashscope", "fal", "replicate"] = _env(
        "VIDEOBOT_BACKEND", f"one of {', '.join(BACKENDS)} (empty: http with WAN_API_BASE_URL, else simulator)",
        default="",
    )
    wan_api_base_url: str = _env("WAN_API_BASE_URL", _URL + "https://api.your-provider.com/v1", default="")
    wan_api_key: str = _env("WAN_API_KEY", "the provider's key", default="")
    wan_model: str = _env("WAN_MODEL", "the provider's model slug", default="wan-2.6")
    wan_audio: bool = _env("WAN_AUDIO", "1 or 0 (true/false, yes/no)", default=False)
    dashscope_api_key: str = _env("DASHSCOPE_API_KEY", "a DashScope API key", default="")
    dashscope_base_url: str = _env(
        "DASHSCOPE_HTTP_BASE_URL", _URL + "https://dashscope-intl.aliyuncs.com/api/v1",
        default="https://dashscope-intl.aliyuncs.com/api/v1",
    )
    fal_key: str = _env("FAL_KEY", "a fal.ai key", default="")
    fal_host: str = _env("FAL_QUEUE_RUN_HOST", "a host name or host:port such as queue.fal.run", default="queue.fal.run")
    ssl_cert_file: str = _env("SSL_CERT_FILE", "a path to a CA bundle", default="")
    replicate_api_token: str = _env("REPLICATE_API_TOKEN", "a Replicate API token", default="")
    replicate_base_url: str = _env(
        "REPLICATE_BASE_URL", _URL + "https://api.replicate.com", default="https://api.replicate.com"
    )
    t2v_model: str = _env("VIDEOBOT_T2V_MODEL", "a provider model id", default="")
    i2v_model: str = _env("VIDEOBOT_I2V_MODEL", "a provider model id", default="")
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = _env(
        "VIDEOBOT_ALLOWED_HOSTS", "comma-separated host names or host:port, e.g. hooks.example.com,10.0.0.5:8443",
        default=(),
    )
    database_url: str = _env("DATABASE_URL", "an SQLAlchemy URL such as postgresql+psycopg://user@host/videobot",
                             default="")  # fmt: skip
    data_dir: Path = _env("VIDEOBOT_DATA_DIR", "a folder path", default=Path("./videobot-data"))
    limits_path: Path = _env("VIDEOBOT_LIMITS", "a path to the limits TOML file", default=Path("videobot.toml"))
    max_concurrency: int = _env("VIDEOBOT_MAX_CONCURRENCY", "a whole number, 0 or more (0: the backend's default)",
                                default=0, ge=0)  # fmt: skip
    poll_interval_s: float = _env("VIDEOBOT_POLL_INTERVAL", "seconds, more than 0", default=5.0, gt=0)
    progress_interval_s: float = _env("VIDEOBOT_PROGRESS_INTERVAL", "seconds, 0 or more", default=3.0, ge=0)
    job_timeout_s: float = _env("VIDEOBOT_JOB_TIMEOUT", "seconds, more than 0", default=1800.0, gt=0)
    max_download_bytes: int = _env("VIDEOBOT_MAX_DOWNLOAD_BYTES", "a whole number of bytes, more than 0",
                                   default=200 * 1024 * 1024, gt=0)  # fmt: skip
    download_stall_s: float = _env("VIDEOBOT_DOWNLOAD_STALL_TIMEOUT", "seconds, more than 0", default=30.0, gt=0)
    lease_ttl_s: float = _env("VIDEOBOT_LEASE_TTL", "seconds, more than 0", default=30.0, gt=0)
    engine: Literal["embedded", "temporal"] = _env("VIDEOBOT_ENGINE", "embedded or temporal", default="embedded")
    temporal_address: str = _env("TEMPORAL_ADDRESS", "host:port of the Temporal frontend, e.g. localhost:7233",
                                 default="localhost:7233")  # fmt: skip
    temporal_namespace: str = _env("TEMPORAL_NAMESPACE", "a Temporal namespace", default="default")
    temporal_task_queue_prefix: str = _env("TEMPORAL_TASK_QUEUE_PREFIX", "a task queue name prefix, e.g. videobot",
                                           default="videobot", min_length=1)  # fmt: skip
    temporal_heartbeat_timeout_s: float = _env("TEMPORAL_HEARTBEAT_TIMEOUT", "seconds, more than 0", default=30.0, gt=0)
    media_retention_days: int = _env("VIDEOBOT_MEDIA_RETENTION_DAYS", "a whole number of days, 0 or more",
                                     default=7, ge=0)  # fmt: skip
    http_port: int = _env("VIDEOBOT_HTTP_PORT", _PORT + " (0 turns /healthz and /metrics off)",
                          default=8080, ge=0, le=65535)  # fmt: skip
    http_host: str = _env("VIDEOBOT_HTTP_HOST", "an address to listen on, e.g. 0.0.0.0 or 127.0.0.1",
                          default="0.0.0.0")  # fmt: skip
    api_key: str = _env("VIDEOBOT_API_KEY", "a bearer key", default="")
    admin_token: str = _env("VIDEOBOT_ADMIN_TOKEN", "a long random secret", default="")
    api_workspace: str = _env("VIDEOBOT_API_WORKSPACE", "a workspace id", default="")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = _env(
        "VIDEOBOT_LOG_LEVEL", f"one of {', '.join(LOG_LEVELS)}", default="INFO"
    )
    slack_bot_token: str = _env("SLACK_BOT_TOKEN", "a bot token starting xoxb-", default="")
    slack_app_token: str = _env("SLACK_APP_TOKEN", "an app-level token starting xapp-", default="")
    slack_signing_secret: str = _env("SLACK_SIGNING_SECRET", "the app's signing secret", default="")
    slack_port: int = _env("SLACK_PORT", _PORT, default=3000, ge=0, le=65535)
    slack_api_url: str = _env("SLACK_API_URL", _URL + "https://slack.com/api/", default="https://slack.com/api/")
    discord_token: str = _env("DISCORD_TOKEN", "the bot token from the Discord developer portal", default="")
    discord_guild_ids: Annotated[tuple[int, ...], NoDecode] = _env(
        "DISCORD_GUILD_IDS", "comma-separated server ids (numbers), e.g. 123456789012345678,234567890123456789",
        default=(),
    )
    discord_shard_count: int = _env(
        "DISCORD_SHARD_COUNT", "the total number of shards across every replica, a whole number (0: not sharded)",
        default=0, ge=0,
    )
    discord_shard_ids: Annotated[tuple[int, ...], NoDecode] = _env(
        "DISCORD_SHARD_IDS", "comma-separated shard numbers counted from 0, e.g. 0,1", default=()
    )
    videobot_model: str = _env("VIDEOBOT_MODEL", "a Hugging Face model id or a local folder", default="")
    gpu_preset: Literal["quality", "fast"] = _env("VIDEOBOT_PRESET", "quality or fast", default="quality")
    gpu_lora: str = _env("VIDEOBOT_LORA", "a LoRA id or path", default="")
    gpu_offload: Literal["none", "model", "group"] = _env("VIDEOBOT_OFFLOAD", "none, model or group", default="none")
    gpu_compile: bool = _env("VIDEOBOT_COMPILE", "1 or 0 (true/false, yes/no)", default=False)
    gpu_vae_tiling: bool = _env("VIDEOBOT_VAE_TILING", "1 or 0 (true/false, yes/no)", default=False)

    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("backend", "engine", "gpu_preset", "gpu_offload", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("wan_api_base_url", "dashscope_base_url", "replicate_base_url", "slack_api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value:
            _check_url(value)
        return value

    @field_validator("temporal_address")
    @classmethod
    def _temporal(cls, value: str) -> str:
        _check_host(value)
        return value

    @field_validator("fal_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if value.startswith(("http://", "https://")):
            _check_url(value)
        else:
            _check_host(value)
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            hosts = tuple(h.strip().lower() for h in value.split(",") if h.strip())
            for host in hosts:
                _check_host(host)
            return hosts
        return value

    @field_validator("discord_guild_ids", mode="before")
    @classmethod
    def _guilds(cls, value: Any) -> Any:
        if isinstance(value, str):
            ids = [g.strip() for g in value.split(",") if g.strip()]
            if not all(g.isdigit() and int(g) > 0 for g in ids):
                raise ValueError("not a list of ids")
            return tuple(int(g) for g in ids)
        return value

    @field_validator("discord_shard_ids", mode="before")
    @classmethod
    def _shards(cls, value: Any) -> Any:
        if isinstance(value, str):
            ids = [s.strip() for s in value.split(",") if s.strip()]
            if not all(s.isdigit() for s in ids):
                raise ValueError("not a list of shard numbers")
            return tuple(int(s) for s in ids)
        return value

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token(cls, value: str) -> str:
        if value and not value.startswith("xoxb-"):
            raise ValueError("not a bot token")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token(cls, value: str) -> str:
        if value and not value.startswith("xapp-"):
            raise ValueError("not an app-level token")
        return value


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise ValueError(f"{url!r} is not an http(s) URL")


def _check_host(host: str) -> None:
    match = _HOST.match(host)
    if not match or (match.group(1) and int(match.group(1)) > 65535):
        raise ValueError(f"{host!r} is not a host or host:port")


def _problem(error: Any) -> str:
    """One line for one pydantic error: the variable, what it holds (unless secret), what it accepts."""
    name = str(error["loc"][0]) if error["loc"] else "?"
    info = EnvironmentSettings.model_fields.get(_FIELD_BY_ALIAS.get(name, ""))
    accepts = info.description if info is not None else error["msg"]
    raw = os.environ.get(name, "")
    shown = "" if name in _SECRETS else f"={raw.strip()!r}"
    hint = ""
    if re.search(r"\s#", raw):
        hint = " (a comment after the value is read as part of it: put comments on their own line)"
    return f"{name}{shown} is not valid: it takes {accepts}.{hint}"


_FIELD_BY_ALIAS = {str(f.validation_alias): n for n, f in EnvironmentSettings.model_fields.items()}


def requirement_problems(settings: Settings) -> list[str]:
    """Settings that are each valid but do not work together; what ``serve`` would refuse."""
    problems: list[str] = []
    backend = settings.backend
    if backend == "http" and not settings.wan_api_base_url:
        problems.append("VIDEOBOT_BACKEND=http needs WAN_API_BASE_URL (the provider's /v1 URL).")
    if backend == "diffusers" and not settings.videobot_model:
        problems.append("VIDEOBOT_BACKEND=diffusers needs VIDEOBOT_MODEL (a Hugging Face id or a local folder).")
    if backend in HOSTED_KEYS and not getattr(settings, _HOSTED_FIELDS[backend]):
        problems.append(f"VIDEOBOT_BACKEND={backend} needs {HOSTED_KEYS[backend]}.")
    if settings.slack_bot_token and not (settings.slack_app_token or settings.slack_signing_secret):
        problems.append(
            "SLACK_BOT_TOKEN needs SLACK_APP_TOKEN (xapp-…, Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)."
        )
    if not settings.slack_bot_token and (settings.slack_app_token or settings.slack_signing_secret):
        given = "SLACK_APP_TOKEN" if settings.slack_app_token else "SLACK_SIGNING_SECRET"
        problems.append(f"{given} is set but SLACK_BOT_TOKEN (xoxb-…) is not; the Slack adapter needs both.")
    problems += discord_shard_problems(settings.discord_shard_count, settings.discord_shard_ids)
    return problems


def discord_shard_problems(count: int, ids: tuple[int, ...]) -> list[str]:
    """What is wrong with ``DISCORD_SHARD_COUNT`` and ``DISCORD_SHARD_IDS`` together, one line each."""
    shown = ",".join(map(str, ids))
    if ids and not count:
        return [
            f"DISCORD_SHARD_IDS={shown} needs DISCORD_SHARD_COUNT (the total number of shards across every replica)."
        ]
    wrong = [i for i in ids if i >= count]
    if wrong:
        return [
            f"DISCORD_SHARD_IDS={shown} is not valid: shard ids count from 0 and stay below "
            f"DISCORD_SHARD_COUNT={count}, so {', '.join(map(str, wrong))} cannot be one."
        ]
    if len(set(ids)) != len(ids):
        return [f"DISCORD_SHARD_IDS={shown} names a shard twice; list each shard once."]
    return []


_HOSTED_FIELDS = {"dashscope": "dashscope_api_key", "fal": "fal_key", "replicate": "replicate_api_token"}


def backend_table_problems(settings: Settings, tables: Any) -> list[str]:
    """What the limits file's ``[backends.NAME]`` tables need from the environment (their keys
    stay there): the same refusals ``serve`` would meet when it builds them."""
    problems: list[str] = []
    for table in tables:
        if table.type in HOSTED_KEYS and not getattr(settings, _HOSTED_FIELDS[table.type]):
            problems.append(f"[backends.{table.name}] is type {table.type}, which needs {HOSTED_KEYS[table.type]}.")
        if table.type == "http" and not settings.wan_api_base_url:
            problems.append(f"[backends.{table.name}] is type http, which needs WAN_API_BASE_URL.")
    return problems
