"""One grammar for every platform: ``prompt words --duration 8 --aspect 9:16 --fps 24 --seed 7``.

Slack sends it as slash-command text, Discord mentions as message content, the CLI as
arguments; Discord's typed slash options go straight to ``build_request``. Errors name the bad
option and the allowed values. The prompt is kept exactly as written (Chinese, emoji, quotes):
only the options are cut out of it.
"""

from __future__ import annotations

import difflib
import re

from bot.catalog import TIER_SIZES, TIERS
from bot.errors import InvalidRequest
from bot.models import ImageInput, Quality, Resolution, VideoRequest

DEFAULT_DURATION_S = 5
ALLOWED_FPS = (16, 24)
MAX_SEED = 2**31 - 1
MAX_DURATION_S = 3600
"""No limits file allows more; a larger number is refused here, before any arithmetic."""
MAX_JOB_ID = 2**63 - 1
DEFAULT_TIER = "720p"
ASPECTS: dict[str, Resolution] = {a: TIER_SIZES[DEFAULT_TIER][a] for a in ("16:9", "9:16", "1:1")}
"""The common shapes at the default tier, for platforms that offer them as choices."""
VALUE_OPTIONS = ("duration", "aspect", "resolution", "fps", "seed", "negative", "model", "shots")
FLAG_OPTIONS = ("hq", "silent", "loop")
SHOTS = ("single", "multi")
ALIASES = {"d": "duration", "ar": "aspect", "res": "resolution", "neg": "negative"}

HELP_TEXT = """\
Make a short video from a description, or animate an image.

  /video a red fox running through fresh snow --duration 8 --aspect 9:16

Options (all optional):
  --duration N       seconds of video (default 5)
  --aspect A         16:9 (1280x720, default), 9:16 (720x1280) or 1:1 (960x960)
  --resolution R     480p, 720p or 1080p (with --aspect), or an exact size such as 832x480
  --fps N            a frame rate the model makes (default: the first one allowed here)
  --seed N           repeat a result exactly
  --negative "..."   what to keep out of the video
  --model NAME       one of the generators this workspace offers
  --silent           no sound, on models that make it
  --hq               higher quality, slower
  --loop             end on the first frame, so the clip plays seamlessly on repeat
  --shots multi      several shots in one clip, on models that make them (default single)

Attach an image (or mention the bot on a message with one) to animate it. Two images: the
first is where the clip starts, the second where it ends (both the same orientation)."""

# An option starts a word: "--fps", or "—fps" / "–fps" after phone keyboards "smarten" the dashes.
_OPTION = re.compile(r"(?<!\S)(?:--|—|–)([A-Za-z][A-Za-z-]*)(?:=(\S*))?")
_SURROGATE = re.compile("[\ud800-\udfff]")
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»"}


def parse_request(
    text: str, *, image: ImageInput | None = None, end_image: ImageInput | None = None, **fields: object
) -> VideoRequest:
    """Parse a whole command text into a request; raise ``InvalidRequest`` naming what is wrong.

    ``fields`` are a platform's native option fields (Discord's /video form: ``duration=8``,
    ``hq=True``; ``None`` or ``False`` when left empty). ``end_image`` is the clip's last frame
    (a second attachment). Options typed in the text are read by
    the same grammar, so ``a fox --duration 8`` in the prompt field means what it means in a
    mention; a field and a typed option that disagree are refused, naming both.
    """
    prompt, options = split_options(clean_text(text))
    chosen: dict[str, object] = dict(options)
    for name, value in fields.items():
        if name not in VALUE_OPTIONS and name not in FLAG_OPTIONS:
            raise TypeError(f"parse_request() got an unknown field {name!r}")
        if value is None or value is False:
            continue
        if name in FLAG_OPTIONS:
            chosen[name] = ""
        elif name in options and not _same(name, options[name], value):
            raise InvalidRequest(
                f"The {name} is given twice and they disagree: {value} in the {name} field, "
                f"--{name} {options[name]} in the prompt. Keep one."
            )
        else:
            chosen[name] = value
    return build_request(
        prompt,
        duration=chosen.get("duration"),  # type: ignore[arg-type]
        aspect=chosen.get("aspect"),  # type: ignore[arg-type]
        resolution=chosen.get("resolution"),  # type: ignore[arg-type]
        fps=chosen.get("fps"),  # type: ignore[arg-type]
        seed=chosen.get("seed"),  # type: ignore[arg-type]
        negative=chosen.get("negative"),  # type: ignore[arg-type]
        hq="hq" in chosen,
        model=chosen.get("model"),  # type: ignore[arg-type]
        silent="silent" in chosen,
        image=image,
        end_image=end_image,
        loop="loop" in chosen,
        shots=chosen.get("shots"),  # type: ignore[arg-type]
    )


