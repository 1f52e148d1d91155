"""The model table: what each hosted Wan model accepts, so a request is checked before it is paid for.

A provider refuses a request it cannot honour only after the job was admitted, queued and
submitted; a person then waits for a refusal that could have been given at once. Every hosted
backend therefore names its text-to-video and image-to-video model here, and the service checks
duration, size and frame rate against that entry before admitting the job. The refusal lists
what the model accepts.

=====================  =====  =====================  ============  ====  =====  ===========  ==========
model                  modes  tiers                  durations     fps   sound  end frame    multi-shot
=====================  =====  =====================  ============  ====  =====  ===========  ==========
wan2.6-t2v             t2v    720p 1080p             2–15 s        24    yes    no           yes
wan2.6-i2v             i2v    720p 1080p             2–15 s        24    yes    no           yes
wan2.5-t2v-preview     t2v    480p 720p 1080p        5 or 10 s     24    yes    no           no
wan2.5-i2v-preview     i2v    480p 720p 1080p        5 or 10 s     24    yes    no           no
wan2.2-t2v-plus        t2v    480p 1080p             5 s           24    no     no           no
wan2.2-i2v-plus        i2v    480p 1080p             5 s           24    no     no           no
wan2.2-kf2v-flash      i2v    480p 720p 1080p        5 s           24    no     yes          no
wanx2.1-kf2v-plus      i2v    720p                   5 s           24    no     yes          no
fal-ai/wan-25-preview  both   480p 720p 1080p        5 or 10 s     24    yes    no           no
fal-ai/wan/v2.2-a14b   both   480p 720p              5 s           16    no     no           no
fal-ai/wan-flf2v       i2v    480p 720p              5 s           16    no     yes          no
wan-video/wan-2.5-*    both   480p 720p 1080p        5 or 10 s     24    yes    no           no
=====================  =====  =====================  ============  ====  =====  ===========  ==========

Sizes per tier follow Wan's own presets (``TIER_SIZES``): an aspect picks one size of the tier.
Image-to-video on DashScope and Replicate takes only a tier and keeps the image's shape, so the
clip's exact size is known only when it arrives (``follows_image_aspect``). Prices are the
providers' list prices per second of output at the time of writing (USD, international
regions); admins override them per backend in the limits file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bot.errors import ConfigurationError, InvalidRequest
from bot.models import Mode, Resolution

TIERS = ("480p", "720p", "1080p")

TIER_SIZES: Mapping[str, Mapping[str, Resolution]] = {
    "480p": {"16:9": Resolution(832, 480), "9:16": Resolution(480, 832), "1:1": Resolution(624, 624)},
    "720p": {
        "16:9": Resolution(1280, 720),
        "9:16": Resolution(720, 1280),
        "1:1": Resolution(960, 960),
        "4:3": Resolution(1088, 832),
        "3:4": Resolution(832, 1088),
    },
    "1080p": {
        "16:9": Resolution(1920, 1080),
        "9:16": Resolution(1080, 1920),
        "1:1": Resolution(1440, 1440),
        "4:3": Resolution(1632, 1248),
        "3:4": Resolution(1248, 1632),
    },
}

_TIER_MAX_AREA = {"480p": 500_000, "720p": 1_100_000, "1080p": 2_400_000}


def tier_of(size: Resolution) -> str:
    """The quality tier a frame size belongs to, by its area (832x480 and 624x624 are 480p)."""
    area = size.width * size.height
    for tier in TIERS:
        if area <= _TIER_MAX_AREA[tier]:
            return tier
    return "1080p+"


@dataclass(frozen=True)
class Durations:
    """The clip lengths one call of a model makes: a set (``{5, 10}``) or a range (2–15 s)."""

    low: int
    high: int
    values: tuple[int, ...] = ()

    @classmethod
    def of(cls, *values: int) -> "Durations":
        return cls(min(values), max(values), tuple(sorted(values)))

    @classmethod
    def between(cls, low: int, high: int) -> "Durations":
        return cls(low, high)

    def accepts(self, seconds: int) -> bool:
        return seconds in self.values if self.values else self.low <= seconds <= self.high

    def describe(self) -> str:
        if self.values:
            words = [str(v) for v in self.values]
            return (", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]) + " s"
        return f"{self.low}–{self.high} s"

    def segments(self, total: int) -> list[int] | None:
        """How ``total`` seconds are made: one call, or several stitched; None if it can't be.

        A range splits into near-equal parts within the range. A set is decomposed greedily into
        its own values, largest first, and must add up exactly (20 s on {5, 10} is 10 + 10; 7 s
        cannot be made).
        """
        if self.accepts(total):
            return [total]
        if total < self.low:
            return None
        if not self.values:
            count = -(-total // self.high)
            base, extra = divmod(total, count)
            parts = [base + (1 if i < extra else 0) for i in range(count)]
            return parts if all(self.accepts(p) for p in parts) else None
        parts: list[int] = []
        left = total
        for value in reversed(self.values):
            while left >= value:
                parts.append(value)
                left -= value
        return parts if left == 0 else None


@dataclass(frozen=True)
class ModelSpec:
    """What one model accepts. ``name`` is the provider's own id, sent as it is."""

    name: str
    modes: frozenset[Mode]
    tiers: tuple[str, ...]
    durations: Durations
    fps: tuple[int, ...]
    audio: bool = False
    price_per_s: Mapping[str, float] = field(default_factory=dict)
    end_frame: bool = False
    multi_shot: bool = False
    follows_image_aspect: bool = False
    exact: bool = False
    """True for our own generators (simulator, worker, diffusers): they make any size on the
    limits' list at the asked rate, so the clip is checked against both exactly."""

    @property
    def max_segment_s(self) -> int:
        return self.durations.high

    def sizes(self) -> list[Resolution]:
        return [size for tier in self.tiers for size in TIER_SIZES[tier].values()]

    def size_for(self, aspect: str, tier: str) -> Resolution | None:
        return TIER_SIZES.get(tier, {}).get(aspect) if tier in self.tiers else None

    def price(self, size: Resolution) -> float:
        """List price per second for a size, by its tier (the dearest tier if unknown)."""
        if not self.price_per_s:
            return 0.0
        return self.price_per_s.get(tier_of(size), max(self.price_per_s.values()))

    def check(self, *, mode: Mode, size: Resolution, duration_s: int, fps: int) -> None:
        """Refuse what this model cannot make, listing what it can. Longer durations than one
        call are fine when they split into the model's own lengths (the runner stitches)."""
        if mode not in self.modes:
            raise InvalidRequest(f"{self.name} cannot make {_MODE_WORDS[mode]}.")
        if not self.exact:
            if tier_of(size) not in self.tiers or (
                not (self.follows_image_aspect and mode is Mode.IMAGE_TO_VIDEO) and size not in self.sizes()
            ):
                raise InvalidRequest(
                    f"{self.name} cannot make {size}; it makes {self.describe_sizes()}."
                )
            if fps not in self.fps:
                raise InvalidRequest(
                    f"{self.name} makes {' or '.join(map(str, self.fps))} fps only (got --fps {fps})."
                )
        if self.durations.segments(duration_s) is None:
            raise InvalidRequest(
                f"{self.name} makes clips of {self.durations.describe()}, so {duration_s} s cannot be made; "
                f"longer clips must add up from those lengths."
            )

    def describe_sizes(self) -> str:
        parts = []
        for tier in self.tiers:
            sizes = ", ".join(str(s) for s in TIER_SIZES[tier].values())
            parts.append(f"{tier} ({sizes})")
        return "; ".join(parts)

    def describe(self) -> str:
        """One paragraph for ``/video help``: what this model accepts."""
        modes = " and ".join(_MODE_WORDS[m] for m in sorted(self.modes))
        lines = [
            f"Model {self.name}: {modes}.",
            f"  --duration: {self.durations.describe()} per clip (longer clips are stitched)",
            f"  --resolution: {', '.join(self.tiers)} or a size: {self.describe_sizes()}",
            f"  --fps: {' or '.join(map(str, self.fps))}",
        ]
        if self.audio:
            lines.append("  makes sound (--silent for none)")
        if self.end_frame:
            lines.append("  takes an end frame")
        if self.multi_shot:
            lines.append("  --shots multi: several shots in one clip")
        return "\n".join(lines)


