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
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from bot.errors import BackendError
from bot.models import ClipInfo

FFMPEG_TIMEOUT_S = 300
"""Longest one ffmpeg run may take; a stuck encode must not hold a runner thread forever."""

_DAMAGED = "The video file is damaged or not a video"
_H264_OUTPUT = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-movflags", "+faststart"]
_AAC_OUTPUT = ["-c:a", "aac"]
_AUDIO_RATE = 48_000
"""Sample rate of joined sound (Hz): what Wan's own tracks use."""

_SIZE_MARGIN = 0.92
"""Share of the byte budget given to the encoder: x264's rate control overshoots a little."""
_MP4_OVERHEAD_BYTES = 4096
_MP4_BYTES_PER_FRAME = 16
_MIN_BITS_PER_PIXEL = 0.06
"""Below this many bits per pixel per frame h264 smears; a smaller picture looks better."""
_MIN_VIDEO_BITRATE = 48_000
"""Below this bitrate (bits per second) no picture size gives a clip worth watching."""
_FIT_ATTEMPTS = 3
_FIT_AUDIO_BITRATES = (64_000, 32_000)
"""AAC bitrates (bits per second) a shrunk clip's sound may have, best first: modest, since the
picture needs the bytes more."""
_MAX_AUDIO_SHARE = 0.2
"""Sound may take at most this share of a shrunk clip's bitrate; past it, it is dropped."""
_AAC_PACKETS_PER_S = 48_000 / 1024


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


def _count_packets(stream: VideoStream, audio: AudioStream | None = None) -> tuple[int, float]:
    """Count the video packets (one per frame) by demuxing them; also where the sound ends.

    Demuxing reads every packet without decoding it, so a clip cut short in download shows as
    fewer packets than its header declares, at a few milliseconds instead of the hundreds a
    full decode of a 720p clip costs. Bytes that are no video fail to open at all. The sound
    track's packets come in the same pass; the end of the last one is its length when the
    header does not say.
    """
    count = 0
    audio_end = 0
    streams = (stream, audio) if audio is not None else (stream,)
    for packet in stream.container.demux(*streams):
        if not packet.size:
            continue
        if packet.stream is stream:
            count += 1
        elif packet.pts is not None:
            audio_end = max(audio_end, packet.pts + (packet.duration or 0))
    if count == 0 or count < stream.frames:
        raise BackendError(_DAMAGED)
    seconds = float(audio_end * audio.time_base) if audio is not None and audio.time_base else 0.0
    return count, seconds


def probe(path: Path) -> ClipInfo:
    """Inspect a clip: size, rate, duration, an exact frame count and whether it has sound,
    without a full decode."""
    return _inspect(path)[0]


def _inspect(path: Path) -> tuple[ClipInfo, float]:
    """``probe``, plus when the first video frame comes after the file's start (seconds): the
    offset that lines the sound up with the picture when joining."""
    with _video_stream(path) as stream:
        container = stream.container
        audio = container.streams.audio[0] if container.streams.audio else None
        frames, audio_end_s = _count_packets(stream, audio)
        rate = stream.average_rate or stream.guessed_rate
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = frames / float(rate) if rate else 0.0
        fps = float(rate) if rate else frames / duration if duration else 0.0
        audio_duration = 0.0
        if audio is not None:
            if audio.duration and audio.time_base:
                audio_duration = float(audio.duration * audio.time_base)
            else:
                audio_duration = audio_end_s
        video_start = 0.0
        if stream.start_time is not None and stream.time_base:
            video_start = float(stream.start_time * stream.time_base)
            if container.start_time is not None:
                video_start -= container.start_time / av.time_base
        info = ClipInfo(
            duration_s=duration,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=fps,
            frames=frames,
            codec=stream.codec_context.name,
            size_bytes=path.stat().st_size,
            has_audio=audio is not None,
            audio_duration_s=audio_duration,
        )
        return info, max(0.0, video_start)


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


