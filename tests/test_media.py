"""The ffmpeg helpers on real, tiny clips: what the runner relies on to check, join and shrink."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from bot import media
from bot.errors import BackendError
from bot.models import ClipInfo

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


def test_concat_failure_reports_ffmpeg_error_not_its_command(clips: dict[str, Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01 not a video " * 200)
    out = tmp_path / "joined.mp4"

    with pytest.raises(BackendError) as caught:
        media.concat([clips["blue"], garbage], out)

    message = str(caught.value)
    assert message.startswith("Joining the video segments failed: ")
    assert "filter_complex" not in message and media.ffmpeg_exe() not in message
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
    subprocess.run(
        [media.ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono",
         "-t", "0.2", str(path)],
        check=True,
        timeout=30,
    )
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
