"""The admins' limits file: the example documents the defaults, scopes resolve narrowest-first,
mistakes are reported by key, edits apply without a restart, and windows reset at local midnight."""

from __future__ import annotations

import logging
import os
import re
import tomllib
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot import limits
from bot.limits import (
    EffectiveLimits,
    LimitsConfig,
    LimitsError,
    LimitsStore,
    describe_reset,
    load_limits,
    next_reset,
    window_start,
)
from bot.models import Origin

EXAMPLE = Path(__file__).resolve().parent.parent / "videobot.example.toml"
NEW_YORK = ZoneInfo("America/New_York")
UTC_ZONE = ZoneInfo("UTC")


def origin(
    workspace: str = "T1",
    channel: str = "C1",
    user: str = "U1",
    platform: str = "slack",
    is_admin: bool = False,
) -> Origin:
    return Origin(
        platform=platform, workspace_id=workspace, channel_id=channel, user_id=user, is_admin=is_admin
    )


def problems_of(data: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(LimitsError) as caught:
        LimitsConfig(data)
    return caught.value.problems


# --- the example file --------------------------------------------------------------------------


def test_example_file_spells_out_exactly_the_builtin_defaults() -> None:
    example, builtin = load_limits(EXAMPLE), LimitsConfig()
    elsewhere = origin(workspace="T-not-in-the-example")

    assert example.resolve(elsewhere) == builtin.resolve(elsewhere)
    assert example.resolve(elsewhere) == EffectiveLimits(
        max_duration_s=10,
        resolutions=("1280x720", "720x1280", "960x960", "832x480", "480x832"),
        fps=(16, 24),
        max_prompt_chars=2000,
        blocked_terms=(),
        user_daily_jobs=20,
        user_concurrent_jobs=2,
        workspace_daily_jobs=200,
        cooldown_s=0,
        allowed_channels=(),
        user_monthly_budget_usd=None,
        workspace_monthly_budget_usd=None,
    )
    for config in (example, builtin):
        assert config.timezone == ZoneInfo("UTC")
        assert config.queue_cap == 200
        assert config.max_image_bytes == 20 * 1024 * 1024
        assert config.max_image_pixels == 100_000_000
        assert config.discord_manage_server_is_admin is False
        assert config.price_per_second("http") == pytest.approx(0.02)
        assert config.price_per_second("simulator") == 0.0
        assert config.price_per_second("diffusers") == 0.0
        assert not config.is_admin(origin())


def count_values(table: dict[str, Any]) -> int:
    return sum(count_values(value) if isinstance(value, dict) else 1 for value in table.values())


def test_example_file_sets_and_comments_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = tomllib.loads(text)

    top_level = {key for key, value in data.items() if not isinstance(value, dict)}
    # [backends] and the scope keys naming them only make sense once an admin declares a
    # generator, so the example shows them commented out (the test below loads that text).
    assert top_level | {"pricing", "defaults", "workspaces", "backends"} == set(limits._File.model_fields)
    assert set(data["pricing"]) == set(limits._Pricing.model_fields)
    assert set(data["defaults"]) == {f.name for f in fields(EffectiveLimits)} - {"backend", "backends"}

    lines = text.splitlines()
    assignments = [i for i, line in enumerate(lines) if re.match(r"\s*[\w\"]+[\w\".:-]*\s*=", line)]
    assert len(assignments) == count_values(data)  # the pattern found every key
    undocumented = [lines[i] for i in assignments if not lines[i - 1].lstrip().startswith("#")]
    assert undocumented == []


def test_example_workspace_and_channel_overrides_apply_where_they_say() -> None:
    example = load_limits(EXAMPLE)

    in_channel = example.resolve(origin(workspace="T0123ABCD", channel="C0456EFGH"))
    in_workspace = example.resolve(origin(workspace="T0123ABCD", channel="C-other"))

    assert (in_channel.user_daily_jobs, in_channel.max_duration_s) == (50, 20)
    assert (in_workspace.user_daily_jobs, in_workspace.max_duration_s) == (50, 10)


# --- resolving scopes --------------------------------------------------------------------------

LAYERED: dict[str, Any] = {
    "defaults": {"fps": [16], "cooldown_s": 3, "user_daily_jobs": 20, "blocked_terms": ["gore"]},
    "workspaces": {
        "slack:T1": {
            "fps": [24],
            "user_daily_jobs": 50,
            "channels": {"C9": {"user_daily_jobs": 5, "max_duration_s": 30, "blocked_terms": ["war"]}},
        },
    },
}


def test_channel_beats_workspace_beats_defaults_and_partial_overrides_keep_the_rest() -> None:
    config = LimitsConfig(LAYERED)

    channel = config.resolve(origin(workspace="T1", channel="C9"))
    workspace = config.resolve(origin(workspace="T1", channel="C1"))
    other = config.resolve(origin(workspace="T2", channel="C9"))

    assert (channel.user_daily_jobs, workspace.user_daily_jobs, other.user_daily_jobs) == (5, 50, 20)
    assert (channel.fps, workspace.fps, other.fps) == ((24,), (24,), (16,))
    assert (channel.max_duration_s, workspace.max_duration_s, other.max_duration_s) == (30, 10, 10)
    assert channel.cooldown_s == workspace.cooldown_s == other.cooldown_s == 3
    assert channel.user_concurrent_jobs == 2  # nobody set it: the built-in default
    assert channel.blocked_terms == ("war",)  # a list replaces the wider one, it is not merged


def test_a_workspace_is_matched_by_platform_as_well_as_id() -> None:
    config = LimitsConfig(LAYERED)

    assert config.resolve(origin(platform="discord", workspace="T1", channel="C9")).user_daily_jobs == 20


def test_zero_in_the_file_means_unlimited_and_an_override_can_lift_a_limit() -> None:
    config = LimitsConfig(
        {
            "queue_cap": 0,
            "defaults": {"user_monthly_budget_usd": 5, "workspace_monthly_budget_usd": 0},
            "workspaces": {
                "discord:42": {
                    "user_daily_jobs": 0,
                    "user_concurrent_jobs": 0,
                    "workspace_daily_jobs": 0,
                    "user_monthly_budget_usd": 0,
                }
            },
        }
    )

    lifted = config.resolve(origin(platform="discord", workspace="42"))
    assert config.queue_cap is None
    assert lifted.user_daily_jobs is lifted.user_concurrent_jobs is lifted.workspace_daily_jobs is None
    assert lifted.user_monthly_budget_usd is lifted.workspace_monthly_budget_usd is None
    assert lifted.cooldown_s == 0
    assert config.resolve(origin()).user_monthly_budget_usd == 5.0


def test_admins_are_listed_people_or_whoever_the_platform_reports() -> None:
    config = LimitsConfig({"admins": ["slack:U7", "discord:1234567890"]})

    assert config.is_admin(origin(user="U7"))
    assert config.is_admin(origin(platform="discord", user="1234567890"))
    assert config.is_admin(origin(user="U8", is_admin=True))
    assert not config.is_admin(origin(user="U8"))
    assert not config.is_admin(origin(platform="discord", user="U7"))


def test_prices_image_limits_and_zone_come_from_the_file() -> None:
    config = LimitsConfig(
        {
            "timezone": "Europe/Berlin",
            "discord_manage_server_is_admin": True,
            "max_image_mb": 7.5,
            "max_image_megapixels": 12,
            "pricing": {"http": 0.012},
        }
    )

    assert config.timezone == ZoneInfo("Europe/Berlin")
    assert config.discord_manage_server_is_admin is True
    assert config.max_image_bytes == int(7.5 * 1024 * 1024)
    assert config.max_image_pixels == 12_000_000
    assert config.price_per_second("http") == pytest.approx(0.012)
    assert config.price_per_second("diffusers") == 0.0
    assert config.price_per_second("some-future-backend") is None  # the model table's price applies


def test_a_backend_table_prices_its_own_generator() -> None:
    config = LimitsConfig({"backends": {"draft": {"type": "fal", "price_per_second": 0.03}, "final": {"type": "dashscope"}}})

    assert config.price_per_second("draft") == pytest.approx(0.03)
    assert config.price_per_second("final") is None
    assert [b.name for b in config.backends] == ["draft", "final"]


def test_resolutions_are_normalised_to_lowercase_wxh() -> None:
    config = LimitsConfig({"defaults": {"resolutions": ["1920X1088", "16x16"]}})

    assert config.resolve(origin()).resolutions == ("1920x1088", "16x16")


# --- mistakes named by key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"workspaces": {"slack:T123": {"user_daily_jobs": "five"}}},
            'videobot.toml: workspaces."slack:T123".user_daily_jobs: must be an integer >= 0 (got "five")',
        ),
        (
            {"defaults": {"user_daily_job": 5}},
            "videobot.toml: defaults.user_daily_job: unknown key (did you mean user_daily_jobs?)",
        ),
        (
            {"defaults": {"fps": [16, 30]}},
            "videobot.toml: defaults.fps[1]: must be 16 or 24 (got 30)",
        ),
        (
            {"defaults": {"fps": 24}},
            "videobot.toml: defaults.fps: must be a non-empty list of frame rates, each 16 or 24 (got 24)",
        ),
        (
            {"workspaces": {"discord:9": {"channels": {"77": {"resolutions": ["1280x721"]}}}}},
            'videobot.toml: workspaces."discord:9".channels.77.resolutions[0]: must be a tier ("480p", "720p",'
            ' "1080p") or "WxH" with sides multiples of 16 up to 1920, such as "1280x720" (got "1280x721")',
        ),
        (
            {"defaults": {"resolutions": ["2048x1152"]}},
            'videobot.toml: defaults.resolutions[0]: must be a tier ("480p", "720p", "1080p") or'
            ' "WxH" with sides multiples of 16 up to 1920, such as "1280x720" (got "2048x1152")',
        ),
        (
            {"defaults": {"resolutions": []}},
            'videobot.toml: defaults.resolutions: must be a non-empty list of "WxH" sizes or tiers ("480p", "720p", "1080p") (got [])',
        ),
        (
            {"timezone": "Mars/Olympus_Mons"},
            'videobot.toml: timezone: must be an IANA time zone name such as "UTC" or "America/New_York"'
            ' (got "Mars/Olympus_Mons")',
        ),
        (
            {"defaults": {"max_duration_s": 61}},
            "videobot.toml: defaults.max_duration_s: must be an integer from 1 to 60 (got 61)",
        ),
        (
            {"defaults": {"max_duration_s": 0}},
            "videobot.toml: defaults.max_duration_s: must be an integer from 1 to 60 (got 0)",
        ),
        (
            {"defaults": {"cooldown_s": 2.5}},
            "videobot.toml: defaults.cooldown_s: must be an integer >= 0 (got 2.5)",
        ),
        (
            {"defaults": {"user_concurrent_jobs": True}},
            "videobot.toml: defaults.user_concurrent_jobs: must be an integer >= 0 (got true)",
        ),
        (
            {"defaults": {"user_monthly_budget_usd": -1}},
            "videobot.toml: defaults.user_monthly_budget_usd: must be a number >= 0 (got -1)",
        ),
        (
            {"defaults": {"blocked_terms": ["  "]}},
            'videobot.toml: defaults.blocked_terms[0]: must be a non-empty string (got "  ")',
        ),
        (
            {"admins": ["U0123"]},
            'videobot.toml: admins[0]: must be a "platform:user_id" string such as "slack:U0123ABCD"'
            ' (got "U0123")',
        ),
        (
            {"max_image_mb": 0},
            "videobot.toml: max_image_mb: must be a number > 0 (got 0)",
        ),
        (
            {"pricing": {"http": "cheap"}},
            'videobot.toml: pricing.http: must be a price >= 0 in USD per second (got "cheap")',
        ),
        (
            {"pricing": {"htpp": 0.1}},
            "videobot.toml: pricing.htpp: unknown key (did you mean http?)",
        ),
        (
            {"workspaces": {"T0123": {}}},
            'videobot.toml: workspaces.T0123: the name must be "platform:workspace_id",'
            ' such as "slack:T0123ABCD" or "discord:123456789012345678" (got "T0123")',
        ),
        (
            {"workspaces": {"slack:T1": 5}},
            'videobot.toml: workspaces."slack:T1": must be a table of limits (got 5)',
        ),
        (
            {"workspaces": {"slack:T1": {"channels": {"C1": {"queue_cap": 5}}}}},
            'videobot.toml: workspaces."slack:T1".channels.C1.queue_cap: unknown key'
            " (queue_cap belongs at the top of the file, before the first [table])",
        ),
        (
            {"defaults": {"channels": {}}},
            "videobot.toml: defaults.channels: unknown key (channels can only appear in a workspace table)",
        ),
        (
            {"user_daily_jobs": 5},
            "videobot.toml: user_daily_jobs: unknown key"
            " (user_daily_jobs belongs under [defaults] or a workspace table)",
        ),
    ],
)
def test_each_mistake_is_reported_with_its_key_path(data: dict[str, Any], expected: str) -> None:
    assert problems_of(data) == (expected,)


