"""Hostile input on every way in: whatever a person, a button, a limits file or an API caller
sends, the answer is the project's own error naming the field, never an ``OverflowError``,
``ValueError`` or ``RecursionError`` (which Slack shows as ``dispatch_failed`` and the API as 500).

Property-based (hypothesis); each test states its number of examples.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.discord.views import CUSTOM_ID, _job_number
from adapters.webhook import job_routes
from adapters.webhook.api import parse_job_body
from bot.errors import InvalidRequest, JobNotFound, VideobotError
from bot.grammar import (
    MAX_JOB_ID,
    build_request,
    clean_text,
    parse_job_id,
    parse_request,
)
from bot.limits import LimitsConfig, LimitsError, load_limits
from bot.models import VideoRequest
from tests.conftest import webhook_origin

pytestmark = pytest.mark.timeout(120)

# The values the issue names, and their neighbours.
HOSTILE_WORDS = [
    "inf", "-inf", "nan", "NaN", "1e308", "-1e308", "1e-308", "9" * 5000, "-" + "9" * 5000, "0" * 5000 + "7",
    "¹⁶", "١٦", "१६", "𝟏𝟔", "16\u0000", "16\n", "0x10", "1_000", "+16", "-16", "16.0", "", " ", "#",
    "\ud800", "\udfff16", "2147483648", str(2**63), str(2**64), "18446744073709551616" * 3,
]
hostile_word = st.sampled_from(HOSTILE_WORDS) | st.text(max_size=30)
hostile_int = st.sampled_from([0, -1, 2**31, 2**63, -(2**63), 10**5000, 10**308]) | st.integers()
OPTIONS = ["--duration", "--fps", "--seed", "--resolution", "--aspect", "--model", "--negative", "--d", "—fps", "--hq"]


@st.composite
def command_texts(draw: st.DrawFn) -> str:
    parts = [draw(st.text(max_size=20))]
    for _ in range(draw(st.integers(0, 4))):
        parts.append(draw(st.sampled_from(OPTIONS)))
        parts.append(draw(hostile_word))
    return " ".join(parts)


def _accepted_or_refused(call: Any) -> Any:
    try:
        return call()
    except InvalidRequest as error:
        assert str(error) and isinstance(str(error).encode("utf-8"), bytes)  # showable, UTF-8 safe
        return error


# -- the grammar -----------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(command_texts())
def test_any_command_text_is_a_request_or_a_refusal_naming_the_option(text: str) -> None:
    result = _accepted_or_refused(lambda: parse_request(text))
    if isinstance(result, VideoRequest):
        result.prompt.encode("utf-8")  # lone surrogates never reach storage or a provider
        result.negative_prompt.encode("utf-8")
        assert 1 <= result.duration_s <= 3600 and (result.seed is None or 0 <= result.seed < 2**31)


@settings(max_examples=200, deadline=None)
@given(duration=hostile_int | hostile_word, fps=hostile_int | hostile_word, seed=hostile_int | hostile_word)
def test_typed_slash_options_of_any_size_are_refused_by_name(duration: Any, fps: Any, seed: Any) -> None:
    result = _accepted_or_refused(lambda: build_request("a kite", duration=duration, fps=fps, seed=seed))
    if isinstance(result, InvalidRequest):
        assert any(f"--{name}" in str(result) for name in ("duration", "fps", "seed"))


@pytest.mark.parametrize("word", ["¹⁶", "9" * 5000, "inf", "1e308", "nan"])
def test_the_named_values_get_the_option_named_back(word: str) -> None:
    with pytest.raises(InvalidRequest, match="--duration"):
        parse_request(f"a fox --duration {word}")
    assert parse_request("a fox --duration ١٦").duration_s == 16  # another script's digits are digits


def test_a_lone_surrogate_in_a_prompt_is_kept_storable() -> None:
    request = parse_request("a fox \ud800 in \udfff snow --negative \ud83d")
    assert request.prompt == "a fox \ufffd in \ufffd snow" and request.negative_prompt == "\ufffd"
    assert clean_text("a 🦊") == "a 🦊"


# -- ids a button or command carries ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.one_of(hostile_word, hostile_int, st.none(), st.booleans(), st.floats()))
def test_any_job_id_is_a_number_in_range_or_a_refusal(value: Any) -> None:
    result = _accepted_or_refused(lambda: parse_job_id(value))
    if not isinstance(result, InvalidRequest):
        assert 1 <= result <= MAX_JOB_ID


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=1, max_size=6000), st.sampled_from(["cancel", "reroll", "extend", "retry"]))
def test_a_discord_custom_id_of_any_length_is_read_without_converting_it(digits: str, action: str) -> None:
    match = CUSTOM_ID.fullmatch(f"videobot:{action}:{digits}")
    assert match is not None
    number = _job_number(match["job_id"])
    assert number == (int(digits) if len(digits) <= 19 else 0)


async def test_any_typed_job_number_is_a_job_or_not_found(make_core, receiver) -> None:
    """Discord's ``/video-status job:`` and ``/video-cancel job:`` are typed integers, and a
    button's id reaches the same calls: 50 examples of any size, through the service."""
    core = await make_core(start=False)
    made = await core.service.submit(parse_request("a fox --duration 1"), webhook_origin(receiver))
    loop = asyncio.get_running_loop()

    @settings(max_examples=50, deadline=None)
    @given(hostile_int)
    def look_up(number: int) -> None:
        for call in (core.service.status(number), core.service.cancel(number, webhook_origin(receiver, user="bob"))):
            try:
                asyncio.run_coroutine_threadsafe(call, loop).result(30)
            except VideobotError as error:  # not found, or not theirs: words for the person
                assert str(error)
            else:
                assert number == made.id

    await asyncio.to_thread(look_up)
    for number in (0, -1, 2**63, 10**5000):
        with pytest.raises(JobNotFound):
            await core.service.status(number)


