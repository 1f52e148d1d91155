"""Test clips made by ffmpeg's own synthetic sources (lavfi), for tests and benchmarks."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bot.media import ffmpeg_exe


def lavfi_clip(
    path: Path, source: str, *options: str, preset: str = "ultrafast", audio: str | None = None
) -> Path:
    """Encode ``source`` (e.g. ``testsrc2=s=320x240:r=16:d=1``) to an h264 mp4 at ``path``;
    ``options`` are extra encoder arguments such as ``-crf 20`` or ``-g 1``. ``audio`` adds a
    sound track from a second lavfi source (e.g. ``sine=f=440:d=1``), AAC, as providers whose
    models make sound return it."""
    sound = ["-f", "lavfi", "-i", audio] if audio else []
    sound_codec = ["-c:a", "aac", "-b:a", "64k", "-shortest"] if audio else []
    subprocess.run(
        [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", source, *sound,
         "-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p", *sound_codec, *options, str(path)],
        check=True,
    )
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
