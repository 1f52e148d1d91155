"""Synthetic frames and sound for the simulator: real, playable video that plainly is not a
model's output.

Text-to-video draws a drifting gradient with a moving disc and the prompt written on it;
image-to-video pans and zooms slowly over the given picture (a Ken Burns move); given an end
image too, it crossfades from the start image to the end image under a gentle zoom that is nil
at both ends, so the first frame is the start image and the last frame is the end image, each
cover-fitted to the clip (a loop passes the same frame twice). All are
generators of RGB24 numpy frames, so the caller decides how to encode them and can stop between
frames. Everything expensive (gradient, text, disc mask, cover-fitted image) is computed once per
clip; a frame is then a slice, a copy and a few small alpha blends, so the frames of a 5 s 720p
clip take well under a second and encoding dominates. All of it is blocking CPU work: run it in a
thread.

Sound, for models that make it, is a plain tone whose pitch follows the seed (``tone_hz``):
consecutive segments of one job have consecutive seeds, so each segment sounds different and a
test can hear where one ends and the next begins.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

MAX_IMAGE_PIXELS = 40_000_000
"""Larger source images are refused: decoding them would cost more than the clip itself."""

TONE_SAMPLE_RATE = 48_000
_TONE_BASE_HZ = 300
_TONE_STEP_HZ = 100
_TONE_STEPS = 12
_MAX_TEXT_LINES = 6
_ELLIPSIS = "..."


class _Overlay:
    """A pre-rendered RGBA patch blended onto frames at a fixed place, with numpy only."""

    def __init__(self, patch: Image.Image, left: int, top: int) -> None:
        rgba = np.asarray(patch.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[:, :, 3:4]
        self._premultiplied = rgba[:, :, :3] * alpha * 255.0
        self._keep = 1.0 - alpha
        self._rows = slice(top, top + patch.height)
        self._cols = slice(left, left + patch.width)

    def apply(self, frame: np.ndarray) -> None:
        region = frame[self._rows, self._cols]
        region[:] = (region * self._keep + self._premultiplied).astype(np.uint8)


def image_size(data: bytes) -> tuple[int, int]:
    """Return ``(width, height)`` of an encoded image of any type Pillow reads.

    Raises ``ValueError`` when the bytes are not a readable image or are too large to animate.
    Only the header and the integrity check run, so it is cheap enough for request validation.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            img.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError("not a readable image") from exc
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ValueError(f"image of {size[0]}x{size[1]} pixels is too large")
    return size


def tone_hz(seed: int) -> int:
    """The pitch of the simulator's tone for ``seed``: 300 to 1400 Hz in steps of 100, so seeds
    next to each other (a job's segments) are 100 Hz apart, easily told apart by an FFT."""
    return _TONE_BASE_HZ + _TONE_STEP_HZ * (seed % _TONE_STEPS)