# -- the limits file -------------------------------------------------------------------------------

LIMIT_KEYS = [
    "queue_cap", "max_image_mb", "max_image_megapixels", "timezone", "admins",
    "defaults.user_daily_jobs", "defaults.cooldown_s", "defaults.max_duration_s", "defaults.max_prompt_chars",
    "defaults.user_monthly_budget_usd", "defaults.fps", "defaults.resolutions", "pricing.http",
    "backends.final.price_per_second", "backends.final.concurrency",
]
TOML_VALUES = [
    "inf", "-inf", "nan", "+inf", "1e308", "-1e308", "1.7976931348623157e308", "9" * 5000, "0", "-1",
    "9223372036854775807", "9223372036854775808", '"¹⁶"', '"١٦"', '"\\ud800"', "[" * 3000 + "]" * 3000,
    "{a=" * 2000 + "1" + "}" * 2000, "[[[[[[1]]]]]]", "true", '"20"', "2024-01-01", "1_000_000_000_000",
]


@st.composite
def limits_files(draw: st.DrawFn) -> str:
    lines: dict[str, list[str]] = {}
    for key in draw(st.lists(st.sampled_from(LIMIT_KEYS), min_size=1, max_size=4, unique=True)):
        table, _, name = key.rpartition(".")
        value = draw(st.sampled_from(TOML_VALUES) | st.integers().map(str) | st.floats().map(repr))
        lines.setdefault(table, []).append(f"{name} = {value}")
        if table.startswith("backends."):
            lines[table].append('type = "http"')
    text = "\n".join(lines.pop("", []))
    for table, entries in lines.items():
        text += f"\n[{table}]\n" + "\n".join(entries)
    return text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limits_files())
def test_any_limits_file_loads_or_names_its_problem(tmp_path: Path, text: str) -> None:
    path = tmp_path / "videobot.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        config = load_limits(path)
    except LimitsError as error:
        assert all(line.startswith(f"{path}: ") for line in error.problems)
        return
    # what loads can be used: every size and sum stays finite
    assert config.max_image_bytes < 2**40 and config.max_image_pixels < 2**40
    limits = config.resolve(webhook_origin_stub())
    assert limits.cooldown_s < 10**8
    for backend in ("http", "final"):
        price = config.price_per_second(backend)
        assert price is None or math.isfinite(price)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=20),
       st.sampled_from(["queue_cap", "defaults", "workspaces", "pricing", "admins", "max_image_mb", "backends"]))
def test_any_parsed_value_under_any_key_is_accepted_or_named(value: Any, key: str) -> None:
    try:
        LimitsConfig({key: value})
    except LimitsError as error:
        assert all(line.startswith("videobot.toml: ") for line in error.problems)


def test_values_nested_thousands_deep_are_named_not_a_recursion_error() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(LimitsError, match="admins"):
        LimitsConfig({"admins": deep})


def webhook_origin_stub() -> Any:
    from bot.models import Origin

    return Origin(platform="slack", workspace_id="T1", channel_id="C1", user_id="U1", user_name="u")


# -- the webhook body ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=15,
)
FIELDS = ["prompt", "callback_url", "user_id", "workspace_id", "channel_id", "user_name", "image", "request_id"]