_MODE_WORDS = {Mode.TEXT_TO_VIDEO: "text-to-video", Mode.IMAGE_TO_VIDEO: "image-to-video"}
_T2V = frozenset({Mode.TEXT_TO_VIDEO})
_I2V = frozenset({Mode.IMAGE_TO_VIDEO})
_BOTH = _T2V | _I2V

_WAN26_PRICE = {"720p": 0.10, "1080p": 0.15}
_WAN25_PRICE = {"480p": 0.05, "720p": 0.10, "1080p": 0.15}
_WAN22_PRICE = {"480p": 0.02, "720p": 0.04, "1080p": 0.10}

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        # Alibaba Model Studio (DashScope)
        ModelSpec("wan2.6-t2v", _T2V, ("720p", "1080p"), Durations.between(2, 15), (24,), True, _WAN26_PRICE,
                  multi_shot=True),
        ModelSpec("wan2.6-i2v", _I2V, ("720p", "1080p"), Durations.between(2, 15), (24,), True, _WAN26_PRICE,
                  multi_shot=True, follows_image_aspect=True),
        ModelSpec("wan2.5-t2v-preview", _T2V, TIERS, Durations.of(5, 10), (24,), True, _WAN25_PRICE),
        ModelSpec("wan2.5-i2v-preview", _I2V, TIERS, Durations.of(5, 10), (24,), True, _WAN25_PRICE,
                  follows_image_aspect=True),
        ModelSpec("wan2.2-t2v-plus", _T2V, ("480p", "1080p"), Durations.of(5), (24,), False, _WAN22_PRICE),
        ModelSpec("wan2.2-i2v-plus", _I2V, ("480p", "1080p"), Durations.of(5), (24,), False, _WAN22_PRICE,
                  follows_image_aspect=True),
        ModelSpec("wan2.2-kf2v-flash", _I2V, TIERS, Durations.of(5), (24,), False, _WAN22_PRICE,
                  end_frame=True, follows_image_aspect=True),
        ModelSpec("wanx2.1-kf2v-plus", _I2V, ("720p",), Durations.of(5), (24,), False, {"720p": 0.10},
                  end_frame=True, follows_image_aspect=True),
        # fal.ai queue endpoints
        ModelSpec("fal-ai/wan-25-preview/text-to-video", _T2V, TIERS, Durations.of(5, 10), (24,), True,
                  _WAN25_PRICE),
        ModelSpec("fal-ai/wan-25-preview/image-to-video", _I2V, TIERS, Durations.of(5, 10), (24,), True,
                  _WAN25_PRICE, follows_image_aspect=True),
        ModelSpec("fal-ai/wan/v2.2-a14b/text-to-video", _T2V, ("480p", "720p"), Durations.of(5), (16,), False,
                  {"480p": 0.04, "720p": 0.08}),
        ModelSpec("fal-ai/wan/v2.2-a14b/image-to-video", _I2V, ("480p", "720p"), Durations.of(5), (16,), False,
                  {"480p": 0.04, "720p": 0.08}),
        # Wan 2.1 FLF2V 14B: $0.20 (480p) / $0.40 (720p) a 5 s clip of 81 frames at 16 fps.
        ModelSpec("fal-ai/wan-flf2v", _I2V, ("480p", "720p"), Durations.of(5), (16,), False,
                  {"480p": 0.04, "720p": 0.08}, end_frame=True),
        # Replicate official models
        ModelSpec("wan-video/wan-2.5-t2v", _T2V, TIERS, Durations.of(5, 10), (24,), True, _WAN25_PRICE),
        ModelSpec("wan-video/wan-2.5-i2v", _I2V, TIERS, Durations.of(5, 10), (24,), True, _WAN25_PRICE,
                  follows_image_aspect=True),
    )
}

def own_generator(name: str, max_segment_s: int, *, audio: bool = False) -> ModelSpec:
    """The entry for the simulator, a self-hosted worker or the local GPU: any size and rate the
    limits allow, made exactly, up to ``max_segment_s`` a call; ``audio`` when its clips come
    with sound (``videobot simulator --audio``). They take an end frame (the provider contract's
    ``end_image``: the simulator crossfades onto it, the GPU pipeline passes it as
    ``last_image``); multi-shot they do not make."""
    return ModelSpec(
        name, _BOTH, TIERS, Durations.between(1, max_segment_s), (16, 24), audio=audio, end_frame=True, exact=True
    )


def models_with(feature: str) -> list[str]:
    """The catalog's models that have ``feature`` (``end_frame`` or ``multi_shot``), for
    refusals that say where a request could be made."""
    return [name for name, spec in MODELS.items() if getattr(spec, feature)]


def model_spec(name: str) -> ModelSpec:
    """The table entry for a provider model id; an id we don't know is refused at start, since
    guessing what it accepts would let the provider refuse every job after admission."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise ConfigurationError(f"Unknown model {name!r}; videobot knows {known}.") from None