def write_tone(path: Path, *, frequency_hz: float, seconds: float) -> Path:
    """Write a mono 16-bit WAV of a sine at ``frequency_hz`` lasting ``seconds``, at half volume
    with 5 ms fades so it does not click."""
    count = max(1, round(seconds * TONE_SAMPLE_RATE))
    t = np.arange(count, dtype=np.float64) / TONE_SAMPLE_RATE
    signal = 0.5 * np.sin(math.tau * frequency_hz * t)
    fade = min(count // 2, TONE_SAMPLE_RATE // 200)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        signal[:fade] *= ramp
        signal[-fade:] *= ramp[::-1]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(TONE_SAMPLE_RATE)
        out.writeframes((signal * 32767).astype("<i2").tobytes())
    return path


def scene_frames(
    prompt: str, *, width: int, height: int, count: int, seed: int, label: str
) -> Iterator[np.ndarray]:
    """Yield ``count`` frames of a moving scene with ``prompt`` written across its lower third."""
    rng = random.Random(seed)
    background = _scrolling_gradient(width, height, rng)
    radius = max(4, min(width, height) // 7)
    disc_keep, disc_color = _disc(radius, _color(rng.random(), 0.35, 1.0))
    overlays = [_label_overlay(label, width, height), _prompt_overlay(prompt, width, height)]
    phase_x, phase_y = rng.uniform(0, math.tau), rng.uniform(0, math.tau)
    for index in range(count):
        t = index / max(1, count)
        offset = int(t * width) % width
        frame = background[:, offset : offset + width].copy()
        cx = width / 2 + (width / 2 - radius - 2) * math.sin(math.tau * t + phase_x)
        cy = height / 2 + (height / 2 - radius - 2) * math.sin(2 * math.tau * t + phase_y)
        left, top = int(cx) - radius, int(cy) - radius
        region = frame[top : top + 2 * radius, left : left + 2 * radius]
        region[:] = (region * disc_keep + disc_color).astype(np.uint8)
        for overlay in overlays:
            overlay.apply(frame)
        yield frame


def ken_burns_frames(
    image: bytes, *, width: int, height: int, count: int, seed: int, label: str
) -> Iterator[np.ndarray]:
    """Frames panning and zooming over ``image``, cover-fitted to the frame.

    The image may be any type Pillow decodes (whatever its declared mime said); EXIF rotation
    is applied and transparency dropped, because video frames are opaque RGB. The image is
    decoded here, before the first frame, so a damaged one raises ``ValueError`` at once rather
    than in the middle of an encode.
    """
    zoom = 1.2
    try:
        with Image.open(io.BytesIO(image)) as opened:
            source = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError("the image could not be decoded") from exc
    scale = max(width / source.width, height / source.height) * zoom
    cover = source.resize(
        (math.ceil(source.width * scale), math.ceil(source.height * scale)), Image.Resampling.LANCZOS
    )
    return _pan_and_zoom(
        cover, width, height, count, random.Random(seed), zoom, _label_overlay(label, width, height)
    )


def keyframe_frames(
    start: bytes, end: bytes, *, width: int, height: int, count: int, seed: int, label: str
) -> Iterator[np.ndarray]:
    """Frames from ``start`` to ``end``, both cover-fitted (centred) to the frame.

    The picture crossfades from one image to the other while the view zooms in by up to 10 %
    towards a seeded point and back out, so the first frame is exactly the fitted start image
    and the last exactly the fitted end image (under the label), as a first-and-last-frame model
    makes them. Both images are decoded before the first frame; a damaged one raises
    ``ValueError``.
    """
    first = _cover_fit(_decode(start), width, height)
    last = _cover_fit(_decode(end), width, height)
    rng = random.Random(seed)
    focus = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7))
    return _crossfade(first, last, width, height, count, focus, _label_overlay(label, width, height))


def _decode(image: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(image)) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError("the image could not be decoded") from exc


def _cover_fit(source: Image.Image, width: int, height: int) -> np.ndarray:
    """``source`` scaled to cover ``width`` x ``height`` and cut to it around its centre."""
    return np.asarray(ImageOps.fit(source, (width, height), Image.Resampling.LANCZOS), dtype=np.float32)


def _crossfade(
    first: np.ndarray,
    last: np.ndarray,
    width: int,
    height: int,
    count: int,
    focus: tuple[float, float],
    label: _Overlay,
) -> Iterator[np.ndarray]:
    for index in range(count):
        t = index / max(1, count - 1)
        mix = 0.5 - 0.5 * math.cos(math.pi * t)
        picture = first * (1.0 - mix) + last * mix
        zoom = 1.0 + 0.1 * math.sin(math.pi * t)
        if index in (0, count - 1) or zoom < 1.001:
            frame = np.clip(picture + 0.5, 0, 255).astype(np.uint8)
        else:
            box_w, box_h = width / zoom, height / zoom
            left, top = (width - box_w) * focus[0], (height - box_h) * focus[1]
            view = Image.fromarray(np.clip(picture + 0.5, 0, 255).astype(np.uint8)).resize(
                (width, height), Image.Resampling.BILINEAR, box=(left, top, left + box_w, top + box_h)
            )
            frame = np.array(view)
        label.apply(frame)
        yield frame


def _pan_and_zoom(
    cover: Image.Image, width: int, height: int, count: int, rng: random.Random, zoom: float, label: _Overlay
) -> Iterator[np.ndarray]:
    """Slide a window between two random points of ``cover`` while zooming in or out by ``zoom``."""
    zoom_in = rng.random() < 0.5
    start = (rng.random(), rng.random())
    end = (rng.random(), rng.random())
    for index in range(count):
        t = index / max(1, count - 1)
        eased = 0.5 - 0.5 * math.cos(math.pi * t)
        current = 1 + (zoom - 1) * (eased if zoom_in else 1 - eased)
        box_w, box_h = width * zoom / current, height * zoom / current
        fx = start[0] + (end[0] - start[0]) * eased
        fy = start[1] + (end[1] - start[1]) * eased
        left = (cover.width - box_w) * fx
        top = (cover.height - box_h) * fy
        view = cover.resize(
            (width, height), Image.Resampling.BILINEAR, box=(left, top, left + box_w, top + box_h)
        )
        frame = np.array(view)
        label.apply(frame)
        yield frame