@st.composite
def job_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:  # raw bytes that are not what they claim
        return draw(st.sampled_from([
            b"", b"null", b"[]", b'"a fox"', b"1e999", b"9" * 5000, b"[" * 100000, b'{"a":' * 50000,
            b'{"prompt": "\\ud800", "callback_url": "http://x"}', b"\xff\xfe", b'{"prompt": NaN}',
        ]) | st.binary(max_size=50))
    body: dict[str, Any] = {"prompt": "a fox --duration 1", "callback_url": "http://127.0.0.1:9/hook"}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        body[name] = draw(json_values | hostile_word | hostile_int)
    if kind == 3:
        body["prompt"] = f"a fox {draw(st.sampled_from(OPTIONS))} {draw(hostile_word)}"
    return _dumps(body).encode("utf-8", "surrogatepass")


def _dumps(value: Any) -> str:
    """JSON as a hostile client writes it: a 5,000-digit integer stays a 5,000-digit number."""

    def swap(item: Any) -> Any:
        if isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > 64:
            return "__BIG__"
        if isinstance(item, list):
            return [swap(v) for v in item]
        if isinstance(item, dict):
            return {k: swap(v) for k, v in item.items()}
        return item

    return json.dumps(swap(value), ensure_ascii=False).replace('"__BIG__"', "9" * 5000)


@settings(max_examples=200, deadline=None)
@given(job_bodies())
def test_any_job_body_is_checked_or_refused_naming_the_field(raw: bytes) -> None:
    try:
        body = parse_job_body(raw)
    except InvalidRequest as error:
        assert str(error).split(" ")[0] in (*FIELDS, "The") or "nested" in str(error)
        return
    for text in (body.prompt, body.user_id, body.workspace_id, body.user_name, body.channel_id):
        assert isinstance(text, str)
        text.encode("utf-8")


async def test_job_api_never_answers_500_to_a_hostile_body(make_core, receiver) -> None:
    """50 examples over HTTP against the real routes (the service's limits, store and ack)."""
    core = await make_core('[defaults]\nresolutions = ["832x480"]\n', start=False)
    port = await core.serve_ops("127.0.0.1", 0, job_routes(core.service, "api-key-123456"))
    headers = {"Authorization": "Bearer api-key-123456", "Content-Type": "application/json"}
    seen: list[int] = []

    @settings(max_examples=50, deadline=None)
    @given(job_bodies(), st.sampled_from(["1", "0", "9" * 5000, "¹⁶", "١٦", "-1", str(2**64), "%00"]))
    def probe(raw: bytes, job_id: str) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            answer = client.post("/v1/jobs", content=raw, headers=headers)
            assert answer.status_code in (202, 400, 403, 413, 429), answer.text
            assert "error" in answer.json() or answer.status_code == 202
            shown = client.get(f"/v1/jobs/{job_id}", headers=headers)
            assert shown.status_code in (200, 404), shown.text
            seen.append(answer.status_code)

    await asyncio.to_thread(probe)
    assert 400 in seen


# -- Slack buttons and subcommands -----------------------------------------------------------------


async def test_slack_buttons_and_commands_answer_any_job_id_in_words(tmp_path: Path) -> None:
    """50 examples through Bolt: a button's value and ``/video cancel <id>`` never end in our
    "something went wrong" (the old ``int()`` raised, which Slack shows as dispatch_failed)."""
    from adapters.slack.listeners import _UNEXPECTED
    from tests.fakes.slack_api import block_action
    from tests.test_slack_e2e import running_bot

    async with running_bot(tmp_path) as slack:
        loop = asyncio.get_running_loop()
        hook = slack.fake.response_url("buttons")

        @settings(max_examples=50, deadline=None)
        @given(st.sampled_from(["videobot_cancel", "videobot_reroll", "videobot_extend"]),
               st.sampled_from(["9" * 5000, "¹⁶", "١٦", "0", "-1", str(2**63), "", "abc", "\ud800", "12"]) | hostile_word)
        def press(action_id: str, value: str) -> None:
            before = len(slack.responses("buttons"))
            answer = asyncio.run_coroutine_threadsafe(
                slack.interact(block_action(action_id, clean_text(value), response_url=hook)), loop
            ).result(30)
            assert answer.status == 200
            deadline = time.monotonic() + 10
            while len(slack.responses("buttons")) == before:
                assert time.monotonic() < deadline, "no answer to the button"
                time.sleep(0.01)
            reply = slack.responses("buttons")[-1]
            assert reply != _UNEXPECTED and ("job" in reply.lower() or "Job" in reply)

        await asyncio.to_thread(press)
        for text in ("cancel " + "9" * 5000, "status ١٦", "status " + str(2**64), "cancel 0"):
            answer = await slack.command(text)
            assert answer.status == 200
        await slack.fake.wait_for(lambda: len(slack.responses("cmd")) >= 4)
        assert _UNEXPECTED not in slack.responses("cmd")
        assert all(isinstance(error, str) for error in slack.responses("cmd"))
