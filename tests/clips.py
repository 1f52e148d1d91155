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
