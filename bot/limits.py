"""The admins' usage-limits file (``videobot.toml``): what it may say, which limits apply where,
and when daily and monthly windows reset.

The file is checked in full when it is loaded, so a typo in a key or a value stops the bot at
start (or is ignored on a live edit) with a message that names the key, instead of quietly
meaning "no limit". ``videobot.example.toml`` documents every key.

Limits are resolved per scope, widest first, in one place (``LimitsConfig.resolve``):

    built-in defaults → [defaults] → [workspaces."platform:id"] → [workspaces."…".channels.ID]

Each key comes from the narrowest scope that sets it; a list replaces the wider one, it is not
merged. A count or budget of 0 in the file means unlimited and becomes ``None`` in
``EffectiveLimits``, so callers test ``is None`` and never confuse "0 allowed" with "no limit".

Times: the database holds naive UTC datetimes, so every function here takes and returns naive
UTC; the admin's time zone only decides where a window's midnight falls.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import reprlib
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from bot.catalog import TIERS, tier_of
from bot.models import Origin, Resolution

log = logging.getLogger(__name__)

MAX_SIDE = 1920
"""Largest width or height a resolution in the file may name, in pixels."""

_BYTES_PER_MB = 1024 * 1024
_PIXELS_PER_MEGAPIXEL = 1_000_000


class LimitsError(ValueError):
    """The limits file cannot be used; each line of the message names the file and one key.

    ``problems`` holds those lines separately for callers that show them one by one.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


# --- the file's schema ------------------------------------------------------------------------


def _scoped_id(text: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9]*:\S+", text):
        raise ValueError("expected platform:id")
    return text


def _zone_name(text: str) -> str:
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError("unknown time zone") from exc
    return text


def _resolution(text: str) -> str:
    if text.strip().lower() in TIERS:
        return text.strip().lower()
    size = Resolution.parse(text)
    if not all(0 < side <= MAX_SIDE and side % 16 == 0 for side in (size.width, size.height)):
        raise ValueError("sides must be multiples of 16")
    return str(size)


