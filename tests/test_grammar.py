"""The one request grammar every platform shares: pure functions, so plain unit tests."""

from __future__ import annotations

import pytest

from bot.errors import InvalidRequest
from bot.grammar import build_request, parse_request, split_options
from bot.models import ImageInput, Quality, Resolution

pytestmark = pytest.mark.timeout(10)


def test_options_come_out_and_the_prompt_stays_as_written() -> None:
    request = parse_request('a fox in the snow --duration 8 --aspect 9:16 --fps 24 --seed 7 --negative "blurry, text" --hq')
    assert request.prompt == "a fox in the snow"
    assert (request.duration_s, request.resolution, request.fps, request.seed) == (8, Resolution(720, 1280), 24, 7)
    assert request.negative_prompt == "blurry, text" and request.quality is Quality.HIGH


def test_chinese_and_apostrophes_survive_untouched() -> None:
    assert parse_request("一只狐狸在雪地里奔跑，电影感 --duration 3").prompt == "一只狐狸在雪地里奔跑，电影感"
    assert parse_request("a dog's life — in 4K --fps 16").prompt == "a dog's life — in 4K"


def test_phone_keyboards_smart_dashes_and_equals_signs_are_understood() -> None:
    request = parse_request("waves —duration 6 –aspect=1:1")
    assert (request.duration_s, request.resolution) == (6, Resolution(960, 960))


def test_defaults_follow_the_guide_and_leave_fps_to_the_workspace() -> None:
    request = parse_request("a quiet harbour")
    assert (request.duration_s, request.resolution, request.fps, request.seed) == (5, Resolution(1280, 720), None, None)


def test_an_image_keeps_its_orientation_unless_told_otherwise() -> None:
    portrait = ImageInput(b"x", "image/jpeg", 900, 1600)
    assert parse_request("sway", image=portrait).resolution == Resolution(720, 1280)
    assert parse_request("sway --aspect 16:9", image=portrait).resolution == Resolution(1280, 720)
    assert parse_request("sway", image=ImageInput(b"x", "image/png", 1000, 1000)).resolution == Resolution(960, 960)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Describe the video you want"),
        ("--duration 8", "Describe the video you want"),
        ("x --duration 0", "--duration must be at least 1 second (got 0)"),
        ("x --duration abc", "--duration must be a whole number (got 'abc')"),
        ("x --fps 30", "--fps must be 16 or 24 (got 30)"),
        ("x --dur 5", "Unknown option --dur. Did you mean --duration?"),
        ("x --aspect 5:4", "--aspect must be 16:9, 9:16, 1:1, 4:3, 3:4 (got '5:4')"),
        ("x --aspect 4:3 --resolution 480p", "--aspect 4:3 has no 480p size; choose 16:9, 9:16, 1:1."),
        ("x --model ../etc", "--model must be the name of a generator"),
        ("x --resolution big", "--resolution must be 480p, 720p, 1080p or a size like 1280x720 (got 'big')"),
        ("x --aspect 9:16 --resolution 1280x720", "disagree"),
        ("x --seed", "--seed needs a value, e.g. --seed 7"),
        ("x --seed 99999999999", "--seed must be between 0 and 2147483647"),
        ('x --negative "unclosed', "A quote \" is never closed"),
    ],
)
def test_mistakes_name_the_option_and_what_is_allowed(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_request(text)
    assert message in str(error.value)


def test_typed_slash_options_go_through_the_same_checks() -> None:
    assert build_request("a kite", duration=3, fps=24, aspect="1:1").fps == 24
    with pytest.raises(InvalidRequest, match="--fps must be 16 or 24"):
        build_request("a kite", fps=12)


def test_split_options_leaves_words_that_only_look_like_options() -> None:
    prompt, options = split_options("a re-run of the x--y sketch --seed 3")
    assert prompt == "a re-run of the x--y sketch" and options == {"seed": "3"}


@pytest.mark.parametrize(
    ("text", "size", "tier"),
    [
        ("a fox --resolution 1080p", "1920x1080", "1080p"),
        ("a fox --resolution 480p --aspect 9:16", "480x832", "480p"),
        ("a fox --aspect 1:1 --resolution 720P", "960x960", "720p"),
        ("a fox --aspect 9:16", "720x1280", None),
    ],
)
def test_resolution_takes_a_tier_that_the_aspect_maps_onto(text: str, size: str, tier: str | None) -> None:
    request = parse_request(text)
    assert (str(request.resolution), request.tier, request.exact_size) == (size, tier, False)


def test_an_exact_size_is_kept_as_asked() -> None:
    request = parse_request("a fox --resolution 832x480")
    assert (str(request.resolution), request.aspect, request.exact_size) == ("832x480", "16:9", True)


def test_model_and_silent_are_read_and_cut_from_the_prompt() -> None:
    request = parse_request("a fox in the snow --model Final --silent")
    assert (request.prompt, request.backend, request.silent) == ("a fox in the snow", "final", True)


# -- a platform's native fields and the options typed in the prompt (Discord's /video) ---------


def test_options_typed_in_the_prompt_field_are_read_beside_the_native_fields() -> None:
    request = parse_request("a fox --duration 8", aspect="9:16", hq=False, seed=None)
    assert request.prompt == "a fox" and request.duration_s == 8 and request.resolution == Resolution(720, 1280)


def test_a_field_and_a_typed_option_that_agree_are_fine() -> None:
    assert parse_request("a fox --duration 8s --aspect 9:16", duration=8, aspect="9:16").duration_s == 8


@pytest.mark.parametrize(
    ("text", "fields", "message"),
    [
        ("a fox --duration 8", {"duration": 5}, "The duration is given twice and they disagree: 5 in the duration "
                                                 "field, --duration 8 in the prompt. Keep one."),
        ("a fox --aspect 1:1", {"aspect": "9:16"}, "9:16 in the aspect field, --aspect 1:1 in the prompt"),
        ("a fox --resolution 480p", {"resolution": "1080p"}, "1080p in the resolution field, --resolution 480p"),
        ("a fox --seed 7", {"seed": 8}, "8 in the seed field, --seed 7 in the prompt"),
    ],
    ids=["duration", "aspect", "resolution", "seed"],
)
def test_a_field_and_a_typed_option_that_disagree_are_refused(text: str, fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match="given twice") as caught:
        parse_request(text, **fields)
    assert message in str(caught.value)


def test_typed_flags_and_native_flags_both_count() -> None:
    assert parse_request("a fox --hq").quality is Quality.HIGH
    assert parse_request("a fox", hq=True).quality is Quality.HIGH
    assert parse_request("a fox --silent", hq=False).silent


def test_a_native_resolution_field_reads_like_the_typed_option() -> None:
    assert parse_request("a fox", resolution="832x480").resolution == Resolution(832, 480)
    assert parse_request("a fox", resolution="480p", aspect="9:16").tier == "480p"
