"""Video file helpers: inspect, check, join, shrink and encode clips.

Every function here blocks (it decodes and encodes in this process with PyAV), so async callers
run them in the media pool or a thread, never on the event loop.

All of it uses the FFmpeg libraries inside PyAV's wheel, which has libx264 and AAC: one FFmpeg in
the image, no ffmpeg binary. Joining and shrinking push the decoded frames through libavfilter
chains (the same filters the ffmpeg command line would use) and encode h264 (yuv420p) with AAC
sound into an mp4 with its index first (``+faststart``), so a player starts before the download
ends. Failures surface as ``BackendError`` with a message fit for the person who asked: FFmpeg's
error text at most, never a file path or filter graph.
"""

from __future__ import annotations

import itertools
import math
import queue
import re
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from fractions import Fraction
from io import BytesIO
from pathlib import Path
from typing import TypeVar

import av
import av.filter
import numpy as np
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream
from av.container.output import OutputContainer
from av.filter.context import FilterContext
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from bot.errors import BackendError
from bot.models import ClipInfo

_T = TypeVar("_T")

ENCODE_TIMEOUT_S = 300
"""Longest one join, shrink or encode may take; a stuck encode must not hold a worker forever."""

_DAMAGED = "The video file is damaged or not a video"
_X264_PRESET = "veryfast"
_AUDIO_RATE = 48_000
"""Sample rate of joined sound (Hz): what Wan's own tracks use."""
_JOINED_AUDIO_BITRATE = 128_000
_FASTSTART = {"movflags": "+faststart"}

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
    """``probe``, plus when the first video frame comes on the file's own clock (seconds): the
    timestamp PyAV gives decoded sound is on that clock too, so subtracting it lines the sound up
    with the picture when joining."""
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
        return info, video_start


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


@dataclass(frozen=True)
class _Picture:
    """How the h264 track is encoded: size, frame rate and x264's rate control (``crf`` for a
    quality, or ``b``/``maxrate``/``bufsize`` for a byte budget)."""

    width: int
    height: int
    rate: Fraction
    rate_control: dict[str, str]


@dataclass(frozen=True)
class _Sound:
    """How the AAC track is encoded; frames of another format are converted by PyAV's encoder."""

    rate: int
    layout: str
    bit_rate: int


@dataclass
class _Mp4Writer:
    """An mp4 being written frame by frame. Frames are stamped one after another on each track
    (video at ``1/rate``, sound at one tick a sample), so whatever a frame carried is ignored:
    callers hand frames over in playing order, each track without gaps."""

    container: OutputContainer
    what: str
    video: VideoStream
    audio: AudioStream | None
    deadline: float
    frames: int = 0
    samples: int = 0

    def add_video(self, frame: VideoFrame) -> None:
        """Encode one picture; frames not yet in yuv420p at the track's size are converted."""
        if time.monotonic() > self.deadline:
            raise BackendError(f"{self.what} took longer than {ENCODE_TIMEOUT_S} s", retryable=True)
        context = self.video.codec_context
        if (frame.format.name, frame.width, frame.height) != ("yuv420p", context.width, context.height):
            frame = frame.reformat(width=context.width, height=context.height, format="yuv420p")
        frame.pts, frame.time_base = self.frames, context.time_base
        self.frames += 1
        self.container.mux(self.video.encode(frame))

    def add_audio(self, frame: AudioFrame) -> None:
        """Encode a run of samples; every frame given to one writer must have the same rate,
        layout and sample format (PyAV's encoder converts them all alike)."""
        if self.audio is None:
            return
        frame.pts, frame.time_base = self.samples, Fraction(1, frame.sample_rate)
        self.samples += frame.samples
        self.container.mux(self.audio.encode(frame))

    def finish(self) -> None:
        """Flush the encoders' delayed packets; the container writes the index when it closes."""
        self.container.mux(self.video.encode(None))
        if self.audio is not None:
            self.container.mux(self.audio.encode(None))


