"""Check and normalise the images people attach for image-to-video.

Attachments come from strangers, so every refusal is an ``InvalidRequest`` whose message tells
the person what is wrong with their file, and every check that can refuse cheaply runs before
anything is decoded: size in bytes, then magic bytes, then the pixel count the header declares.
A small file that declares a huge picture (a decompression bomb) is refused from its header,
before Pillow allocates anything.

Accepted images always come back re-encoded as JPEG at quality 95: compact enough to send as
base64 inside a provider's JSON body, visually lossless at that quality, and the re-encode
drops EXIF metadata, so a phone photo's GPS position never leaves the bot.

``load_image`` blocks (it decodes); async callers run it in a thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, ImageOps

from bot.errors import InvalidRequest
from bot.models import ImageInput

_ACCEPTED = "Attach a PNG, JPEG, WebP, GIF or BMP."
_PILLOW_FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
}
_DAMAGED = "The image looks damaged or incomplete. Try saving or exporting it again."
_JPEG_QUALITY = 95
_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}


def sniff_mime(data: bytes) -> str | None:
    """The mime type of an accepted image format from its first bytes, else None.

    Needs only the first 16 bytes, so an adapter can refuse a non-image before downloading the
    rest; ``load_image`` then explains what the file looks like instead.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data.startswith(b"BM"):
        return "image/bmp"
    return None


def _unsupported_image(data: bytes) -> str | None:
    """Name an image format we do not take, so the person knows to convert rather than retry."""
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"hevc"):
            return "HEIC"
        if brand in (b"avif", b"avis"):
            return "AVIF"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data.startswith(b"\xff\x0a") or data.startswith(b"\x00\x00\x00\x0cJXL "):
        return "JPEG XL"
    if data.startswith(b"8BPS"):
        return "Photoshop (PSD)"
    if data.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    if b"<svg" in data[:1024].lower():
        return "SVG"
    return None


def _looks_like(data: bytes) -> str | None:
    """A plain-words guess at what a non-image file is, for the refusal message."""
    head = data[:1024]
    if head.startswith(b"%PDF"):
        return "a PDF"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive or Office document"
    if head[4:8] == b"ftyp" or head.startswith(b"\x1aE\xdf\xa3"):
        return "a video"
    if head.startswith((b"ID3", b"OggS", b"fLaC")):
        return "an audio file"
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "a web page"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "a text file" if b"\x00" not in head else None


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):.1f}".removesuffix(".0") + " MB"


def _megapixels(n_pixels: int) -> str:
    return f"{n_pixels / 1_000_000:.3g} megapixels"


def _refuse_non_image(data: bytes) -> InvalidRequest:
    unsupported = _unsupported_image(data)
    if unsupported:
        return InvalidRequest(f"{unsupported} images are not supported. {_ACCEPTED}")
    guess = _looks_like(data)
    looks = f" (it looks like {guess})" if guess else ""
    return InvalidRequest(f"That file is not an image{looks}. {_ACCEPTED}")