def _same(name: str, typed: str, field: object) -> bool:
    """Whether a typed option and a native field ask for the same thing (``8`` and ``8s`` do)."""
    if name in ("duration", "fps", "seed"):
        try:
            most = {"duration": MAX_DURATION_S, "fps": 1000, "seed": MAX_SEED}[name]
            return _whole_number(name, typed, maximum=most) == _whole_number(name, field, maximum=most)  # type: ignore[arg-type]
        except InvalidRequest:
            return False
    if name == "negative":
        return typed.strip() == str(field).strip()
    return typed.strip().lower() == str(field).strip().lower()


def split_options(text: str) -> tuple[str, dict[str, str]]:
    """Separate the prompt from ``--name value`` options; values may be quoted."""
    options: dict[str, str] = {}
    kept: list[str] = []
    pos = 0
    for match in _OPTION.finditer(text):
        if match.start() < pos:
            continue  # inside a quoted value consumed below
        kept.append(text[pos : match.start()])
        name = _canonical(match.group(1))
        if name in FLAG_OPTIONS:
            options[name] = ""
            pos = match.end()
            continue
        value, pos = _read_value(text, match)
        if value is None:
            raise InvalidRequest(f"--{name} needs a value, e.g. {_example(name)}.")
        options[name] = value
    kept.append(text[pos:])
    prompt = " ".join("".join(kept).split())
    return prompt, options


def build_request(
    prompt: str,
    *,
    duration: int | str | None = None,
    aspect: str | None = None,
    resolution: str | None = None,
    fps: int | str | None = None,
    seed: int | str | None = None,
    negative: str | None = None,
    hq: bool = False,
    model: str | None = None,
    silent: bool = False,
    image: ImageInput | None = None,
    end_image: ImageInput | None = None,
    loop: bool = False,
    shots: str | None = None,
) -> VideoRequest:
    """Check each option and build the request. What varies by workspace and model (longest
    duration, allowed sizes and rates, which backends) is checked later by the service."""
    prompt = clean_text(prompt).strip()
    if not prompt:
        raise InvalidRequest(
            "Describe the video you want, e.g. `a red fox running through fresh snow --duration 8`."
        )
    _keyframes(image, end_image, loop)
    shape, tier, size = _shape(aspect, resolution, image)
    return VideoRequest(
        prompt=prompt,
        duration_s=_duration(duration),
        resolution=size or TIER_SIZES[tier or DEFAULT_TIER][shape],
        fps=_fps(fps),
        seed=_seed(seed),
        negative_prompt=clean_text(negative or "").strip(),
        quality=Quality.HIGH if hq else Quality.STANDARD,
        image=image,
        aspect=shape,
        tier=tier,
        exact_size=size is not None,
        backend=_model(model),
        silent=silent,
        end_image=end_image,
        loop=loop,
        shots=_shots(shots),
    )


