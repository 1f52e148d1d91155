"""Every setting videobot reads from the environment, read once, in one place.

Secrets (tokens, API keys) come from here only; ``secret_values`` lists them so the log filter
can mask them wherever they might appear.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import load_dotenv


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _str(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


@dataclass(frozen=True)
class Settings:
    # which generator: "http" (a provider or our worker), "simulator" (built in), "diffusers" (local GPU)
    backend: str = "simulator"
    wan_api_base_url: str = ""
    wan_api_key: str = field(default="", repr=False)
    wan_model: str = "wan-2.6"
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
    # operations: /healthz and /metrics; 0 turns the endpoint off
    http_port: int = 8080
    http_host: str = "0.0.0.0"
    # bearer key for the job API (POST /v1/jobs); unset turns the API off
    api_key: str = field(default="", repr=False)
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
                self.slack_bot_token,
                self.slack_app_token,
                self.slack_signing_secret,
                self.discord_token,
            )
            if s
        ]

    @classmethod
    def from_env(cls, *, dotenv: bool = True) -> "Settings":
        """Read the environment (and ``.env`` in the working folder, which never overrides it)."""
        if dotenv:
            load_dotenv(Path.cwd() / ".env", override=False)
        base_url = _str("WAN_API_BASE_URL")
        guilds = tuple(int(g) for g in _str("DISCORD_GUILD_IDS").replace(" ", "").split(",") if g)
        return cls(
            backend=_str("VIDEOBOT_BACKEND", "http" if base_url else "simulator").lower(),
            wan_api_base_url=base_url,
            wan_api_key=_str("WAN_API_KEY"),
            wan_model=_str("WAN_MODEL", "wan-2.6"),
            dashscope_api_key=_str("DASHSCOPE_API_KEY"),
            dashscope_base_url=_str("DASHSCOPE_HTTP_BASE_URL", "https://dashscope-intl.aliyuncs.com/api/v1"),
            fal_key=_str("FAL_KEY"),
            fal_host=_str("FAL_QUEUE_RUN_HOST", "queue.fal.run"),
            ssl_cert_file=_str("SSL_CERT_FILE"),
            replicate_api_token=_str("REPLICATE_API_TOKEN"),
            replicate_base_url=_str("REPLICATE_BASE_URL", "https://api.replicate.com"),
            t2v_model=_str("VIDEOBOT_T2V_MODEL"),
            i2v_model=_str("VIDEOBOT_I2V_MODEL"),
            database_url=_str("DATABASE_URL"),
            data_dir=Path(_str("VIDEOBOT_DATA_DIR", "./videobot-data")),
            limits_path=Path(_str("VIDEOBOT_LIMITS", "videobot.toml")),
            max_concurrency=_int("VIDEOBOT_MAX_CONCURRENCY", 0),
            poll_interval_s=_float("VIDEOBOT_POLL_INTERVAL", 5.0),
            progress_interval_s=_float("VIDEOBOT_PROGRESS_INTERVAL", 3.0),
            job_timeout_s=_float("VIDEOBOT_JOB_TIMEOUT", 1800.0),
            max_download_bytes=_int("VIDEOBOT_MAX_DOWNLOAD_BYTES", 200 * 1024 * 1024),
            download_stall_s=_float("VIDEOBOT_DOWNLOAD_STALL_TIMEOUT", 30.0),
            media_retention_days=_int("VIDEOBOT_MEDIA_RETENTION_DAYS", 7),
            lease_ttl_s=_float("VIDEOBOT_LEASE_TTL", 30.0),
            http_port=_int("VIDEOBOT_HTTP_PORT", 8080),
            http_host=_str("VIDEOBOT_HTTP_HOST", "0.0.0.0"),
            api_key=_str("VIDEOBOT_API_KEY"),
            log_level=_str("VIDEOBOT_LOG_LEVEL", "INFO").upper(),
            slack_bot_token=_str("SLACK_BOT_TOKEN"),
            slack_app_token=_str("SLACK_APP_TOKEN"),
            slack_signing_secret=_str("SLACK_SIGNING_SECRET"),
            slack_port=_int("SLACK_PORT", 3000),
            slack_api_url=_str("SLACK_API_URL", "https://slack.com/api/"),
            discord_token=_str("DISCORD_TOKEN"),
            discord_guild_ids=guilds,
            videobot_model=_str("VIDEOBOT_MODEL"),
            gpu_preset=_str("VIDEOBOT_PRESET", "quality").lower(),
            gpu_lora=_str("VIDEOBOT_LORA"),
            gpu_offload=_str("VIDEOBOT_OFFLOAD", "none").lower(),
            gpu_compile=_str("VIDEOBOT_COMPILE").lower() in ("1", "true", "yes"),
            gpu_vae_tiling=_str("VIDEOBOT_VAE_TILING").lower() in ("1", "true", "yes"),
        )
