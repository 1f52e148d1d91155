"""Thumbnails: a clip's first frame as a small JPEG, made once and kept beside the media."""

from __future__ import annotations

from pathlib import Path

import av

THUMB_WIDTH = 320


def first_frame_jpeg(clip: Path, out: Path, width: int = THUMB_WIDTH) -> Path:
    """Write the first frame of ``clip`` to ``out`` (``width`` wide, aspect kept) unless already there.

    Blocking and CPU-bound: the admin page runs it in the core's media pool."""
    if out.is_file():
        return out
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream), None)
        if frame is None:
            raise ValueError(f"{clip.name} has no frame")
        image = frame.to_image()
    height = max(2, round(image.height * width / max(image.width, 1)))
    image = image.resize((width, height))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    image.save(partial, format="JPEG", quality=80)
    partial.replace(out)
    return out


def inside(path: str | None, root: Path) -> Path | None:
    """``path`` as a file under ``root``, or None: the admin page serves media from there only."""
    if not path:
        return None
    resolved = Path(path).resolve()
    if not resolved.is_file() or not resolved.is_relative_to(root.resolve()):
        return None
    return resolved