def _canonical(raw: str) -> str:
    name = ALIASES.get(raw.lower(), raw.lower())
    if name in VALUE_OPTIONS or name in FLAG_OPTIONS:
        return name
    known = VALUE_OPTIONS + FLAG_OPTIONS
    close = [o for o in known if o.startswith(name)] or difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean --{close[0]}?" if close else ""
    listed = ", ".join(f"--{o}" for o in known)
    raise InvalidRequest(f"Unknown option --{raw}.{hint} Options are {listed}.")


def _read_value(text: str, match: re.Match[str]) -> tuple[str | None, int]:
    if match.group(2) is not None:
        return (match.group(2) or None), match.end()
    rest = match.end()
    while rest < len(text) and text[rest].isspace():
        rest += 1
    if rest >= len(text) or _OPTION.match(text, rest):
        return None, rest
    opening = text[rest]
    if opening in _QUOTES:
        closing = text.find(_QUOTES[opening], rest + 1)
        if closing == -1:
            raise InvalidRequest(f"A quote {opening} is never closed.")
        return text[rest + 1 : closing], closing + 1
    end = rest
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[rest:end], end


def _example(name: str) -> str:
    return {
        "duration": "--duration 8",
        "aspect": "--aspect 9:16",
        "resolution": "--resolution 1280x720",
        "fps": "--fps 24",
        "seed": "--seed 7",
        "negative": '--negative "blurry, text"',
        "model": "--model final",
        "shots": "--shots multi",
    }[name]


def clean_text(text: str) -> str:
    """``text`` with lone surrogates (from a JSON ``\\ud800`` escape) replaced by U+FFFD, so it
    can be stored, logged and sent as UTF-8; everything else is kept as written."""
    if not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub("\ufffd", text)


def parse_job_id(value: object, *, name: str = "job") -> int:
    """A job number as a button, command or URL carries it (``42``, ``#42``); anything else,
    a number too large for the database included, is refused with ``InvalidRequest``."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().removeprefix("#")
        if not (text.isascii() and text.isdigit() and len(text) <= 19):
            raise InvalidRequest(f"The {name} number must be a whole number such as 42 (got '{_shown(value)}').")
        number = int(text)
    if not 1 <= number <= MAX_JOB_ID:
        raise InvalidRequest(f"There is no job #{_shown(number)}.")
    return number


def _shown(value: object) -> str:
    """A value quoted back to the person: short, and never a 5,000-digit conversion."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if value.bit_length() < 64 else "a very large number"
    text = clean_text(str(value))
    return text if len(text) <= 40 else text[:39] + "…"