def test_several_mistakes_are_reported_together_one_per_line() -> None:
    with pytest.raises(LimitsError) as caught:
        LimitsConfig({"queue_cap": -1, "defaults": {"fps": [30]}}, source="/etc/videobot.toml")

    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith("/etc/videobot.toml: ") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {"queue_cap", "defaults.fps[0]"}
    assert isinstance(caught.value, ValueError)


def test_a_file_with_a_mistake_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "videobot.toml"
    path.write_text('[defaults]\nfps = [16, 30]\n', encoding="utf-8")

    with pytest.raises(LimitsError, match=re.escape(f"{path}: defaults.fps[1]: must be 16 or 24 (got 30)")):
        load_limits(path)


def test_a_file_that_is_not_toml_is_refused_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "videobot.toml"
    path.write_text("queue_cap = = 3\n", encoding="utf-8")

    with pytest.raises(LimitsError, match=rf"^{re.escape(str(path))}: is not valid TOML: .*line 1"):
        load_limits(path)


def test_a_missing_file_means_the_builtin_defaults(tmp_path: Path) -> None:
    config = load_limits(tmp_path / "absent.toml")

    assert config.resolve(origin()) == LimitsConfig().resolve(origin())
    assert config.queue_cap == 200


# --- reloading without a restart ---------------------------------------------------------------


