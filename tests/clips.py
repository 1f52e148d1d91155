"""Test clips made from FFmpeg's own synthetic sources (the ``-f lavfi`` ones), encoded with PyAV,
for tests and benchmarks."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
from av.audio.frame import AudioFrame
from av.video.frame import VideoFrame

from bot.media import source_frames


def lavfi_clip(
    path: Path,
    source: str,
    *,
    preset: str = "ultrafast",
    options: dict[str, str] | None = None,
    audio: str | None = None,
    audio_delay_s: float = 0.0,
) -> Path:
    """Encode ``source`` (e.g. ``testsrc2=s=320x240:r=16:d=1``) to an h264 mp4 at ``path``, index
    first; ``options`` are extra x264 settings such as ``{"crf": "20"}`` or ``{"g": "1"}``.
    ``audio`` adds a sound track from a second source (e.g. ``sine=f=440:d=1``), AAC, as
    providers whose models make sound return it, starting ``audio_delay_s`` after the picture;
    sound past the picture's end is left out."""
    pictures = source_frames(source)
    sounds = source_frames(audio, audio=True) if audio else iter(())
    picture, sound = next(pictures), next(sounds, None)
    assert isinstance(picture, VideoFrame), f"{source} makes no picture"
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        video = container.add_stream("libx264", rate=Fraction(1) / picture.time_base)
        video.width, video.height, video.pix_fmt = picture.width, picture.height, "yuv420p"
        video.codec_context.time_base = picture.time_base
        video.codec_context.options = {"preset": preset, **(options or {})}
        track = None
        if isinstance(sound, AudioFrame):
            track = container.add_stream("aac", rate=sound.sample_rate, layout=sound.layout.name)
            track.codec_context.bit_rate = 64_000
        delay = round(audio_delay_s * sound.sample_rate) if sound is not None else 0
        frame_s = float(picture.time_base)
        while picture is not None:
            while track is not None and sound is not None and sound.time + audio_delay_s < picture.time + frame_s:
                sound.pts += delay
                container.mux(track.encode(sound))
                sound = next(sounds, None)
            container.mux(video.encode(picture.reformat(format="yuv420p")))
            picture = next(pictures, None)
        container.mux(video.encode(None))
        if track is not None:
            container.mux(track.encode(None))
    return path


def crossfade_clip(
    path: Path, first: bytes, last: bytes, *, width: int, height: int, seconds: float, fps: int = 24,
    tone_hz: int | None = None,
) -> Path:
    """An h264 mp4 that opens on the image ``first`` and closes on the image ``last``: a linear
    crossfade between the two, each centre-cropped to ``width`` x ``height`` (even sides), over
    ``seconds`` at ``fps``; ``tone_hz`` adds a sine sound track as long as the clip. This is what
    the provider fakes return for first-and-last-frame requests, so a test can decode the
    delivered clip and find its end image in the last frame."""
    import io
    import math
    import struct
    import tempfile
    import wave

    import numpy as np
    from PIL import Image, ImageOps

    from bot.media import encode_frames

    def pixels(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            fitted = ImageOps.fit(image.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
        return np.asarray(fitted, dtype=np.float32)

    start, end = pixels(first), pixels(last)
    count = max(2, round(seconds * fps))
    frames = (
        (start + (end - start) * (i / (count - 1))).round().clip(0, 255).astype(np.uint8) for i in range(count)
    )
    if tone_hz is None:
        return encode_frames(frames, path, width=width, height=height, fps=fps)
    with tempfile.TemporaryDirectory() as folder:
        sound = Path(folder) / "tone.wav"
        rate = 16_000
        with wave.open(str(sound), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            samples = int(rate * count / fps)
            out.writeframes(b"".join(
                struct.pack("<h", int(8000 * math.sin(2 * math.pi * tone_hz * n / rate))) for n in range(samples)
            ))
        return encode_frames(frames, path, width=width, height=height, fps=fps, audio=sound)
