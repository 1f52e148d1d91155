"""Test clips made by ffmpeg's own synthetic sources (lavfi), for tests and benchmarks."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bot.media import ffmpeg_exe


def lavfi_clip(path: Path, source: str, *options: str, preset: str = "ultrafast") -> Path:
    """Encode ``source`` (e.g. ``testsrc2=s=320x240:r=16:d=1``) to an h264 mp4 at ``path``;
    ``options`` are extra encoder arguments such as ``-crf 20`` or ``-g 1``."""
    subprocess.run(
        [ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", source,
         "-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p", *options, str(path)],
        check=True,
    )
    return path