def _whole_number(name: str, value: int | str, *, maximum: int) -> int:
    """A number from an option: ASCII or any script's decimal digits (``١٦``), nothing else."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest(f"--{name} must be a whole number, e.g. {_example(name)}.")
    if isinstance(value, int):
        number = value
    else:
        text = value.strip().lower().removesuffix("s")
        if not text.isdecimal():
            raise InvalidRequest(f"--{name} must be a whole number (got '{_shown(value)}'), e.g. {_example(name)}.")
        text = text.lstrip("0") or "0"
        if len(text) > len(str(maximum)):
            raise InvalidRequest(f"--{name} must be between 0 and {maximum} (got {_shown(value)}).")
        number = int(text)
    if not 0 <= number <= maximum:
        raise InvalidRequest(f"--{name} must be between 0 and {maximum} (got {_shown(number)}).")
    return number


def _duration(value: int | str | None) -> int:
    if value is None:
        return DEFAULT_DURATION_S
    seconds = _whole_number("duration", value, maximum=MAX_DURATION_S)
    if seconds < 1:
        raise InvalidRequest(f"--duration must be at least 1 second (got {seconds}).")
    return seconds


def _fps(value: int | str | None) -> int | None:
    if value is None:
        return None
    fps = _whole_number("fps", value, maximum=1000)
    if fps not in ALLOWED_FPS:
        raise InvalidRequest(f"--fps must be {' or '.join(map(str, ALLOWED_FPS))} (got {fps}).")
    return fps


def _model(value: str | None) -> str | None:
    if value is None:
        return None
    name = value.strip().lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", name):
        raise InvalidRequest(f"--model must be the name of a generator, e.g. {_example('model')} (got '{value[:40]}').")
    return name


def _shots(value: str | None) -> str:
    if value is None:
        return "single"
    if not isinstance(value, str) or value.strip().lower() not in SHOTS:
        raise InvalidRequest(f"--shots must be single or multi (got '{_shown(value)}'), e.g. {_example('shots')}.")
    return value.strip().lower()


def _keyframes(image: ImageInput | None, end_image: ImageInput | None, loop: bool) -> None:
    """An end image needs a start image of the same orientation; a loop ends on its own start."""
    if end_image is None:
        return
    if loop:
        raise InvalidRequest("--loop ends the clip on its first frame, so it takes no end image; drop one of them.")
    if image is None:
        raise InvalidRequest(
            "An end image needs a start image too: give two images, the first where the clip starts, "
            "the second where it ends."
        )
    start, end = _image_orientation(image), _image_orientation(end_image)
    if start != end:
        raise InvalidRequest(
            f"The start image is {start} ({image.width}x{image.height}) but the end image is {end} "
            f"({end_image.width}x{end_image.height}); both must share one orientation. "
            f"Crop the end image to {start} (or the start image to {end}) and try again."
        )


def _image_orientation(image: ImageInput) -> str:
    return {"16:9": "landscape", "9:16": "portrait", "1:1": "square"}[_closest_aspect(image.width, image.height)]


def _seed(value: int | str | None) -> int | None:
    if value is None:
        return None
    seed = _whole_number("seed", value, maximum=MAX_SEED)
    return seed


def _shape(
    aspect: str | None, resolution: str | None, image: ImageInput | None
) -> tuple[str, str | None, Resolution | None]:
    """The aspect, the tier asked for (if any) and the exact size asked for (if any)."""
    shape: str | None = None
    if aspect is not None:
        shape = aspect.strip()
        if shape not in TIER_SIZES[DEFAULT_TIER]:
            raise InvalidRequest(f"--aspect must be {', '.join(TIER_SIZES[DEFAULT_TIER])} (got '{aspect}').")
    if resolution is None:
        return shape or _image_aspect(image), None, None
    text = resolution.strip().lower()
    if text in TIERS or (text.isdigit() and f"{text}p" in TIERS):
        tier = text if text in TIERS else f"{text}p"
        shape = shape or _image_aspect(image)
        if shape not in TIER_SIZES[tier]:
            raise InvalidRequest(f"--aspect {shape} has no {tier} size; choose {', '.join(TIER_SIZES[tier])}.")
        return shape, tier, None
    try:
        size = Resolution.parse(resolution)
    except ValueError:
        raise InvalidRequest(
            f"--resolution must be {', '.join(TIERS)} or a size like 1280x720 (got '{resolution}')."
        ) from None
    if shape is not None and _orientation(size) != _orientation(TIER_SIZES[DEFAULT_TIER][shape]):
        raise InvalidRequest(f"--aspect {aspect} and --resolution {size} disagree; give one of them.")
    return shape or _closest_aspect(size.width, size.height), None, size


def _image_aspect(image: ImageInput | None) -> str:
    return _closest_aspect(image.width, image.height) if image is not None else "16:9"


def _orientation(size: Resolution) -> str:
    if size.width == size.height:
        return "square"
    return "landscape" if size.width > size.height else "portrait"


def _closest_aspect(width: int, height: int) -> str:
    """Animate an image in the shape it already has: portrait photos stay portrait."""
    ratio = width / max(height, 1)
    if ratio < 0.8:
        return "9:16"
    if ratio <= 1.25:
        return "1:1"
    return "16:9"
