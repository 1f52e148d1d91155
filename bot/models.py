"""The value objects that cross the core's boundary: what to make, who asked and where.

Adapters build a ``VideoRequest`` (usually with ``bot.grammar.parse_request``) and an ``Origin``
and hand them to ``JobService.submit``; backends receive a ``GenerationSpec`` per segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Mode(StrEnum):
    TEXT_TO_VIDEO = "t2v"
    IMAGE_TO_VIDEO = "i2v"


class Quality(StrEnum):
    STANDARD = "standard"
    HIGH = "hq"


@dataclass(frozen=True)
class Resolution:
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> "Resolution":
        """Parse ``"1280x720"``; raises ValueError on anything else."""
        w, sep, h = text.lower().strip().partition("x")
        if not sep or not all(side.isascii() and side.isdigit() and len(side) <= 5 for side in (w, h)):
            raise ValueError(text)
        return cls(int(w), int(h))

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class ImageInput:
    """An image already checked and normalised by ``bot.images.load_image``."""

    data: bytes
    mime: str
    width: int
    height: int


@dataclass(frozen=True)
class VideoRequest:
    """What to make. ``duration_s`` may exceed one backend segment; the runner stitches."""

    prompt: str
    duration_s: int = 5
    resolution: Resolution = Resolution(1280, 720)
    fps: int | None = None
    """None: the first frame rate the limits allow here (16 unless an admin lists 24 first)."""
    seed: int | None = None
    negative_prompt: str = ""
    quality: Quality = Quality.STANDARD
    image: ImageInput | None = None
    aspect: str = "16:9"
    """The shape asked for (or the image's): with ``tier`` it picks a model's size."""
    tier: str | None = None
    """A tier asked for (``--resolution 1080p``); None: the backend's default tier."""
    exact_size: bool = False
    """True when ``--resolution WxH`` named the size itself: no tier mapping applies."""
    backend: str | None = None
    """``--model NAME``: one of the backends the limits allow here; None: the default there."""
    silent: bool = False
    """``--silent``: no sound track, on models that make one."""
    end_image: ImageInput | None = None
    """A second image: the clip's last frame (needs ``image``, the first frame)."""
    loop: bool = False
    """``--loop``: the clip ends on its own first frame, so it plays seamlessly on repeat."""
    shots: str = "single"
    """``--shots multi``: one clip cut into several shots, on models that can (``multi_shot``)."""

    @property
    def mode(self) -> Mode:
        return Mode.IMAGE_TO_VIDEO if self.image is not None else Mode.TEXT_TO_VIDEO

    @property
    def keyframed(self) -> bool:
        """True when the clip must end on a given frame: an end image, or a loop."""
        return self.end_image is not None or self.loop


@dataclass(frozen=True)
class Origin:
    """Who asked and where the answer goes.

    ``extra`` carries platform details the notifier needs later (a Slack ``response_url``, a
    Discord interaction token); it is stored with the job, so it must hold no long-lived secret.
    """

    platform: str
    workspace_id: str
    channel_id: str
    user_id: str
    user_name: str = ""
    thread_id: str | None = None
    is_admin: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def user_key(self) -> str:
        return f"{self.platform}:{self.user_id}"

    @property
    def workspace_key(self) -> str:
        return f"{self.platform}:{self.workspace_id}"


@dataclass(frozen=True)
class GenerationSpec:
    """One backend call: at most one model-length segment."""

    prompt: str
    width: int
    height: int
    duration_s: int
    fps: int
    seed: int
    negative_prompt: str = ""
    quality: Quality = Quality.STANDARD
    image: bytes | None = None
    image_mime: str | None = None
    guidance_scale: float | None = None
    num_inference_steps: int | None = None
    motion_strength: float | None = None
    model: str = ""
    """The provider's model id for this mode (hosted backends); empty for our own generators."""
    audio: bool = False
    """Make sound: True when the model makes it and the person did not ask for ``--silent``."""
    end_image: bytes | None = None
    """The frame this segment must end on (an end image, or a loop's first frame); only with
    ``image``, and only on a model whose ``ModelSpec.end_frame`` is True."""
    end_image_mime: str | None = None
    shots: str = "single"
    """``single`` or ``multi`` (several shots in one clip; models with ``multi_shot``)."""

    @property
    def mode(self) -> Mode:
        return Mode.IMAGE_TO_VIDEO if self.image is not None else Mode.TEXT_TO_VIDEO

    @property
    def tier(self) -> str:
        """``480p``, ``720p`` or ``1080p``: how providers that take a tier name the size."""
        from bot.catalog import tier_of

        return tier_of(Resolution(self.width, self.height))


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class TaskState:
    """A backend's answer to a poll. A finished task has ``video_url`` or ``video_path``."""

    status: TaskStatus
    progress: float = 0.0
    video_url: str | None = None
    video_path: Path | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED)


@dataclass(frozen=True)
class ClipInfo:
    """What ffprobe-like inspection found in a video file."""

    duration_s: float
    width: int
    height: int
    fps: float
    frames: int
    codec: str
    size_bytes: int
    has_audio: bool = False
    """True when the file carries a sound track (hosted Wan 2.5/2.6 clips do)."""
    audio_duration_s: float = 0.0
    """How long the sound track lasts; 0.0 without one."""


@dataclass(frozen=True)
class Clip:
    """A finished, checked video ready to hand to a notifier."""

    path: Path
    info: ClipInfo
    caption: str