def _backend_name(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", text):
        raise ValueError("lowercase letters, digits, - and _")
    return text


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("blank")
    return text


_ScopedId = Annotated[str, AfterValidator(_scoped_id)]
_Text = Annotated[str, AfterValidator(_not_blank)]
_ResolutionText = Annotated[str, AfterValidator(_resolution)]
_BackendName = Annotated[str, AfterValidator(_backend_name)]
# Upper bounds keep every later sum and conversion finite (a cooldown of 1e20 s has no date).
_COUNT_MAX = 1_000_000_000
_COOLDOWN_MAX_S = 366 * 24 * 3600
_IMAGE_MB_MAX = 1024
_MEGAPIXELS_MAX = 1000
_USD_MAX = 1_000_000_000.0
_Count = Annotated[int, Field(ge=0, le=_COUNT_MAX)]
_Usd = Annotated[float, Field(ge=0, le=_USD_MAX, allow_inf_nan=False)]


class _Table(BaseModel):
    """Every table of the file: an unknown key or a value of the wrong type is an error, never
    coerced, because a silently misread limit is worse than a refusal to start."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class _Limits(_Table):
    """The limits of one scope. A key left out (``None``) inherits from the wider scope."""

    max_duration_s: Annotated[int, Field(ge=1, le=60)] | None = None
    resolutions: Annotated[list[_ResolutionText], Field(min_length=1)] | None = None
    fps: Annotated[list[Literal[16, 24]], Field(min_length=1)] | None = None
    max_prompt_chars: Annotated[int, Field(ge=1, le=_COUNT_MAX)] | None = None
    blocked_terms: list[_Text] | None = None
    user_daily_jobs: _Count | None = None
    user_concurrent_jobs: _Count | None = None
    workspace_daily_jobs: _Count | None = None
    cooldown_s: Annotated[int, Field(ge=0, le=_COOLDOWN_MAX_S)] | None = None
    allowed_channels: list[_Text] | None = None
    user_monthly_budget_usd: _Usd | None = None
    workspace_monthly_budget_usd: _Usd | None = None
    backend: _BackendName | None = None
    backends: list[_BackendName] | None = None


class _Workspace(_Limits):
    channels: dict[_Text, _Limits] = {}


class _Pricing(_Table):
    # $0.06-0.10 per 5 s clip from third-party WAN 2.6 providers: the upper end, so a budget
    # errs towards stopping early rather than overspending.
    http: _Usd = 0.02
    simulator: _Usd = 0.0
    diffusers: _Usd = 0.0


class _Backend(_Table):
    """One generator the bot runs. Keys and secrets stay in the environment."""

    type: Literal["dashscope", "fal", "replicate", "http", "simulator"]
    t2v_model: _Text | None = None
    i2v_model: _Text | None = None
    concurrency: Annotated[int, Field(ge=1, le=64)] | None = None
    price_per_second: _Usd | None = None
    resolution: Literal["480p", "720p", "1080p"] = "720p"
    label: _Text | None = None


class _File(_Table):
    timezone: Annotated[str, AfterValidator(_zone_name)] = "UTC"
    admins: list[_ScopedId] = []
    discord_manage_server_is_admin: bool = False
    queue_cap: _Count = 200
    max_image_mb: Annotated[float, Field(gt=0, le=_IMAGE_MB_MAX)] = 20
    max_image_megapixels: Annotated[float, Field(gt=0, le=_MEGAPIXELS_MAX)] = 100
    pricing: _Pricing = _Pricing()
    backends: dict[_BackendName, _Backend] = {}
    defaults: _Limits = _Limits()
    workspaces: dict[_ScopedId, _Workspace] = {}


_BUILTIN_LIMITS = _Limits(
    max_duration_s=10,
    resolutions=["1280x720", "720x1280", "960x960", "832x480", "480x832"],
    fps=[16, 24],
    max_prompt_chars=2000,
    blocked_terms=[],
    user_daily_jobs=20,
    user_concurrent_jobs=2,
    workspace_daily_jobs=200,
    cooldown_s=0,
    allowed_channels=[],
    user_monthly_budget_usd=0,
    workspace_monthly_budget_usd=0,
    backends=[],
)
"""The widest scope: what applies when the file (or its [defaults]) leaves a key out."""


# --- turning pydantic's errors into one line per problem, named by key path --------------------

# What a valid value looks like, by key. Several tables share key names with the same meaning.
_RULES = {
    "timezone": 'an IANA time zone name such as "UTC" or "America/New_York"',
    "admins": 'a list of "platform:user_id" strings',
    "discord_manage_server_is_admin": "true or false",
    "queue_cap": "an integer >= 0",
    "max_image_mb": "a number > 0",
    "max_image_megapixels": "a number > 0",
    "pricing": "a table of prices per backend",
    "http": "a price >= 0 in USD per second",
    "simulator": "a price >= 0 in USD per second",
    "diffusers": "a price >= 0 in USD per second",
    "defaults": "a table of limits",
    "backends": "a table of generators named by lowercase names, or (in a scope) a list of their names",
    "backend": "the name of a generator under [backends]",
    "type": "one of dashscope, fal, replicate, http, simulator",
    "t2v_model": "a model id from the model table",
    "i2v_model": "a model id from the model table",
    "concurrency": "an integer from 1 to 64",
    "price_per_second": "a price >= 0 in USD per second",
    "resolution": '"480p", "720p" or "1080p"',
    "label": "a non-empty string",
    "workspaces": 'a table of workspaces named "platform:workspace_id"',
    "channels": "a table of channels named by channel ID",
    "max_duration_s": "an integer from 1 to 60",
    "resolutions": 'a non-empty list of "WxH" sizes or tiers ("480p", "720p", "1080p")',
    "fps": "a non-empty list of frame rates, each 16 or 24",
    "max_prompt_chars": "an integer >= 1",
    "blocked_terms": "a list of non-empty strings",
    "user_daily_jobs": "an integer >= 0",
    "user_concurrent_jobs": "an integer >= 0",
    "workspace_daily_jobs": "an integer >= 0",
    "cooldown_s": "an integer >= 0",
    "allowed_channels": "a list of channel IDs",
    "user_monthly_budget_usd": "a number >= 0",
    "workspace_monthly_budget_usd": "a number >= 0",
}
# One entry of a list, or one named table of a map.
_ENTRY_RULES = {
    "admins": 'a "platform:user_id" string such as "slack:U0123ABCD"',
    "resolutions": f'a tier ("480p", "720p", "1080p") or "WxH" with sides multiples of 16 up to {MAX_SIDE}, such as "1280x720"',
    "backends": "a lowercase generator name such as \"final\"",
    "fps": "16 or 24",
    "blocked_terms": "a non-empty string",
    "allowed_channels": "a non-empty channel ID",
    "workspaces": "a table of limits",
    "channels": "a table of limits",
}
# The name of a table in a map.
_NAME_RULES = {
    "workspaces": '"platform:workspace_id", such as "slack:T0123ABCD" or "discord:123456789012345678"',
    "channels": "a non-empty channel ID",
    "backends": "lowercase letters, digits, - and _",
}


def _table_type(annotation: Any) -> tuple[type[_Table] | None, int]:
    """The table a field holds and how many location steps lead into it (2 for a map)."""
    if isinstance(annotation, type) and issubclass(annotation, _Table):
        return annotation, 1
    if get_origin(annotation) is dict:
        value = get_args(annotation)[1]
        if isinstance(value, type) and issubclass(value, _Table):
            return value, 2
    return None, 0


def _locate(loc: tuple[str | int, ...]) -> tuple[type[_Table], str | int, tuple[str | int, ...]]:
    """Follow an error location through the schema: the table holding the last key on the way,
    that key, and what lies past it (a list index, a table name, "[key]", or nothing)."""
    table: type[_Table] = _File
    while True:
        key, rest = loc[0], loc[1:]
        field = table.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            return table, key, rest
        inner, steps = _table_type(field.annotation)
        if inner is None or len(rest) < steps or "[key]" in rest[:steps]:
            return table, key, rest
        table, loc = inner, rest[steps - 1 :]


def _key_path(loc: Sequence[str | int]) -> str:
    """Write a location the way it looks in TOML: ``workspaces."slack:T1".fps[0]``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            name = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            path += f".{name}" if path else name
    return path


def _shown(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a very large number"
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (ValueError, RecursionError):  # a 5,000-digit number, a list nested thousands deep
        text = reprlib.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key_hint(table: type[_Table], key: str) -> str:
    if table is not _File and key in _File.model_fields:
        return f" ({key} belongs at the top of the file, before the first [table])"
    if table is _Limits and key in _Workspace.model_fields:
        return f" ({key} can only appear in a workspace table)"
    if table is _File and key in _Limits.model_fields:
        return f" ({key} belongs under [defaults] or a workspace table)"
    close = difflib.get_close_matches(key, list(table.model_fields), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _problem(source: str, error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    table, key, rest = _locate(loc)
    got = f" (got {_shown(error['input'])})"
    if error["type"] == "extra_forbidden" and isinstance(key, str) and not rest:
        return f"{source}: {_key_path(loc)}: unknown key{_unknown_key_hint(table, key)}"
    if rest and rest[-1] == "[key]" and key in _NAME_RULES:
        return f"{source}: {_key_path(loc[:-1])}: the name must be {_NAME_RULES[key]}{got}"
    rule = _ENTRY_RULES.get(str(key)) if rest else _RULES.get(str(key))
    if rule and error["type"] == "less_than_equal" and " to " not in rule:
        rule += f" and at most {error['ctx']['le']}"
    elif rule and error["type"] == "finite_number":
        rule += " (a finite number: not inf or nan)"
    return f"{source}: {_key_path(loc)}: {f'must be {rule}' if rule else error['msg']}{got}"


# --- the public face ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EffectiveLimits:
    """The limits in force for one origin, after every scope has had its say.

    ``None`` means unlimited (the file's 0). Admins are exempt; that check is
    ``LimitsConfig.is_admin``, not a field here, because it does not vary by scope.
    """

    max_duration_s: int
    resolutions: tuple[str, ...]
    fps: tuple[int, ...]
    max_prompt_chars: int
    blocked_terms: tuple[str, ...]
    user_daily_jobs: int | None
    user_concurrent_jobs: int | None
    workspace_daily_jobs: int | None
    cooldown_s: int
    allowed_channels: tuple[str, ...]
    user_monthly_budget_usd: float | None
    workspace_monthly_budget_usd: float | None
    backend: str | None = None
    """The generator used here when the person names none; None: the bot's default."""
    backends: tuple[str, ...] = ()
    """The generators a person may pick here with ``--model``; empty: all of them."""

    def allows_size(self, size: Resolution) -> bool:
        """A size is allowed when it is listed, or its tier is."""
        return str(size) in self.resolutions or tier_of(size) in self.resolutions


@dataclass(frozen=True)
class BackendConfig:
    """One ``[backends.NAME]`` table: what to build at start (keys come from the environment)."""

    name: str
    type: str
    t2v_model: str | None
    i2v_model: str | None
    concurrency: int | None
    price_per_second: float | None
    resolution: str
    label: str | None


class LimitsConfig:
    """One validated limits file; ``LimitsConfig()`` is the built-in defaults.

    Built from the parsed TOML mapping so tests and tools need no file; ``source`` only names
    the file in error messages. Raises ``LimitsError`` listing every problem at once.
    """

    timezone: ZoneInfo
    queue_cap: int | None
    max_image_bytes: int
    max_image_pixels: int
    discord_manage_server_is_admin: bool

    def __init__(
        self, data: Mapping[str, Any] | None = None, *, source: str | os.PathLike[str] = "videobot.toml"
    ) -> None:
        try:
            file = _File.model_validate(dict(data or {}))
        except ValidationError as exc:
            raise LimitsError([_problem(os.fspath(source), error) for error in exc.errors()]) from None
        self._file = file
        self._admins = frozenset(file.admins)
        self._prices = file.pricing.model_dump()
        self.timezone = ZoneInfo(file.timezone)
        self.queue_cap = file.queue_cap or None
        self.max_image_bytes = int(file.max_image_mb * _BYTES_PER_MB)
        self.max_image_pixels = int(file.max_image_megapixels * _PIXELS_PER_MEGAPIXEL)
        self.discord_manage_server_is_admin = file.discord_manage_server_is_admin

    def resolve(self, origin: Origin) -> EffectiveLimits:
        """The limits for a request from ``origin``: each key from the narrowest scope setting it.

        This is the only place scopes are combined, so a new scope is added here and nowhere else.
        """
        workspace = self._file.workspaces.get(origin.workspace_key)
        channel = workspace.channels.get(origin.channel_id) if workspace else None
        merged: dict[str, Any] = {}
        for scope in (_BUILTIN_LIMITS, self._file.defaults, workspace, channel):
            if scope is not None:
                merged.update(scope.model_dump(exclude_none=True, exclude={"channels"}))
        return EffectiveLimits(
            max_duration_s=merged["max_duration_s"],
            resolutions=tuple(merged["resolutions"]),
            fps=tuple(merged["fps"]),
            max_prompt_chars=merged["max_prompt_chars"],
            blocked_terms=tuple(merged["blocked_terms"]),
            user_daily_jobs=merged["user_daily_jobs"] or None,
            user_concurrent_jobs=merged["user_concurrent_jobs"] or None,
            workspace_daily_jobs=merged["workspace_daily_jobs"] or None,
            cooldown_s=merged["cooldown_s"],
            allowed_channels=tuple(merged["allowed_channels"]),
            user_monthly_budget_usd=merged["user_monthly_budget_usd"] or None,
            workspace_monthly_budget_usd=merged["workspace_monthly_budget_usd"] or None,
            backend=merged.get("backend"),
            backends=tuple(merged["backends"]),
        )

    @property
    def backends(self) -> list[BackendConfig]:
        """The ``[backends]`` tables in file order; empty when the file declares none."""
        return [BackendConfig(name=name, **table.model_dump()) for name, table in self._file.backends.items()]

    def is_admin(self, origin: Origin) -> bool:
        """Admins are exempt from every limit: the platform said so (the adapter decides, e.g.
        Discord's Manage Server when ``discord_manage_server_is_admin``) or the file lists them."""
        return origin.is_admin or origin.user_key in self._admins

    def price_per_second(self, backend: str) -> float | None:
        """USD per second of output video as the file sets it (``[backends.X].price_per_second``
        or ``[pricing]``); None when it sets none and the model table's list price applies."""
        table = self._file.backends.get(backend)
        if table is not None and table.price_per_second is not None:
            return table.price_per_second
        return self._prices.get(backend)


def load_limits(path: Path) -> LimitsConfig:
    """Read and validate the limits file at start. No file means the built-in defaults, so a
    fresh install runs without one; a file that cannot be read or used raises ``LimitsError``."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return LimitsConfig(source=path)
    except OSError as exc:
        raise LimitsError([f"{path}: cannot be read ({exc.strerror})"]) from None
    return _parse(path, data)


def _load_edit(path: Path) -> LimitsConfig:
    """Read the file as it is after an edit, while the bot runs.

    Here only a complete file counts: a missing or empty one is an editor part-way through a
    save (or a slip), not a wish for the built-in defaults, so it raises ``LimitsError`` like
    any other broken edit and the limits in force stay.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise LimitsError([f"{path}: is missing (restore it; the built-in defaults apply only at start)"]) from None
    except OSError as exc:
        raise LimitsError([f"{path}: cannot be read ({exc.strerror})"]) from None
    if not data.strip():
        raise LimitsError([f"{path}: is empty"])
    return _parse(path, data)


def _parse(path: Path, data: bytes) -> LimitsConfig:
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise LimitsError([f"{path}: is not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise LimitsError([f"{path}: is not valid TOML: {exc}"]) from None
    except RecursionError:
        raise LimitsError([f"{path}: is not valid TOML: arrays or tables nested too deeply"]) from None
    except ValueError:  # an integer of thousands of digits
        raise LimitsError([f"{path}: is not valid TOML: a number is too long"]) from None
    try:
        return LimitsConfig(parsed, source=path)
    except RecursionError:
        raise LimitsError([f"{path}: values are nested too deeply"]) from None


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


def _text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


class LimitsStore:
    """The limits in force now, following edits to the file without a restart.

    ``current()`` is meant to be called on every request: it looks at the file at most every
    ``check_interval_s`` and rereads it only when its stamp changed. A broken edit leaves the
    last good limits in force and is logged once per distinct problem, not on every call; at
    run time a missing, empty or unreadable file is such an edit (only at start does a missing
    file mean the built-in defaults: ``from_defaults`` says whether that happened).
    """

    def __init__(
        self,
        path: Path,
        *,
        check_interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = Path(path)
        self._check_interval_s = check_interval_s
        self._clock = clock
        # Stamp before reading: an edit landing in between then shows up at the next check.
        self._stamp = _file_stamp(self._path)
        self.from_defaults = self._stamp is None
        self._config = load_limits(self._path)
        self._checked_at = clock()
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._loaded_at = datetime.now(UTC)
        self._text = _text_of(self._path)

    @property
    def loaded_at(self) -> datetime:
        """When the limits in force were read (UTC)."""
        return self._loaded_at

    @property
    def text(self) -> str | None:
        """The file as it was when the limits in force were read; None: no file, built-in defaults."""
        return self._text

    @property
    def last_error(self) -> tuple[str, datetime] | None:
        """Why the latest edit was refused, and when; None once a good edit is loaded."""
        if self._last_error is None or self._last_error_at is None:
            return None
        return self._last_error, self._last_error_at

    @property
    def path(self) -> Path:
        return self._path

    def current(self) -> LimitsConfig:
        now = self._clock()
        if now - self._checked_at < self._check_interval_s:
            return self._config
        self._checked_at = now
        stamp = _file_stamp(self._path)
        if stamp == self._stamp:
            return self._config
        self._stamp = stamp
        try:
            self._config = _load_edit(self._path)
        except LimitsError as exc:
            if str(exc) != self._last_error:
                self._last_error = str(exc)
                self._last_error_at = datetime.now(UTC)
                log.error("Keeping the previous usage limits; the edited file has problems:\n%s", exc)
        else:
            self._last_error = None
            self._loaded_at = datetime.now(UTC)
            self._text = _text_of(self._path)
            log.info("Reloaded usage limits from %s", self._path)
        return self._config


# --- daily and monthly windows -----------------------------------------------------------------


def _as_utc(moment: datetime) -> datetime:
    """Read a naive datetime as UTC (the database's convention); convert an aware one."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _window_days(now: datetime, period: Literal["day", "month"], tz: ZoneInfo) -> tuple[date, date]:
    """The local dates on which the current window and the next one begin."""
    today = _as_utc(now).astimezone(tz).date()
    if period == "day":
        return today, today + timedelta(days=1)
    if period == "month":
        first = today.replace(day=1)
        return first, (first + timedelta(days=32)).replace(day=1)
    raise ValueError(f"period must be 'day' or 'month', not {period!r}")


def _midnight_utc(day: date, tz: ZoneInfo) -> datetime:
    """Local midnight of ``day`` as naive UTC. Where a DST jump skips midnight, this is the
    moment the day actually begins (PEP 495: a missing time takes the offset before the jump)."""
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC).replace(tzinfo=None)


def window_start(now: datetime, period: Literal["day", "month"], tz: ZoneInfo) -> datetime:
    """When the current day or month began in ``tz``, as naive UTC: count usage since then."""
    return _midnight_utc(_window_days(now, period, tz)[0], tz)


def next_reset(now: datetime, period: Literal["day", "month"], tz: ZoneInfo) -> datetime:
    """When the next day or month begins in ``tz``, as naive UTC: when a refused quota frees up."""
    return _midnight_utc(_window_days(now, period, tz)[1], tz)


def _time_left(left: timedelta) -> str:
    minutes = math.ceil(left.total_seconds() / 60)  # rounded up: never promise it sooner than true
    if minutes <= 0:
        return "any moment now"
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        parts = [f"{days} day" + ("s" if days > 1 else ""), f"{hours} h" if hours else ""]
    else:
        parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    return "in " + " ".join(part for part in parts if part)


def describe_reset(reset: datetime, now: datetime, tz: ZoneInfo) -> str:
    """When a limit resets, for a refusal message: ``at 00:00 UTC (in 3 h 12 min)``.

    The date is added when the reset is a day or more away, where a bare clock time would be
    ambiguous (a monthly budget).
    """
    local = _as_utc(reset).astimezone(tz)
    left = _as_utc(reset) - _as_utc(now)
    day = f" on {local.day} {local:%B}" if left >= timedelta(days=1) else ""
    return f"at {local:%H:%M} {local.tzname()}{day} ({_time_left(left)})"
