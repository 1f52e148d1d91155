"""Video file helpers: inspect, check, join, shrink and encode clips.

Every function here blocks (it decodes with PyAV or waits on an ffmpeg subprocess), so async
callers run them in a thread (``asyncio.to_thread``), never on the event loop.

The ffmpeg binary is the one imageio-ffmpeg ships, so no system ffmpeg is needed. That build has
no ffprobe, which is why inspection decodes with PyAV instead. Failures surface as
``BackendError`` with a message fit for the person who asked: ffmpeg's last error line at most,
never its command line.
"""

from __future__ import annotations

import itertools
import math
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from io import BytesIO
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from bot.errors import BackendError
from bot.models import ClipInfo

FFMPEG_TIMEOUT_S = 300
"""Longest one ffmpeg run may take; a stuck encode must not hold a runner thread forever."""

_DAMAGED = "The video file is damaged or not a video"
_H264_OUTPUT = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]

_SIZE_MARGIN = 0.92
"""Share of the byte budget given to the encoder: x264's rate control overshoots a little."""
_MP4_OVERHEAD_BYTES = 4096
_MP4_BYTES_PER_FRAME = 16
_MIN_BITS_PER_PIXEL = 0.06
"""Below this many bits per pixel per frame h264 smears; a smaller picture looks better."""
_MIN_VIDEO_BITRATE = 48_000
"""Below this bitrate (bits per second) no picture size gives a clip worth watching."""
_FIT_ATTEMPTS = 3


def ffmpeg_exe() -> str:
    """Path of the bundled ffmpeg binary."""
    return imageio_ffmpeg.get_ffmpeg_exe()


@contextmanager
def _video_stream(path: Path) -> Iterator[VideoStream]:
    """Open the first video stream; any demux or decode failure inside becomes one clear error."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BackendError(_DAMAGED)
            yield container.streams.video[0]
    except FileNotFoundError as exc:
        raise BackendError("The video file is missing") from exc
    except av.error.FFmpegError as exc:
        raise BackendError(_DAMAGED) from exc


def _decode_all(stream: VideoStream) -> tuple[int, VideoFrame]:
    """Decode every frame: the only reliable frame count, and proof the file plays to the end.

    A download cut short keeps a complete header (``+faststart`` puts it first) but holds
    fewer frames than it declares, and the decoder does not always complain; the count does.
    """
    stream.thread_type = "AUTO"  # worth its thread start-up only when every frame is decoded
    count = 0
    last: VideoFrame | None = None
    for frame in stream.container.decode(stream):
        count += 1
        last = frame
    if last is None or count < stream.frames:
        raise BackendError(_DAMAGED)
    return count, last


def _count_packets(stream: VideoStream) -> int:
    """Count the video packets (one per frame) by demuxing them.

    Demuxing reads every packet without decoding it, so a clip cut short in download shows as
    fewer packets than its header declares, at a few milliseconds instead of the hundreds a
    full decode of a 720p clip costs. Bytes that are no video fail to open at all.
    """
    count = sum(1 for packet in stream.container.demux(stream) if packet.size)
    if count == 0 or count < stream.frames:
        raise BackendError(_DAMAGED)
    return count


def probe(path: Path) -> ClipInfo:
    """Inspect a clip: size, rate, duration and an exact frame count, without a full decode."""
    with _video_stream(path) as stream:
        frames = _count_packets(stream)
        rate = stream.average_rate or stream.guessed_rate
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif stream.container.duration:
            duration = stream.container.duration / av.time_base
        else:
            duration = frames / float(rate) if rate else 0.0
        fps = float(rate) if rate else frames / duration if duration else 0.0
        return ClipInfo(
            duration_s=duration,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=fps,
            frames=frames,
            codec=stream.codec_context.name,
            size_bytes=path.stat().st_size,
        )


def check_clip(
    info: ClipInfo, *, duration_s: float, width: int | None = None, height: int | None = None, fps: int | None = None
) -> None:
    """Refuse a clip that is not what was asked for, naming every mismatch at once.

    Duration may drift by half a second or 10 % (models round to whole latent frames); size must
    be exact and fps within half a frame per second, since stitching and captions rely on them.
    A hosted model decides its own size (image-to-video follows the image) and frame rate, so
    for those the caller passes None and records what arrived instead.
    """
    if info.frames <= 0:
        raise BackendError("The generated video has no frames")
    problems: list[str] = []
    if width is not None and height is not None and (info.width, info.height) != (width, height):
        problems.append(f"it is {info.width}x{info.height} instead of {width}x{height}")
    if abs(info.duration_s - duration_s) > max(0.5, 0.1 * duration_s):
        problems.append(f"it lasts {info.duration_s:.1f} s instead of {duration_s:g} s")
    if fps is not None and abs(info.fps - fps) > 0.5:
        problems.append(f"it plays at {info.fps:.2f} fps instead of {fps}")
    if problems:
        raise BackendError("The generated video does not match the request: " + "; ".join(problems))


def last_frame_png(path: Path) -> bytes:
    """The clip's last frame as PNG, the start image of the next segment when extending a clip."""
    with _video_stream(path) as stream:
        _, last = _decode_all(stream)
        buffer = BytesIO()
        last.to_image().save(buffer, format="PNG")
        return buffer.getvalue()


