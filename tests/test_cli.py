"""`videobot generate` against `videobot simulator`, both real processes talking HTTP on loopback."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from bot.media import probe
from tests.conftest import subprocess_env

pytestmark = pytest.mark.timeout(120)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return subprocess_env(tmp_path, VIDEOBOT_LOG_LEVEL="WARNING", COLUMNS="120", **extra)


def videobot(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=tmp_path, env=env or _env(tmp_path),
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "simulator", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(tmp_path),
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert "Simulator serving the provider API at http://127.0.0.1:" in line, line
    yield line.split(" at ", 1)[1].split()[0]
    process.terminate()
    process.wait(timeout=10)


def _limits(tmp_path: Path, text: str) -> None:
    (tmp_path / "videobot.toml").write_text(text)


def test_generate_through_the_http_backend_writes_the_asked_clip(tmp_path: Path, simulator: str) -> None:
    env = _env(tmp_path, VIDEOBOT_BACKEND="http", WAN_API_BASE_URL=simulator, WAN_API_KEY="sk-cli-secret-123")
    result = videobot(tmp_path, "generate", "a red fox running through fresh snow", "--duration", "3",
                      "--resolution", "832x480", "--fps", "24", "--seed", "7", "--output", "fox.mp4", env=env)
    assert result.returncode == 0, result.stderr
    info = probe(tmp_path / "fox.mp4")
    assert (info.width, info.height, info.fps, info.codec) == (832, 480, 24, "h264")
    assert info.duration_s == pytest.approx(3, abs=0.1) and info.frames == 72
    assert "Wrote fox.mp4" in result.stderr and "sk-cli-secret-123" not in result.stderr + result.stdout
    listed = videobot(tmp_path, "jobs", env={**env, "COLUMNS": "200"})
    assert listed.returncode == 0 and "succeeded" in listed.stdout and "a red fox running" in listed.stdout
    report = videobot(tmp_path, "usage", env={**env, "COLUMNS": "200"})
    assert report.returncode == 0 and "cli" in report.stdout and " 1 " in report.stdout


def test_generate_animates_a_48_megapixel_photo(tmp_path: Path, simulator: str) -> None:
    photo = tmp_path / "phone.jpg"
    Image.new("RGB", (8000, 6000), (30, 120, 200)).save(photo, quality=60)
    env = _env(tmp_path, VIDEOBOT_BACKEND="http", WAN_API_BASE_URL=simulator)
    result = videobot(tmp_path, "generate", "the sea slowly moving", "--image", str(photo), "--duration", "2",
                      "--resolution", "1280x720", "--output", "sea.mp4", env=env)
    assert result.returncode == 0, result.stderr
    info = probe(tmp_path / "sea.mp4")
    assert (info.width, info.height) == (1280, 720) and info.duration_s == pytest.approx(2, abs=0.1)


def test_a_twenty_second_request_comes_back_stitched(tmp_path: Path, simulator: str) -> None:
    _limits(tmp_path, '[defaults]\nmax_duration_s = 20\n')
    env = _env(tmp_path, VIDEOBOT_BACKEND="http", WAN_API_BASE_URL=simulator)
    result = videobot(tmp_path, "generate", "a long train journey", "--duration", "20", "--resolution", "480x832",
                      "--output", "train.mp4", env=env)
    assert result.returncode == 0, result.stderr
    info = probe(tmp_path / "train.mp4")
    assert (info.width, info.height, info.fps) == (480, 832, 16)
    assert info.duration_s == pytest.approx(20, abs=0.15)


def _png_claiming(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), (90, 10, 10)).save(buffer, "JPEG")
    return buffer.getvalue()[:700]


@pytest.mark.parametrize(
    ("args", "image", "message"),
    [
        (["   "], None, "Describe the video you want"),
        (["x" * 5000], None, "Your prompt is 5,000 characters; the limit is 2,000"),
        (["a fox", "--dur", "5"], None, "No such option: --dur"),
        (["a fox", "--duration", "0"], None, "--duration must be at least 1 second"),
        (["a fox", "--duration", "11"], None, "--duration 11 is longer than the 10 s allowed here"),
        (["a fox", "--duration", "abc"], None, "--duration must be a whole number (got 'abc')"),
        (["a fox", "--fps", "30"], None, "--fps must be 16 or 24 (got 30)"),
        (["a fox"], b"just some notes, not a picture\n", "not an image"),
        (["a fox"], _truncated_jpeg(), "damaged or incomplete"),
        (["a fox"], _png_claiming(30000, 30000), "900 megapixels"),
    ],
    ids=["empty", "5000-chars", "unknown-option", "duration-0", "duration-11", "duration-abc", "fps-30",
         "text-file", "truncated-image", "decompression-bomb"],
)
def test_bad_input_gets_a_clear_error_and_no_traceback(tmp_path: Path, args: list[str], image: bytes | None, message: str) -> None:
    extra: list[str] = []
    if image is not None:
        (tmp_path / "input.png").write_bytes(image)
        extra = ["--image", str(tmp_path / "input.png")]
    result = videobot(tmp_path, "generate", *args, *extra, "--output", "out.mp4", timeout=60)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0
    assert message in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "out.mp4").exists()


def test_check_config_names_the_bad_key(tmp_path: Path) -> None:
    _limits(tmp_path, "[defaults]\nuser_daily_jobs = \"five\"\n")
    result = videobot(tmp_path, "check-config")
    assert result.returncode == 1
    assert "defaults.user_daily_jobs" in " ".join(result.stderr.split())
    _limits(tmp_path, "[defaults]\nuser_daily_jobs = 5\n")
    assert videobot(tmp_path, "check-config").returncode == 0


@pytest.mark.timeout(90)
def test_sound_from_a_simulator_with_audio_is_kept_unless_silent(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "simulator", "--host", "127.0.0.1", "--port", "0", "--audio"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(tmp_path),
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split(" at ", 1)[1].split()[0]
        env = _env(tmp_path, VIDEOBOT_BACKEND="http", WAN_API_BASE_URL=url, WAN_AUDIO="1")
        made = {}
        for name, extra in (("loud.mp4", ()), ("quiet.mp4", ("--silent",))):
            result = videobot(tmp_path, "generate", "a brass band", "--duration", "1", "--resolution", "832x480",
                              "--output", name, *extra, env=env)
            assert result.returncode == 0, result.stderr
            made[name] = probe(tmp_path / name)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert made["loud.mp4"].has_audio and made["loud.mp4"].audio_duration_s == pytest.approx(1, abs=1 / 16)
    assert not made["quiet.mp4"].has_audio and made["quiet.mp4"].frames == 16
