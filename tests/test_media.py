"""The media helpers on real, tiny clips: what the runner relies on to check, join and shrink."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from bot import media
from bot.errors import BackendError
from bot.models import ClipInfo
from tests.clips import lavfi_clip

W, H, FPS = 64, 48, 16
RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)


def solid_clip(
    path: Path, colors: list[tuple[int, int, int]], *, width: int = W, height: int = H, fps: int = FPS
) -> Path:
    frames = (np.full((height, width, 3), color, np.uint8) for color in colors)
    return media.encode_frames(frames, path, width=width, height=height, fps=fps)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(7)
    noisy = (rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(3 * FPS))
    return {
        "red_then_green": solid_clip(folder / "red_then_green.mp4", [RED] * (FPS - 1) + [GREEN]),
        "blue": solid_clip(folder / "blue.mp4", [BLUE] * FPS),
        "noisy": media.encode_frames(noisy, folder / "noisy.mp4", width=320, height=240, fps=FPS),
    }


def first_frame_color(path: Path) -> tuple[int, ...]:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_image().getpixel((W // 2, H // 2))


def assert_close(color: tuple[int, ...], expected: tuple[int, int, int]) -> None:
    assert all(abs(got - want) <= 12 for got, want in zip(color, expected)), (color, expected)


def test_probe_reports_what_was_encoded(clips: dict[str, Path]) -> None:
    info = media.probe(clips["red_then_green"])

    assert (info.width, info.height, info.frames, info.codec) == (W, H, FPS, "h264")
    assert info.fps == pytest.approx(FPS)
    assert info.duration_s == pytest.approx(1.0, abs=1 / FPS)
    assert info.size_bytes == clips["red_then_green"].stat().st_size


def test_check_clip_accepts_a_clip_that_matches_the_request(clips: dict[str, Path]) -> None:
    info = media.probe(clips["blue"])

    media.check_clip(info, duration_s=1, width=W, height=H, fps=FPS)
    media.check_clip(info, duration_s=1.4, width=W, height=H, fps=FPS)


def test_check_clip_names_every_mismatch(clips: dict[str, Path]) -> None:
    info = media.probe(clips["blue"])

    with pytest.raises(BackendError) as caught:
        media.check_clip(info, duration_s=5, width=1280, height=720, fps=24)

    message = str(caught.value)
    assert "64x48 instead of 1280x720" in message
    assert "1.0 s instead of 5 s" in message
    assert "16.00 fps instead of 24" in message


def test_check_clip_refuses_a_clip_without_frames() -> None:
    empty = ClipInfo(duration_s=1.0, width=W, height=H, fps=FPS, frames=0, codec="h264", size_bytes=100)

    with pytest.raises(BackendError, match="no frames"):
        media.check_clip(empty, duration_s=1, width=W, height=H, fps=FPS)


def test_last_frame_png_is_the_last_frame_drawn(clips: dict[str, Path]) -> None:
    image = Image.open(io.BytesIO(media.last_frame_png(clips["red_then_green"])))

    assert image.format == "PNG"
    assert image.size == (W, H)
    assert_close(image.convert("RGB").getpixel((W // 2, H // 2)), GREEN)


def test_concat_drops_the_repeated_first_frame_of_each_continuation(clips: dict[str, Path], tmp_path: Path) -> None:
    joined = media.concat([clips["red_then_green"], clips["blue"]], tmp_path / "joined.mp4")

    info = media.probe(joined)
    assert info.frames == 2 * FPS - 1
    assert info.duration_s == pytest.approx(2.0, abs=2 / FPS)
    assert (info.width, info.height, info.fps) == (W, H, FPS)
    assert_close(first_frame_color(joined), RED)
    assert_close(Image.open(io.BytesIO(media.last_frame_png(joined))).getpixel((W // 2, H // 2)), BLUE)


def test_concat_can_keep_every_frame(clips: dict[str, Path], tmp_path: Path) -> None:
    joined = media.concat(
        [clips["red_then_green"], clips["blue"]], tmp_path / "joined.mp4", drop_first_frame_after_first=False
    )

    assert media.probe(joined).frames == 2 * FPS


def test_concat_conforms_a_segment_of_another_size_and_rate(clips: dict[str, Path], tmp_path: Path) -> None:
    other = solid_clip(tmp_path / "other.mp4", [GREEN] * 24, width=80, height=60, fps=24)

    info = media.probe(media.concat([clips["blue"], other], tmp_path / "joined.mp4"))

    assert (info.width, info.height, info.fps) == (W, H, FPS)
    assert info.duration_s == pytest.approx(2.0, abs=2 / FPS)


def test_concat_failure_names_the_segment_not_the_file(clips: dict[str, Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01 not a video " * 200)
    out = tmp_path / "joined.mp4"

    with pytest.raises(BackendError) as caught:
        media.concat([clips["blue"], garbage], out)

    message = str(caught.value)
    assert message.startswith("Joining the video segments failed: ")
    assert str(tmp_path) not in message
    assert not out.exists()


def test_fit_to_size_shrinks_a_large_clip_keeping_duration_and_aspect(clips: dict[str, Path], tmp_path: Path) -> None:
    cap = 60_000
    assert clips["noisy"].stat().st_size > 10 * cap

    fitted = media.fit_to_size(clips["noisy"], tmp_path / "fitted.mp4", cap)

    info = media.probe(fitted)
    assert fitted == tmp_path / "fitted.mp4"
    assert info.size_bytes <= cap
    assert info.duration_s == pytest.approx(3.0, abs=1 / FPS)
    assert info.fps == pytest.approx(FPS)
    assert info.width / info.height == pytest.approx(320 / 240, rel=0.02)


def test_fit_to_size_leaves_a_clip_that_already_fits(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "fitted.mp4"

    assert media.fit_to_size(clips["blue"], out, 10 * 1024 * 1024) == clips["blue"]
    assert not out.exists()


def test_fit_to_size_refuses_a_cap_no_bitrate_can_meet(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "fitted.mp4"

    with pytest.raises(BackendError, match="cannot fit under 5 KiB"):
        media.fit_to_size(clips["noisy"], out, 5 * 1024)
    assert not out.exists()


def audio_only(path: Path) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(bytes(2 * 1600))
    return path


@pytest.mark.parametrize("kind", ["random bytes", "text", "truncated clip", "audio only"])
def test_probe_refuses_files_that_are_not_whole_videos(kind: str, clips: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_bytes(b"<html>502 Bad Gateway</html>")
    elif kind == "truncated clip":
        whole = clips["noisy"].read_bytes()
        path.write_bytes(whole[: len(whole) * 6 // 10])
    else:
        path = audio_only(tmp_path / "sound.wav")

    with pytest.raises(BackendError, match="^The video file is damaged or not a video$") as caught:
        media.probe(path)
    assert caught.value.retryable is False
    with pytest.raises(BackendError, match="damaged"):
        media.last_frame_png(path)


def test_probe_says_when_the_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="missing"):
        media.probe(tmp_path / "nowhere.mp4")


@pytest.mark.parametrize(
    ("frames", "width", "height", "problem"),
    [
        ([np.zeros((H, W, 3), np.uint8)], W + 1, H, "must be even"),
        ([np.zeros((H, W - 2, 3), np.uint8)], W, H, "RGB24 needs"),
        ([np.zeros((H, W, 3), np.float32)], W, H, "uint8"),
        ([], W, H, "at least one frame"),
    ],
)
def test_encode_frames_refuses_frames_that_do_not_match(
    frames: list[np.ndarray], width: int, height: int, problem: str, tmp_path: Path
) -> None:
    out = tmp_path / "clip.mp4"

    with pytest.raises(ValueError, match=problem):
        media.encode_frames(frames, out, width=width, height=height, fps=FPS)
    assert not out.exists()


def test_encode_frames_accepts_raw_bytes(tmp_path: Path) -> None:
    frames = [bytes(GREEN) * (W * H)] * 4

    info = media.probe(media.encode_frames(frames, tmp_path / "clip.mp4", width=W, height=H, fps=FPS))

    assert (info.frames, info.width, info.height) == (4, W, H)


def test_encode_frames_removes_the_partial_file_when_the_frames_stop_with_an_error(tmp_path: Path) -> None:
    class Canceled(Exception):
        pass

    def frames_then_cancel() -> Iterator[np.ndarray]:
        yield np.zeros((H, W, 3), np.uint8)
        raise Canceled

    out = tmp_path / "clip.mp4"

    with pytest.raises(Canceled):
        media.encode_frames(frames_then_cancel(), out, width=W, height=H, fps=FPS)
    assert not out.exists()


# -- sound: hosted Wan 2.5/2.6 clips carry it, and it must reach the person in step ------------

SR = 8000
"""Sample rate the sound tests decode at: plenty for tones up to 1.5 kHz, and small arrays."""
SW, SH = 160, 96


def tone_clip(path: Path, sound: str | None, *, seconds: float = 1.0, fps: int = FPS, noisy: bool = False) -> Path:
    """A small clip with ``sound`` (an ``aevalsrc``/``sine`` lavfi source) as its AAC track."""
    picture = f"nullsrc=s={SW}x{SH}:r={fps}:d={seconds},geq=random(1)*255:128:128" if noisy else (
        f"testsrc2=s={SW}x{SH}:r={fps}:d={seconds}"
    )
    return lavfi_clip(path, picture, audio=sound)


def decoded_sound(path: Path) -> np.ndarray:
    """The clip's sound as a player hears it (the decoder applies the AAC priming trim), mono, SR Hz."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SR)
    with av.open(str(path)) as container:
        frames = [*container.decode(audio=0), None]
        return np.concatenate([out.to_ndarray()[0] for frame in frames for out in resampler.resample(frame)])