def _run_ffmpeg(args: list[str], *, what: str, out: Path) -> None:
    """Run ffmpeg; on failure remove the partial output and report ffmpeg's last error line."""
    command = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    try:
        result = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        out.unlink(missing_ok=True)
        raise BackendError(f"{what} took longer than {FFMPEG_TIMEOUT_S} s", retryable=True) from None
    if result.returncode != 0:
        out.unlink(missing_ok=True)
        lines = [line.strip() for line in result.stderr.decode(errors="replace").splitlines() if line.strip()]
        detail = lines[-1] if lines else f"ffmpeg exited with status {result.returncode}"
        raise BackendError(f"{what} failed: {detail}")


def concat(paths: Sequence[Path], out: Path, *, drop_first_frame_after_first: bool = True) -> Path:
    """Join consecutive segments into one h264 mp4 at the first segment's size and frame rate.

    Everything is re-encoded, so segments that differ in size, rate or codec still join (a
    different size is letterboxed, not stretched). A segment made from its predecessor's last
    frame starts with a copy of that frame; dropping it (the default) avoids a visible stall at
    each seam, so the result has ``sum(frames) - (len(paths) - 1)`` frames. The result is
    silent: the generators we drive make silent clips.
    """
    if not paths:
        raise ValueError("concat needs at least one segment")
    first = probe(paths[0])
    width, height = first.width - first.width % 2, first.height - first.height % 2
    rate = Fraction(first.fps).limit_denominator(1001)
    inputs: list[str] = []
    chains: list[str] = []
    for index, segment in enumerate(paths):
        inputs += ["-i", str(segment)]
        trim = "trim=start_frame=1," if drop_first_frame_after_first and index > 0 else ""
        chains.append(
            f"[{index}:v:0]{trim}setpts=PTS-STARTPTS,fps={rate},"
            f"scale={width}:{height}:force_original_aspect_ratio=decrease,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,setsar=1,format=yuv420p[v{index}]"
        )
    labels = "".join(f"[v{index}]" for index in range(len(paths)))
    graph = ";".join([*chains, f"{labels}concat=n={len(paths)}:v=1:a=0[joined]"])
    _run_ffmpeg(
        [*inputs, "-filter_complex", graph, "-map", "[joined]", *_H264_OUTPUT, "-crf", "18", "-an", str(out)],
        what="Joining the video segments",
        out=out,
    )
    return out


def _format_size(n_bytes: int) -> str:
    if n_bytes >= 1024 * 1024:
        return f"{n_bytes / (1024 * 1024):.1f}".removesuffix(".0") + " MiB"
    return f"{n_bytes / 1024:.0f} KiB"