def first_frame_png(path: Path) -> bytes:
    """The clip's first frame as PNG: where a stitched loop must end (``--loop``)."""
    with _video_stream(path) as stream:
        for frame in stream.container.decode(stream):
            buffer = BytesIO()
            frame.to_image().save(buffer, format="PNG")
            return buffer.getvalue()
    raise BackendError(_DAMAGED)


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
    each seam, so the result has ``sum(frames) - (len(paths) - 1)`` frames.

    Sound (hosted Wan 2.5/2.6 clips have it) is kept in step with the picture: each segment's
    track is cut to exactly the length of its picture in the result, so a dropped first frame
    drops its 1/fps of sound too, a short track is padded with silence, and every segment's
    sound starts where its picture starts. When any segment has sound, a segment without any
    contributes silence of its length; the result is AAC stereo at 48 kHz. When none has
    sound, the result has no sound track.
    """
    if not paths:
        raise ValueError("concat needs at least one segment")
    inspected: list[tuple[ClipInfo, float]] = []
    for number, segment in enumerate(paths, start=1):
        try:
            inspected.append(_inspect(segment))
        except BackendError as exc:
            raise BackendError(
                f"Joining the video segments failed: segment {number} of {len(paths)}: {exc}", retryable=exc.retryable
            ) from exc
    first = inspected[0][0]
    width, height = first.width - first.width % 2, first.height - first.height % 2
    rate = Fraction(first.fps).limit_denominator(1001)
    with_sound = any(info.has_audio for info, _ in inspected)
    inputs: list[str] = []
    chains: list[str] = []
    labels: list[str] = []
    for index, (segment, (info, video_start)) in enumerate(zip(paths, inspected, strict=True)):
        inputs += ["-i", str(segment)]
        drop = drop_first_frame_after_first and index > 0
        trim = "trim=start_frame=1," if drop else ""
        chains.append(
            f"[{index}:v:0]{trim}setpts=PTS-STARTPTS,fps={rate},"
            f"scale={width}:{height}:force_original_aspect_ratio=decrease,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2,setsar=1,format=yuv420p[v{index}]"
        )
        labels.append(f"[v{index}]")
        if with_sound:
            chains.append(_sound_chain(index, info, video_start, drop, rate))
            labels.append(f"[a{index}]")
    streams = "v=1:a=1[joined][sound]" if with_sound else "v=1:a=0[joined]"
    graph = ";".join([*chains, f"{''.join(labels)}concat=n={len(paths)}:{streams}"])
    sound = ["-map", "[sound]", *_AAC_OUTPUT, "-b:a", "128k"] if with_sound else ["-an"]
    _run_ffmpeg(
        [*inputs, "-filter_complex", graph, "-map", "[joined]", *_H264_OUTPUT, "-crf", "18", *sound, str(out)],
        what="Joining the video segments",
        out=out,
    )
    return out


def _sound_chain(index: int, info: ClipInfo, video_start: float, drop_first: bool, rate: Fraction) -> str:
    """The filter chain giving segment ``index``'s sound exactly the length of its picture.

    The picture chain turns ``frames`` (less the dropped one) at the segment's own rate into
    about ``kept / fps * rate`` frames at the output ``rate``; the sound is cut or padded to
    that many frames' time, starting where the first kept frame starts.
    """
    own_fps = info.fps or float(rate)
    kept = info.frames - (1 if drop_first else 0)
    frames_out = max(1, round(kept / own_fps * float(rate)))
    seconds = float(frames_out / rate)
    if not info.has_audio:
        return f"anullsrc=r={_AUDIO_RATE}:cl=stereo,atrim=end={seconds:.6f}[a{index}]"
    skip = 1 / own_fps if drop_first else 0.0
    return (
        f"[{index}:a:0]asetpts=PTS-{video_start:.6f}/TB,"
        f"aresample={_AUDIO_RATE}:async=1:first_pts=0,"
        f"atrim=start={skip:.6f},asetpts=PTS-STARTPTS,"
        f"aformat=sample_fmts=fltp:channel_layouts=stereo,apad,atrim=end={seconds:.6f}[a{index}]"
    )


def strip_audio(path: Path, out: Path) -> Path:
    """The clip without its sound track, for a job that asked for none (``--silent``) from a
    model that always makes sound (fal's and Replicate's Wan 2.5).

    The picture is copied, not re-encoded, so this is fast and loses nothing. Returns ``path``
    itself when it has no sound to remove.
    """
    if not probe(path).has_audio:
        return path
    _run_ffmpeg(
        ["-i", str(path), "-map", "0:v:0", "-c", "copy", "-an", "-sn", "-dn", "-movflags", "+faststart", str(out)],
        what="Removing the sound",
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
    """Re-encode a clip to fit an upload cap (Discord's 10 MiB), keeping duration, aspect, fps
    and sound.

    Returns ``path`` itself when it already fits. Otherwise the byte budget over the clip's
    duration gives a bitrate. A sound track keeps a modest AAC bitrate (64 kbit/s, else
    32 kbit/s) when that is at most a fifth of the budget and leaves the picture a watchable
    bitrate; only when the budget is too small for that is the sound dropped, so every byte goes
    to the picture. The picture shrinks only when its bitrate would be too thin for its size.
    x264 can overshoot a target, so a result that is still too big is re-encoded at a
    proportionally lower rate.
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
    total = (max_bytes * _SIZE_MARGIN - overhead_bytes) * 8 / seconds
    audio_bitrate = _fit_audio_bitrate(info, total)
    if audio_bitrate:
        total -= _MP4_BYTES_PER_FRAME * _AAC_PACKETS_PER_S * 8
    bitrate = total - audio_bitrate
    sound = ["-map", "0:a:0", *_AAC_OUTPUT, "-b:a", str(audio_bitrate)] if audio_bitrate else ["-an"]
    for _ in range(_FIT_ATTEMPTS):
        if bitrate < _MIN_VIDEO_BITRATE:
            break
        width, height = _picture_for(info, bitrate)
        kbps = int(bitrate / 1000)
        _run_ffmpeg(
            [
                "-i", str(path), "-map", "0:v:0", *sound, "-sn", "-dn",
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


def _fit_audio_bitrate(info: ClipInfo, total: float) -> int:
    """The AAC bitrate a shrunk clip's sound gets out of ``total`` bits per second; 0 drops it."""
    if not info.has_audio:
        return 0
    for audio in _FIT_AUDIO_BITRATES:
        if audio <= total * _MAX_AUDIO_SHARE and total - audio >= _MIN_VIDEO_BITRATE:
            return audio
    return 0


def encode_frames(
    frames: Iterable[np.ndarray | bytes],
    out: Path,
    *,
    width: int,
    height: int,
    fps: int,
    audio: Path | None = None,
) -> Path:
    """Encode raw RGB24 frames (``height x width x 3`` uint8 arrays, or their bytes) to an h264 mp4.

    The simulator backend makes its clips this way, so they are real, playable files that go
    through the same probing, stitching and shrinking as a model's output. Width and height must
    be even: yuv420p, the pixel format every player accepts, halves the chroma planes. When the
    frame iterator raises (the simulator's cancel does), the partial file is removed and the
    exception passes through. ``audio`` is a sound file (the simulator's tone, a WAV) muxed in
    as AAC; it should last as long as the frames do.
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
        output_params=["-preset", "veryfast", "-crf", "18", "-movflags", "+faststart"]
        + (["-b:a", "128k"] if audio is not None else []),
        audio_path=str(audio) if audio is not None else None,
        audio_codec="aac" if audio is not None else None,
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