def loudness_at(samples: np.ndarray, start_s: float, end_s: float, frequency_hz: float) -> float:
    """How strongly ``frequency_hz`` sounds between two instants (amplitude of its DFT bin)."""
    window = samples[int(start_s * SR) : int(end_s * SR)]
    t = np.arange(len(window)) / SR
    return float(np.abs(np.sum(window * np.exp(-2j * np.pi * frequency_hz * t))) * 2 / max(len(window), 1))


def dominant_hz(samples: np.ndarray, start_s: float, end_s: float, candidates: tuple[float, ...]) -> float:
    return max(candidates, key=lambda f: loudness_at(samples, start_s, end_s, f))


@pytest.fixture(scope="module")
def sounding(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sound")
    frame = 1 / FPS
    return {
        "a440": tone_clip(folder / "a440.mp4", "sine=f=440:d=1"),
        # the continuation's first frame repeats its predecessor's last: its sound (1000 Hz) must go
        # with it, and 1500 Hz must start exactly where the continuation's own picture starts
        "b1500": tone_clip(
            folder / "b1500.mp4", f"aevalsrc=0.5*sin(2*PI*if(lt(t\\,{frame})\\,1000\\,1500)*t):s=44100:d=1"
        ),
        "silent": tone_clip(folder / "silent.mp4", None),
    }


@pytest.mark.timeout(30)
def test_probe_reports_the_sound_track(sounding: dict[str, Path]) -> None:
    heard, mute = media.probe(sounding["a440"]), media.probe(sounding["silent"])

    assert heard.has_audio and heard.audio_duration_s == pytest.approx(1.0, abs=0.03)
    assert (heard.frames, heard.width, heard.height) == (FPS, SW, SH)
    assert not mute.has_audio and mute.audio_duration_s == 0.0
    media.check_clip(heard, duration_s=1, width=SW, height=SH, fps=FPS)


@pytest.mark.timeout(30)
def test_concat_keeps_each_segments_sound_in_step_with_its_picture(sounding: dict[str, Path], tmp_path: Path) -> None:
    joined = media.concat([sounding["a440"], sounding["b1500"]], tmp_path / "joined.mp4")

    info = media.probe(joined)
    assert info.frames == 2 * FPS - 1 and info.has_audio
    assert abs(info.audio_duration_s - info.duration_s) <= 1 / FPS
    sound = decoded_sound(joined)
    assert abs(len(sound) / SR - info.frames / FPS) <= 1 / FPS
    seam = FPS / FPS  # the first segment's 16 frames end at 1.0 s; the second's own picture starts there
    tones = (440.0, 1000.0, 1500.0)
    assert dominant_hz(sound, 0.05, seam - 0.01, tones) == 440
    assert dominant_hz(sound, seam - 0.03, seam - 0.005, tones) == 440
    assert dominant_hz(sound, seam + 0.005, seam + 0.03, tones) == 1500
    assert dominant_hz(sound, seam + 0.01, len(sound) / SR - 0.01, tones) == 1500
    # the dropped frame's sound (1000 Hz) is gone, not shifted into the seam
    assert loudness_at(sound, seam - 0.06, seam + 0.06, 1000) < 0.1 * loudness_at(sound, seam - 0.06, seam + 0.06, 1500)


@pytest.mark.timeout(30)
def test_concat_keeping_every_frame_keeps_every_sample(sounding: dict[str, Path], tmp_path: Path) -> None:
    joined = media.concat(
        [sounding["a440"], sounding["b1500"]], tmp_path / "joined.mp4", drop_first_frame_after_first=False
    )

    sound = decoded_sound(joined)
    assert media.probe(joined).frames == 2 * FPS
    assert abs(len(sound) / SR - 2.0) <= 1 / FPS
    assert dominant_hz(sound, 1.005, 1.0 + 1 / FPS - 0.005, (440.0, 1000.0, 1500.0)) == 1000


@pytest.mark.timeout(30)
def test_concat_gives_a_segment_without_sound_silence_of_its_length(sounding: dict[str, Path], tmp_path: Path) -> None:
    joined = media.concat([sounding["silent"], sounding["a440"]], tmp_path / "joined.mp4")

    info = media.probe(joined)
    sound = decoded_sound(joined)
    assert info.has_audio and abs(info.audio_duration_s - info.duration_s) <= 1 / FPS
    assert np.sqrt(np.mean(sound[: int(0.95 * SR)] ** 2)) < 0.005
    assert dominant_hz(sound, 1.01, 1.5, (440.0, 1000.0)) == 440 and loudness_at(sound, 1.01, 1.5, 440) > 0.1


@pytest.mark.timeout(30)
def test_concat_keeps_a_late_sound_late_and_conforms_a_segment_of_another_rate(
    sounding: dict[str, Path], tmp_path: Path
) -> None:
    late = lavfi_clip(  # its sound starts a quarter second after its picture
        tmp_path / "late.mp4", f"testsrc2=s={SW}x{SH}:r={FPS}:d=1", audio="sine=f=440:d=0.75", audio_delay_s=0.25
    )
    faster = tone_clip(tmp_path / "faster.mp4", "sine=f=1000:d=1", fps=24)

    joined = media.concat([late, faster], tmp_path / "joined.mp4")

    info = media.probe(joined)
    assert info.fps == FPS and info.frames == FPS + round(23 / 24 * FPS)
    sound = decoded_sound(joined)
    assert abs(len(sound) / SR - info.frames / FPS) <= 1 / FPS
    assert np.sqrt(np.mean(sound[: int(0.2 * SR)] ** 2)) < 0.005
    assert dominant_hz(sound, 0.3, 0.95, (440.0, 1000.0)) == 440
    assert dominant_hz(sound, 1.05, len(sound) / SR - 0.05, (440.0, 1000.0)) == 1000


@pytest.mark.timeout(30)
def test_concat_of_silent_segments_stays_silent(sounding: dict[str, Path], tmp_path: Path) -> None:
    info = media.probe(media.concat([sounding["silent"], sounding["silent"]], tmp_path / "joined.mp4"))

    assert not info.has_audio and info.frames == 2 * FPS - 1


@pytest.mark.timeout(60)
def test_fit_to_size_keeps_the_sound_when_the_budget_allows(tmp_path: Path) -> None:
    big = tone_clip(tmp_path / "big.mp4", "sine=f=440:d=3", seconds=3, noisy=True)
    cap = 150_000
    assert big.stat().st_size > 2 * cap

    fitted = media.fit_to_size(big, tmp_path / "fitted.mp4", cap)

    info = media.probe(fitted)
    assert info.size_bytes <= cap and info.has_audio
    assert info.audio_duration_s == pytest.approx(3.0, abs=1 / FPS)
    assert dominant_hz(decoded_sound(fitted), 0.5, 2.5, (440.0, 1000.0)) == 440


@pytest.mark.timeout(60)
def test_fit_to_size_drops_the_sound_only_when_the_budget_is_too_small(tmp_path: Path) -> None:
    big = tone_clip(tmp_path / "big.mp4", "sine=f=440:d=3", seconds=3, noisy=True)
    cap = 30_000  # about 70 kbit/s in all: 32 kbit/s of sound would leave the picture too little

    info = media.probe(media.fit_to_size(big, tmp_path / "fitted.mp4", cap))

    assert info.size_bytes <= cap and not info.has_audio
    assert info.duration_s == pytest.approx(3.0, abs=1 / FPS)


@pytest.mark.timeout(30)
def test_strip_audio_removes_the_sound_and_copies_the_picture(sounding: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "silent.mp4"

    stripped = media.strip_audio(sounding["a440"], out)

    info, before = media.probe(stripped), media.probe(sounding["a440"])
    assert stripped == out and not info.has_audio
    assert (info.frames, info.width, info.height, info.codec) == (before.frames, SW, SH, "h264")
    with av.open(str(out)) as remuxed, av.open(str(sounding["a440"])) as original:
        assert [bytes(p) for p in remuxed.demux(video=0) if p.size] == [bytes(p) for p in original.demux(video=0) if p.size]


@pytest.mark.timeout(30)
def test_strip_audio_leaves_a_clip_without_sound(sounding: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "silent.mp4"

    assert media.strip_audio(sounding["silent"], out) == sounding["silent"]
    assert not out.exists()


@pytest.mark.timeout(30)
def test_encode_frames_muxes_a_sound_file(tmp_path: Path) -> None:
    from bot.provider import render

    tone = render.write_tone(tmp_path / "tone.wav", frequency_hz=render.tone_hz(3), seconds=0.5)
    frames = [np.full((H, W, 3), BLUE, np.uint8)] * (FPS // 2)

    clip = media.encode_frames(frames, tmp_path / "clip.mp4", width=W, height=H, fps=FPS, audio=tone)

    info = media.probe(clip)
    assert info.has_audio and info.audio_duration_s == pytest.approx(0.5, abs=1 / FPS)
    assert render.tone_hz(3) == 600
    assert dominant_hz(decoded_sound(clip), 0.05, 0.45, (500.0, 600.0, 700.0)) == 600