@contextmanager
def _writing(out: Path, *, what: str, picture: _Picture, sound: _Sound | None) -> Iterator[_Mp4Writer]:
    """An h264 (and AAC when ``sound``) mp4 at ``out``, finished when the block ends.

    When the block fails, the partial file is removed; an FFmpeg error (a decode or encode
    failure) becomes ``BackendError("<what> failed: <FFmpeg's reason>")``, anything else passes
    through as itself.
    """
    try:
        with av.open(str(out), "w", format="mp4", options=_FASTSTART) as container:
            video = container.add_stream("libx264", rate=picture.rate)
            video.width, video.height, video.pix_fmt = picture.width, picture.height, "yuv420p"
            video.codec_context.time_base = 1 / picture.rate
            # frame threads, as many as x264 finds useful, as the ffmpeg command uses: PyAV's
            # default (slice threads) makes x264 cut every picture into slices, which costs bytes
            video.codec_context.thread_count, video.codec_context.thread_type = 0, "AUTO"
            video.codec_context.options = {"preset": _X264_PRESET, **picture.rate_control}
            audio: AudioStream | None = None
            if sound is not None:
                audio = container.add_stream("aac", rate=sound.rate, layout=sound.layout)
                audio.codec_context.bit_rate = sound.bit_rate
            writer = _Mp4Writer(container, what, video, audio, time.monotonic() + ENCODE_TIMEOUT_S)
            yield writer
            writer.finish()
    except av.error.FFmpegError as exc:
        out.unlink(missing_ok=True)
        raise BackendError(f"{what} failed: {exc.strerror or type(exc).__name__}") from exc
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def _chain(graph: av.filter.Graph, description: str, head: FilterContext | None, *, audio: bool) -> FilterContext:
    """Add a linear filter chain written as ffmpeg's ``-vf`` would take it (``name=args`` joined by
    commas; ``\\,`` is a comma inside args) after ``head`` (none for a source chain), ending in a
    sink to pull frames from."""
    for part in re.split(r"(?<!\\),", description):
        name, _, args = part.partition("=")
        node = graph.add(name, args.replace("\\,", ",") or None)
        if head is not None:
            head.link_to(node)
        head = node
    assert head is not None, "an empty filter chain"
    sink = graph.add("abuffersink" if audio else "buffersink")
    head.link_to(sink)
    return sink


def _ready(sink: FilterContext, *, to_end: bool = False) -> Iterator[VideoFrame | AudioFrame]:
    """Every frame ``sink`` has ready; with ``to_end``, until the chain ends (its input must have
    been told it ended)."""
    while True:
        try:
            yield sink.pull()
        except BlockingIOError:
            if to_end:
                raise
            return
        except av.error.EOFError:
            return


