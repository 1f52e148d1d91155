"""Attached images: good ones come back upright and small, bad ones are refused fast and clearly."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from PIL import Image, ImageDraw

from bot.errors import InvalidRequest
from bot.images import load_image, sniff_mime

TEAL = (20, 160, 150)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.convert("RGB")


def assert_close(color: tuple[int, ...], expected: tuple[int, int, int]) -> None:
    assert all(abs(got - want) <= 8 for got, want in zip(color, expected)), (color, expected)


def png_declaring(width: int, height: int) -> bytes:
    """A small, valid 8x8 PNG whose IHDR (with a correct CRC) claims another size."""
    small = encode(Image.new("RGB", (8, 8)), "PNG")
    fields = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    ihdr = struct.pack(">I", 13) + fields + struct.pack(">I", zlib.crc32(fields))
    return small[:8] + ihdr + small[33:]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_each_accepted_format_comes_back_as_rgb_jpeg(fmt: str) -> None:
    data = encode(Image.new("RGB", (64, 48), TEAL), fmt)

    image = load_image(data)

    assert (image.mime, image.width, image.height) == ("image/jpeg", 64, 48)
    picture = decoded(image.data)
    assert picture.size == (64, 48)
    assert_close(picture.getpixel((32, 24)), TEAL)


def test_transparency_is_flattened_onto_white() -> None:
    data = encode(Image.new("RGBA", (32, 32), (255, 0, 0, 0)), "PNG")

    assert_close(decoded(load_image(data).data).getpixel((16, 16)), (255, 255, 255))


def test_phone_photo_of_48_megapixels_is_turned_upright_and_scaled_to_fit() -> None:
    photo = Image.new("RGB", (8000, 6000), (40, 40, 40))
    ImageDraw.Draw(photo).rectangle((0, 0, 1999, 1499), fill=(230, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was held upright: rotate 90 degrees clockwise to view
    data = encode(photo, "JPEG", quality=40, exif=exif.tobytes())

    started = time.perf_counter()
    image = load_image(data)
    elapsed = time.perf_counter() - started

    assert elapsed < 2
    assert (image.width, image.height) == (960, 1280)
    picture = decoded(image.data)
    assert picture.size == (960, 1280)
    assert_close(picture.getpixel((900, 100)), (230, 20, 20))
    assert_close(picture.getpixel((100, 100)), (40, 40, 40))
    assert "exif" not in Image.open(io.BytesIO(image.data)).info


def test_fit_within_bounds_a_wide_image_by_its_width() -> None:
    data = encode(Image.new("RGB", (1000, 250), TEAL), "PNG")

    image = load_image(data, fit_within=(400, 400))

    assert (image.width, image.height) == (400, 100)


def test_a_small_image_is_never_scaled_up() -> None:
    data = encode(Image.new("RGB", (30, 20), TEAL), "PNG")

    image = load_image(data)

    assert (image.width, image.height) == (30, 20)


PNG = encode(Image.new("RGB", (64, 48), TEAL), "PNG")
JPEG = encode(Image.effect_noise((64, 48), 40).convert("RGB"), "JPEG")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(b"", "The attached file is empty.", id="empty"),
        pytest.param(b"Dear bot,\nplease animate my cat.\n", "not an image (it looks like a text file)", id="text"),
        pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "not an image (it looks like a PDF)", id="pdf"),
        pytest.param(b"PK\x03\x04\x14\x00\x06\x00", "not an image (it looks like a ZIP", id="zip"),
        pytest.param(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC images are not supported", id="heic"),
        pytest.param(b"II*\x00\x08\x00\x00\x00", "TIFF images are not supported", id="tiff"),
        pytest.param(PNG[: len(PNG) // 2], "The image looks damaged or incomplete", id="truncated-png"),
        pytest.param(JPEG[: len(JPEG) // 2], "The image looks damaged or incomplete", id="truncated-jpeg"),
        pytest.param(PNG[:20], "The image looks damaged or incomplete", id="png-header-only"),
        pytest.param(png_declaring(30_000, 30_000), "too many pixels (900 megapixels) to open safely", id="bomb"),
    ],
)
def test_bad_files_are_refused_quickly_with_a_message_naming_the_problem(data: bytes, problem: str) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidRequest) as caught:
        load_image(data)
    elapsed = time.perf_counter() - started

    assert problem in str(caught.value)
    assert elapsed < 0.25


def test_every_refusal_of_a_non_image_lists_what_to_attach() -> None:
    with pytest.raises(InvalidRequest, match=r"Attach a PNG, JPEG, WebP, GIF or BMP\.$"):
        load_image(b"%PDF-1.4")


def test_oversize_file_is_refused_before_looking_inside() -> None:
    data = PNG + b"\x00" * (31 * 1024 * 1024 + 200 * 1024)

    with pytest.raises(InvalidRequest, match=r"^The image is 31.2 MB; the limit is 20 MB\.$"):
        load_image(data)


def test_pixel_limit_is_the_callers_choice() -> None:
    data = encode(Image.new("RGB", (100, 100), TEAL), "PNG")

    with pytest.raises(InvalidRequest, match="100x100 pixels"):
        load_image(data, max_pixels=5_000)


def test_bomb_is_refused_even_when_pillow_guard_is_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)

    with pytest.raises(InvalidRequest, match=r"30000x30000 pixels \(900 megapixels\); the limit is 100 megapixels"):
        load_image(png_declaring(30_000, 30_000))


def test_pillow_warning_band_is_a_refusal_not_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    data = encode(Image.new("RGB", (40, 40), TEAL), "PNG")

    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(InvalidRequest, match="40x40 pixels"):
        load_image(data)


@pytest.mark.parametrize(
    ("head", "mime"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"BM6\x00\x00\x00", "image/bmp"),
        (b"RIFF\x10\x00\x00\x00WAVEfmt ", None),
        (b"%PDF-1.7", None),
        (b"", None),
    ],
)
def test_sniff_mime_knows_accepted_formats_from_their_first_bytes(head: bytes, mime: str | None) -> None:
    assert sniff_mime(head) == mime