def _even(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def _picture_for(info: ClipInfo, bitrate: float) -> tuple[int, int]:
    """Keep the picture size unless the bitrate spread over it would be too thin, then shrink it."""
    bits_per_pixel = bitrate / (info.width * info.height * max(info.fps, 1.0))
    scale = min(1.0, math.sqrt(bits_per_pixel / _MIN_BITS_PER_PIXEL))
    return _even(info.width * scale), _even(info.height * scale)


def fit_to_size(path: Path, out: Path, max_bytes: int) -> Path:
    """Re-encode a clip to fit an upload cap (Discord's 10 MiB), keeping duration, aspect and fps.

    Returns ``path`` itself when it already fits. Otherwise the video bitrate is what the byte
    budget allows over the clip's duration, audio is dropped to spend every byte on picture, and
    the picture shrinks only when that bitrate would be too thin for its size. x264 can overshoot
    a target, so a result that is still too big is re-encoded at a proportionally lower rate.
    """
    if path.stat().st_size <= max_bytes:
        return path
    info = probe(path)
    seconds = max(info.duration_s, 0.1)
    too_big = BackendError(
        f"The {info.duration_s:.1f}-second video cannot fit under {_format_size(max_bytes)} "
        "at a watchable quality; ask for a shorter clip"
    )
    overhead_bytes = _MP4_OVERHEAD_BYTES + _MP4_BYTES_PER_FRAME * info.frames
    bitrate = (max_bytes * _SIZE_MARGIN - overhead_bytes) * 8 / seconds
    for _ in range(_FIT_ATTEMPTS):
        if bitrate < _MIN_VIDEO_BITRATE:
            break
        width, height = _picture_for(info, bitrate)
        kbps = int(bitrate / 1000)
        _run_ffmpeg(
            [
                "-i", str(path), "-map", "0:v:0", "-an", "-sn", "-dn",
                "-vf", f"scale={width}:{height},setsar=1", *_H264_OUTPUT,
                "-b:v", f"{kbps}k", "-maxrate", f"{kbps * 3 // 2}k", "-bufsize", f"{kbps * 2}k",
                str(out),
            ],
            what="Shrinking the video",
            out=out,
        )
        size = out.stat().st_size
        if size <= max_bytes:
            return out
        bitrate *= max_bytes / size * _SIZE_MARGIN
    out.unlink(missing_ok=True)
    raise too_big


def encode_frames(
    frames: Iterable[np.ndarray | bytes], out: Path, *, width: int, height: int, fps: int
) -> Path:
    """Encode raw RGB24 frames (``height x width x 3`` uint8 arrays, or their bytes) to an h264 mp4.

    The simulator backend makes its clips this way, so they are real, playable files that go
    through the same probing, stitching and shrinking as a model's output. Width and height must
    be even: yuv420p, the pixel format every player accepts, halves the chroma planes. When the
    frame iterator raises (the simulator's cancel does), the partial file is removed and the
    exception passes through.
    """
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("encode_frames needs at least one frame")
    writer = imageio_ffmpeg.write_frames(
        str(out),
        (width, height),
        fps=fps,
        codec="libx264",
        quality=None,
        macro_block_size=1,
        ffmpeg_log_level="error",
        ffmpeg_timeout=FFMPEG_TIMEOUT_S,
        output_params=["-preset", "veryfast", "-crf", "18", "-movflags", "+faststart"],
    )
    writer.send(None)
    try:
        for index, frame in enumerate(itertools.chain([first], iterator)):
            writer.send(_rgb24_bytes(frame, width, height, index))
    except BaseException as exc:
        writer.close()
        out.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BackendError("Encoding the video frames failed: ffmpeg stopped early") from exc
        raise
    writer.close()
    if not out.is_file() or out.stat().st_size == 0:
        raise BackendError("Encoding the video frames failed: ffmpeg wrote nothing")
    return out


def _rgb24_bytes(frame: np.ndarray | bytes, width: int, height: int, index: int) -> bytes:
    """Check one frame's type and size, so a wrong shape fails loudly instead of as skewed video."""
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8:
            raise ValueError(f"frame {index} is {frame.dtype}; RGB24 frames are uint8")
        frame = frame.tobytes()
    expected = width * height * 3
    if len(frame) != expected:
        raise ValueError(f"frame {index} has {len(frame)} bytes; {width}x{height} RGB24 needs {expected}")
    return bytes(frame)