def _ahead(frames: Generator[_T, None, None], depth: int = 16) -> Generator[_T, None, None]:
    """``frames``, made in a thread up to ``depth`` ahead of the caller, so decoding and filtering
    overlap encoding as they do in the ffmpeg command (PyAV lets go of the GIL inside FFmpeg).
    An error making them is raised here; when the caller stops early, the thread stops too."""
    ready: queue.Queue[tuple[_T | None, BaseException | None]] = queue.Queue(depth)
    stop = threading.Event()
    end = (None, None)

    def offer(item: tuple[_T | None, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for frame in frames:
                if not offer((frame, None)):
                    return
            offer(end)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            offer((None, exc))
        finally:
            frames.close()

    maker = threading.Thread(target=make, name="media-decode", daemon=True)
    maker.start()
    try:
        while True:
            frame, error = ready.get()
            if error is not None:
                raise error
            if frame is None:
                return
            yield frame
    finally:
        stop.set()
        maker.join()


def source_frames(description: str, *, audio: bool = False) -> Iterator[VideoFrame | AudioFrame]:
    """The frames a libavfilter source chain makes, e.g. ``anullsrc=r=48000:cl=stereo,atrim=end=2``
    or ``testsrc2=s=320x240:r=16:d=1`` (ffmpeg's ``-f lavfi`` sources): silence for a joined
    segment that has none, and the tests' synthetic clips. ``audio`` says the chain ends in sound.
    """
    graph = av.filter.Graph()
    sink = _chain(graph, description, None, audio=audio)
    graph.configure()
    while True:
        try:
            yield sink.pull()
        except av.error.EOFError:
            return


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
    picture = _Picture(width, height, Fraction(first.fps).limit_denominator(1001), {"crf": "18"})
    with_sound = any(info.has_audio for info, _ in inspected)
    sound = _Sound(_AUDIO_RATE, "stereo", _JOINED_AUDIO_BITRATE) if with_sound else None
    fit = f"scale={width}:{height}:force_original_aspect_ratio=decrease,pad={width}:{height}:(ow-iw)/2:(oh-ih)/2"
    with _writing(out, what="Joining the video segments", picture=picture, sound=sound) as writer:
        for index, (segment, (info, video_start)) in enumerate(zip(paths, inspected, strict=True)):
            drop = drop_first_frame_after_first and index > 0
            _append(writer, segment, info, video_start, drop_first=drop, fit=fit, rate=picture.rate)
    return out


def _append(
    writer: _Mp4Writer, path: Path, info: ClipInfo, video_start: float, *, drop_first: bool, fit: str, rate: Fraction
) -> None:
    """Decode one clip into ``writer``: its picture conformed to the output by the ``fit`` scale
    chain at ``rate``, its sound (when the writer has a track) by ``_sound_chain``, or silence of
    the picture's length when the clip has none."""
    made = _conformed(
        path, info, video_start, drop_first=drop_first, fit=fit, rate=rate, with_sound=writer.audio is not None
    )
    with closing(_ahead(made)) as frames:
        for frame in frames:
            if isinstance(frame, VideoFrame):
                writer.add_video(frame)
            else:
                writer.add_audio(frame)


def _conformed(
    path: Path, info: ClipInfo, video_start: float, *, drop_first: bool, fit: str, rate: Fraction, with_sound: bool
) -> Generator[VideoFrame | AudioFrame, None, None]:
    """One clip's frames as the output wants them, picture and sound from one pass over the file,
    in the order they come in it, so the two tracks are written interleaved."""
    trim = "trim=start_frame=1," if drop_first else ""
    picture_chain = f"{trim}setpts=PTS-STARTPTS,fps={rate},{fit},setsar=1,format=yuv420p"
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        graph = av.filter.Graph()
        picture_in = graph.add_buffer(template=video)
        chains: dict[VideoStream | AudioStream, tuple[FilterContext, FilterContext]] = {
            video: (picture_in, _chain(graph, picture_chain, picture_in, audio=False))
        }
        audio = container.streams.audio[0] if with_sound and container.streams.audio else None
        if audio is not None:
            sound_in = graph.add_abuffer(template=audio)
            sound_chain = _sound_chain(info, video_start, drop_first, rate)
            chains[audio] = (sound_in, _chain(graph, sound_chain, sound_in, audio=True))
        graph.configure()
        for packet in container.demux(*chains):
            into, out_of = chains[packet.stream]
            for frame in packet.decode():
                into.push(frame)
            yield from _ready(out_of)
        for into, out_of in chains.values():
            into.push(None)
            yield from _ready(out_of, to_end=True)
    if with_sound and audio is None:
        seconds = _sound_seconds(info, drop_first, rate)
        silence = f"anullsrc=r={_AUDIO_RATE}:cl=stereo,atrim=end={seconds:.6f},aformat=sample_fmts=fltp"
        yield from source_frames(silence, audio=True)


def _sound_seconds(info: ClipInfo, drop_first: bool, rate: Fraction) -> float:
    """How long a segment's picture lasts in the result: ``frames`` (less the dropped one) at the
    segment's own rate become about ``kept / fps * rate`` frames at the output ``rate``."""
    own_fps = info.fps or float(rate)
    kept = info.frames - (1 if drop_first else 0)
    return float(max(1, round(kept / own_fps * float(rate))) / rate)


def _sound_chain(info: ClipInfo, video_start: float, drop_first: bool, rate: Fraction) -> str:
    """The filter chain giving a segment's sound exactly the length of its picture in the result
    (``_sound_seconds``), cut or padded, starting where the first kept frame starts."""
    skip = 1 / (info.fps or float(rate)) if drop_first else 0.0
    return (
        f"asetpts=PTS-{video_start:.6f}/TB,"
        f"aresample={_AUDIO_RATE}:async=1:first_pts=0,"
        f"atrim=start={skip:.6f},asetpts=PTS-STARTPTS,"
        f"aformat=sample_fmts=fltp:channel_layouts=stereo,apad,atrim=end={_sound_seconds(info, drop_first, rate):.6f}"
    )


def strip_audio(path: Path, out: Path) -> Path:
    """The clip without its sound track, for a job that asked for none (``--silent``) from a
    model that always makes sound (fal's and Replicate's Wan 2.5).

    The picture's packets are copied, not re-encoded, so this is fast and loses nothing. Returns
    ``path`` itself when it has no sound to remove.
    """
    if not probe(path).has_audio:
        return path
    try:
        with av.open(str(path)) as source, av.open(str(out), "w", format="mp4", options=_FASTSTART) as copy:
            video = source.streams.video[0]
            copied = copy.add_stream_from_template(video)
            for packet in source.demux(video):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                packet.stream = copied
                copy.mux(packet)
    except av.error.FFmpegError as exc:
        out.unlink(missing_ok=True)
        raise BackendError(f"Removing the sound failed: {exc.strerror or type(exc).__name__}") from exc
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
    info, video_start = _inspect(path)
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
    sound = _Sound(_AUDIO_RATE, "stereo", audio_bitrate) if audio_bitrate else None
    rate = Fraction(info.fps).limit_denominator(1001)
    for _ in range(_FIT_ATTEMPTS):
        if bitrate < _MIN_VIDEO_BITRATE:
            break
        width, height = _picture_for(info, bitrate)
        kbps = int(bitrate / 1000)
        budget = {"b": f"{kbps}k", "maxrate": f"{kbps * 3 // 2}k", "bufsize": f"{kbps * 2}k"}
        picture = _Picture(width, height, rate, budget)
        with _writing(out, what="Shrinking the video", picture=picture, sound=sound) as writer:
            _append(writer, path, info, video_start, drop_first=False, fit=f"scale={width}:{height}", rate=rate)
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
    as AAC at its own rate and channels; it should last as long as the frames do.
    """
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("encode_frames needs at least one frame")
    with av.open(str(audio)) if audio is not None else nullcontext() as sound_file:
        sound: _Sound | None = None
        if sound_file is not None:
            track = sound_file.streams.audio[0]
            # a WAV's layout is often just "1 channels", which the AAC encoder refuses
            sound = _Sound(track.rate, "mono" if track.channels == 1 else "stereo", 128_000)
        picture = _Picture(width, height, Fraction(fps), {"crf": "18"})
        with _writing(out, what="Encoding the video frames", picture=picture, sound=sound) as writer:
            samples = sound_file.decode(audio=0) if sound_file is not None else iter(())
            for index, frame in enumerate(itertools.chain([first], iterator)):
                writer.add_video(_rgb24_frame(frame, width, height, index))
                _write_sound_until(writer, samples, (index + 1) / fps)
            _write_sound_until(writer, samples, math.inf)
    return out


def _write_sound_until(writer: _Mp4Writer, samples: Iterator[AudioFrame], seconds: float) -> None:
    """Mux the sound up to ``seconds`` into the clip, so both tracks are written interleaved."""
    while writer.audio is not None and writer.samples < seconds * writer.audio.codec_context.sample_rate:
        frame = next(samples, None)
        if frame is None:
            return
        writer.add_audio(frame)


def _rgb24_frame(frame: np.ndarray | bytes, width: int, height: int, index: int) -> VideoFrame:
    """Check one frame's type and size, so a wrong shape fails loudly instead of as skewed video."""
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8:
            raise ValueError(f"frame {index} is {frame.dtype}; RGB24 frames are uint8")
        data = frame.tobytes()
    else:
        data = bytes(frame)
    expected = width * height * 3
    if len(data) != expected:
        raise ValueError(f"frame {index} has {len(data)} bytes; {width}x{height} RGB24 needs {expected}")
    return VideoFrame.from_ndarray(np.frombuffer(data, np.uint8).reshape(height, width, 3), format="rgb24")