def _color(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32) * 255.0


def _scrolling_gradient(width: int, height: int, rng: random.Random) -> np.ndarray:
    """A two-colour gradient, periodic in x with period ``width`` and twice as wide as a frame,
    so that sliding a window across it scrolls seamlessly."""
    hue = rng.random()
    first, second = _color(hue, 0.65, 0.85), _color(hue + 0.3, 0.75, 0.55)
    x = np.arange(2 * width, dtype=np.float32)
    mix = (0.5 - 0.5 * np.cos(math.tau * x / width))[None, :, None]
    shade = np.linspace(1.0, 0.6, height, dtype=np.float32)[:, None, None]
    return ((first * (1 - mix) + second * mix) * shade).astype(np.uint8)


def _disc(radius: int, color: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend factors for a soft-edged disc: what to keep of the frame and what colour to add."""
    yy, xx = np.mgrid[0 : 2 * radius, 0 : 2 * radius].astype(np.float32) + 0.5
    distance = np.hypot(xx - radius, yy - radius)
    alpha = np.clip(radius - distance, 0.0, 1.0)[:, :, None] * 0.9
    return 1.0 - alpha, color * alpha


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font has no CJK glyphs: Chinese shows as boxes, which is fine for a simulator.
    return ImageFont.load_default(size=size)


def _label_overlay(label: str, width: int, height: int) -> _Overlay:
    font = _font(max(10, height // 40))
    pad = max(3, height // 120)
    text_w, text_h = _text_size(label, font)
    patch = Image.new("RGBA", (min(width, text_w + 2 * pad), min(height, text_h + 2 * pad)), (0, 0, 0, 110))
    ImageDraw.Draw(patch).text((pad, pad), label, font=font, fill=(255, 255, 255, 220))
    return _Overlay(patch, 0, 0)


def _prompt_overlay(prompt: str, width: int, height: int) -> _Overlay:
    font = _font(max(12, min(width, height) // 18))
    margin = max(4, width // 24)
    pad = max(4, int(font.size) // 2) if isinstance(font, ImageFont.FreeTypeFont) else 6
    lines = wrap_text(prompt, font, width - 2 * (margin + pad)) or [" "]
    line_h = _text_size("Ag", font)[1] + pad // 2
    box_w = min(width - 2 * margin, max(_text_size(line, font)[0] for line in lines) + 2 * pad)
    box_h = min(height, line_h * len(lines) + 2 * pad)
    patch = Image.new("RGBA", (box_w, box_h), (0, 0, 0, 140))
    draw = ImageDraw.Draw(patch)
    for number, line in enumerate(lines):
        draw.text((pad, pad + number * line_h), line, font=font, fill=(255, 255, 255, 255))
    top = max(0, min(height - box_h, int(height * 0.62)))
    return _Overlay(patch, (width - box_w) // 2, top)


def _text_size(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return max(1, math.ceil(right - min(0, left))), max(1, math.ceil(bottom - min(0, top)))


def wrap_text(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: int) -> list[str]:
    """Break ``text`` into lines no wider than ``max_width`` pixels, at most six of them.

    Words wrap at spaces; a run without spaces that is too wide (Chinese, a URL) breaks between
    characters. Text that does not fit ends with an ellipsis.
    """
    pieces: list[tuple[str, bool]] = []
    for word in text.split():
        if font.getlength(word) <= max_width:
            pieces.append((word, True))
        else:
            pieces.extend((char, index == 0) for index, char in enumerate(word))
    lines: list[str] = []
    line = ""
    for piece, spaced in pieces:
        candidate = f"{line} {piece}" if line and spaced else line + piece
        if line and font.getlength(candidate) > max_width:
            lines.append(line)
            line = piece
        else:
            line = candidate
    if line:
        lines.append(line)
    if len(lines) > _MAX_TEXT_LINES:
        last = lines[_MAX_TEXT_LINES - 1]
        while last and font.getlength(last + _ELLIPSIS) > max_width:
            last = last[:-1]
        lines = lines[: _MAX_TEXT_LINES - 1] + [last + _ELLIPSIS]
    return lines