class Editor:
    """Writes the limits file the way an admin's editor would, moving its mtime forward each time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mtime_ns = 1_700_000_000_000_000_000

    def save(self, text: str) -> None:
        self.path.write_text(text, encoding="utf-8")
        self.mtime_ns += 1_000_000_000
        os.utime(self.path, ns=(self.mtime_ns, self.mtime_ns))


def daily_jobs(store: LimitsStore) -> int | None:
    return store.current().resolve(origin()).user_daily_jobs


def test_store_picks_up_an_edit_without_a_restart(tmp_path: Path) -> None:
    editor = Editor(tmp_path / "videobot.toml")
    editor.save("[defaults]\nuser_daily_jobs = 20\n")
    store = LimitsStore(editor.path, check_interval_s=0)

    editor.save("[defaults]\nuser_daily_jobs = 30\n")  # same size: only the mtime tells

    assert store.path == editor.path
    assert daily_jobs(store) == 30


def test_store_keeps_the_last_good_limits_on_a_broken_edit_and_logs_it_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    editor = Editor(tmp_path / "videobot.toml")
    editor.save("[defaults]\nuser_daily_jobs = 20\n")
    store = LimitsStore(editor.path, check_interval_s=0)

    with caplog.at_level(logging.INFO, logger="bot.limits"):
        editor.save('[defaults]\nuser_daily_jobs = "five"\n')
        assert daily_jobs(store) == 20
        editor.save('[defaults]\nuser_daily_jobs = "five"\n')  # saved again, same mistake
        assert [daily_jobs(store) for _ in range(3)] == [20, 20, 20]
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        editor.save("[defaults]\nuser_daily_jobs = 40\n")
        assert daily_jobs(store) == 40

    assert len(errors) == 1
    assert 'defaults.user_daily_jobs: must be an integer >= 0 (got "five")' in errors[0].getMessage()


def test_store_looks_at_the_file_at_most_every_interval(tmp_path: Path) -> None:
    now = [0.0]
    editor = Editor(tmp_path / "videobot.toml")
    editor.save("[defaults]\nuser_daily_jobs = 20\n")
    store = LimitsStore(editor.path, clock=lambda: now[0])

    editor.save("[defaults]\nuser_daily_jobs = 30\n")
    now[0] = 0.1
    assert daily_jobs(store) == 20
    now[0] = 0.25
    assert daily_jobs(store) == 30


@pytest.mark.timeout(10)
@pytest.mark.parametrize("breakage", ["removed", "emptied", "blank", "a folder"])
def test_store_keeps_the_last_good_limits_when_the_file_goes_missing_or_empty_at_run_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, breakage: str
) -> None:
    editor = Editor(tmp_path / "videobot.toml")
    editor.save("[defaults]\nuser_daily_jobs = 7\n")
    store = LimitsStore(editor.path, check_interval_s=0)

    with caplog.at_level(logging.INFO, logger="bot.limits"):
        if breakage == "removed":
            editor.path.unlink()
        elif breakage == "a folder":
            editor.path.unlink()
            editor.path.mkdir()
        else:
            editor.save("" if breakage == "emptied" else "  \n\n")
        assert [daily_jobs(store) for _ in range(3)] == [7, 7, 7]

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert "Keeping the previous usage limits" in errors[0]
    assert store.from_defaults is False


@pytest.mark.timeout(10)
def test_store_starts_on_the_builtin_defaults_only_when_the_file_is_missing_at_start(tmp_path: Path) -> None:
    store = LimitsStore(tmp_path / "videobot.toml", check_interval_s=0)
    assert store.from_defaults is True
    assert daily_jobs(store) == 20

    Editor(store.path).save("[defaults]\nuser_daily_jobs = 3\n")
    assert daily_jobs(store) == 3


def test_store_refuses_to_start_on_a_broken_file(tmp_path: Path) -> None:
    editor = Editor(tmp_path / "videobot.toml")
    editor.save('timezone = "Nowhere/City"\n')

    with pytest.raises(LimitsError, match="timezone"):
        LimitsStore(editor.path)


# --- daily and monthly windows -----------------------------------------------------------------


def test_utc_day_and_month_windows() -> None:
    now = datetime(2024, 3, 15, 13, 45)

    assert window_start(now, "day", UTC_ZONE) == datetime(2024, 3, 15)
    assert next_reset(now, "day", UTC_ZONE) == datetime(2024, 3, 16)
    assert window_start(now, "month", UTC_ZONE) == datetime(2024, 3, 1)
    assert next_reset(now, "month", UTC_ZONE) == datetime(2024, 4, 1)
    assert next_reset(datetime(2024, 12, 31, 23, 59), "month", UTC_ZONE) == datetime(2025, 1, 1)
    assert next_reset(datetime(2024, 2, 29, 12), "day", UTC_ZONE) == datetime(2024, 3, 1)


def test_new_york_days_across_the_dst_changes_are_23_and_25_hours() -> None:
    spring = datetime(2024, 3, 10, 12)  # 08:00 EDT; clocks went 02:00 EST -> 03:00 EDT that night
    autumn = datetime(2024, 11, 3, 12)  # 07:00 EST; clocks went 02:00 EDT -> 01:00 EST

    assert window_start(spring, "day", NEW_YORK) == datetime(2024, 3, 10, 5)  # midnight EST
    assert next_reset(spring, "day", NEW_YORK) == datetime(2024, 3, 11, 4)  # midnight EDT
    assert window_start(autumn, "day", NEW_YORK) == datetime(2024, 11, 3, 4)
    assert next_reset(autumn, "day", NEW_YORK) == datetime(2024, 11, 4, 5)
    # 23:59 local on the 10th is already the 11th in UTC, and still the 10th's window
    assert window_start(datetime(2024, 3, 11, 3, 59), "day", NEW_YORK) == datetime(2024, 3, 10, 5)


def test_new_york_month_spanning_a_dst_change() -> None:
    now = datetime(2024, 3, 20, 12)

    assert window_start(now, "month", NEW_YORK) == datetime(2024, 3, 1, 5)
    assert next_reset(now, "month", NEW_YORK) == datetime(2024, 4, 1, 4)
    # 22:00 EDT on 31 March is 02:00 UTC on 1 April: still March there
    assert window_start(datetime(2024, 4, 1, 2), "month", NEW_YORK) == datetime(2024, 3, 1, 5)


def test_a_day_whose_midnight_is_skipped_starts_when_the_clocks_jump() -> None:
    santiago = ZoneInfo("America/Santiago")  # 2022-09-11 jumped from 00:00 -04 to 01:00 -03

    start = window_start(datetime(2022, 9, 11, 12), "day", santiago)

    assert start == datetime(2022, 9, 11, 4)
    assert start.replace(tzinfo=UTC).astimezone(santiago).hour == 1
    assert next_reset(datetime(2022, 9, 11, 3, 30), "day", santiago) == start


# UTC, then DST in both hemispheres, a half-hour DST shift, a skipped midnight, a :30 offset
SWEPT_ZONES = ["UTC", "America/New_York", "America/Santiago", "Australia/Lord_Howe", "Asia/Kolkata"]


@pytest.mark.parametrize("zone", SWEPT_ZONES)
@pytest.mark.parametrize("period", ["day", "month"])
def test_every_moment_lies_in_exactly_one_window(zone: str, period: str) -> None:
    tz = ZoneInfo(zone)
    now = datetime(2024, 1, 1)
    while now < datetime(2025, 1, 1):
        start, reset = window_start(now, period, tz), next_reset(now, period, tz)  # type: ignore[arg-type]
        assert start <= now < reset, now
        assert window_start(reset, period, tz) == reset, now  # type: ignore[arg-type]
        now += timedelta(minutes=97)


def test_aware_datetimes_are_read_as_the_moment_they_name() -> None:
    aware = datetime(2024, 3, 10, 8, tzinfo=NEW_YORK)

    assert window_start(aware, "day", NEW_YORK) == window_start(datetime(2024, 3, 10, 12), "day", NEW_YORK)


def test_an_unknown_period_is_refused() -> None:
    with pytest.raises(ValueError, match="period"):
        window_start(datetime(2024, 1, 1), "week", UTC_ZONE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reset", "now", "zone", "expected"),
    [
        (datetime(2024, 3, 16), datetime(2024, 3, 15, 20, 48), "UTC", "at 00:00 UTC (in 3 h 12 min)"),
        (datetime(2024, 3, 16), datetime(2024, 3, 15, 22), "UTC", "at 00:00 UTC (in 2 h)"),
        (datetime(2024, 3, 16), datetime(2024, 3, 15, 23, 59, 30), "UTC", "at 00:00 UTC (in 1 min)"),
        (datetime(2024, 3, 16), datetime(2024, 3, 15, 23, 15), "UTC", "at 00:00 UTC (in 45 min)"),
        (datetime(2024, 3, 11, 4), datetime(2024, 3, 10, 12), "America/New_York", "at 00:00 EDT (in 16 h)"),
        (
            datetime(2024, 4, 1),
            datetime(2024, 3, 15, 13, 45),
            "UTC",
            "at 00:00 UTC on 1 April (in 16 days 10 h)",
        ),
        (datetime(2024, 4, 1), datetime(2024, 3, 31), "UTC", "at 00:00 UTC on 1 April (in 1 day)"),
        (datetime(2024, 3, 16), datetime(2024, 3, 16, 0, 0, 1), "UTC", "at 00:00 UTC (any moment now)"),
    ],
)
def test_describe_reset_for_refusal_messages(
    reset: datetime, now: datetime, zone: str, expected: str
) -> None:
    assert describe_reset(reset, now, ZoneInfo(zone)) == expected