def _open_header(data: bytes, mime: str, max_pixels: int) -> Image.Image:
    """Parse only the header, and refuse a declared picture too large to decode safely.

    Pillow's own bomb guard runs inside ``Image.open``: it raises above twice
    ``Image.MAX_IMAGE_PIXELS`` but only warns above once, and anyone may set it to None. So the
    pixel count is checked here whatever Pillow is set to, against the lower of our limit and
    Pillow's, which turns Pillow's warning band into a refusal too. No global state is touched,
    so this is safe to run from several threads at once.
    """
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        image = Image.open(BytesIO(data), formats=[_PILLOW_FORMATS[mime]])
    except Image.DecompressionBombError as exc:
        # Pillow refuses before exposing the size; its message carries the declared pixel count.
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" ({_megapixels(int(declared.group(1)))})" if declared else ""
        raise InvalidRequest(
            f"The image declares too many pixels{size} to open safely; the limit is {_megapixels(limit)}."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidRequest(_DAMAGED) from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidRequest(_DAMAGED)
    if width * height > limit:
        raise InvalidRequest(
            f"The image is {width}x{height} pixels ({_megapixels(width * height)}); "
            f"the limit is {_megapixels(limit)}."
        )
    return image


def _fitted(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled down (never up) to fit in ``box``, keeping its aspect."""
    scale = min(1.0, box[0] / size[0], box[1] / size[1])
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white: video models take RGB, and white reads as 'no background'."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def load_image(
    data: bytes,
    *,
    max_bytes: int = 20 * 1024 * 1024,
    max_pixels: int = 100_000_000,
    fit_within: tuple[int, int] = (1280, 1280),
) -> ImageInput:
    """Check an attached image and return it upright, RGB, at most ``fit_within``, as JPEG.

    A large photo is normal input, not an error: a JPEG is decoded at a reduced scale with
    ``draft`` (an 8000x6000 photo decodes straight to 2000x1500), turned upright from its EXIF
    orientation, then scaled to fit. GIFs give their first frame. When Pillow's own
    ``Image.MAX_IMAGE_PIXELS`` (about 89 megapixels unless changed) is lower than ``max_pixels``,
    the lower limit applies.
    """
    if not data:
        raise InvalidRequest("The attached file is empty.")
    if len(data) > max_bytes:
        raise InvalidRequest(f"The image is {_megabytes(len(data))}; the limit is {_megabytes(max_bytes)}.")
    mime = sniff_mime(data)
    if mime is None:
        raise _refuse_non_image(data)
    image = _open_header(data, mime, max_pixels)
    try:
        if mime == "image/jpeg":
            upright_box = fit_within
            if image.getexif().get(_EXIF_ORIENTATION) in _ROTATED_ORIENTATIONS:
                upright_box = (fit_within[1], fit_within[0])
            image.draft("RGB", _fitted(image.size, upright_box))
        image.load()
        upright = ImageOps.exif_transpose(image)
        rgb = _to_rgb(upright)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidRequest(_DAMAGED) from exc
    if rgb.size != _fitted(rgb.size, fit_within):
        rgb = rgb.resize(_fitted(rgb.size, fit_within), Image.Resampling.LANCZOS)
    out = BytesIO()
    rgb.save(out, format="JPEG", quality=_JPEG_QUALITY)
    return ImageInput(data=out.getvalue(), mime="image/jpeg", width=rgb.width, height=rgb.height)


@dataclass(frozen=True)
class ImageRules:
    """What a provider accepts as an input image: side lengths, file size and formats."""

    min_side: int = 1
    max_side: int = 4096
    max_bytes: int = 10 * 1024 * 1024
    mimes: tuple[str, ...] = ("image/jpeg", "image/png", "image/webp")


def fit_image(data: bytes, mime: str, rules: ImageRules) -> tuple[bytes, str]:
    """``data`` as a provider accepts it: sides within ``rules`` (scaled, keeping the aspect),
    a format it takes, and at most ``max_bytes`` (JPEG quality steps down until it fits).

    Images reaching a backend were already checked by ``load_image`` or cut from our own clip,
    so this only reshapes; an image that still cannot fit raises ``InvalidRequest``.
    Blocking: call it in a thread.
    """
    with Image.open(BytesIO(data)) as opened:
        image = _to_rgb(opened)
    width, height = image.size
    scale = min(1.0, rules.max_side / max(width, height))
    if min(width, height) * scale < rules.min_side:
        scale = rules.min_side / min(width, height)
    if max(width, height) * scale > rules.max_side + 0.5:
        raise InvalidRequest(
            f"The image is {width}x{height}; its shape is too long and thin for this model "
            f"(each side must be {rules.min_side}–{rules.max_side} px)."
        )
    if scale != 1.0:
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
    elif mime in rules.mimes and len(data) <= rules.max_bytes:
        return data, mime
    target = mime if mime in rules.mimes and mime != "image/jpeg" else "image/jpeg"
    for quality in (_JPEG_QUALITY, 80, 70, 60):
        out = BytesIO()
        if target == "image/jpeg":
            image.save(out, format="JPEG", quality=quality)
        else:
            image.save(out, format=target.split("/")[1].upper())
        if out.tell() <= rules.max_bytes:
            return out.getvalue(), target
        target = "image/jpeg"
    raise InvalidRequest(f"The image cannot be made smaller than {_megabytes(rules.max_bytes)} for this model.")
