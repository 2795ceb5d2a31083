"""Upload validation: the type sniffed from the bytes, size and pixel limits checked before decoding.

PIL reads only the header on ``Image.open``, so the pixel count is known before any pixel data is
decoded; only then is the image verified and fully decoded, which rejects truncated or corrupt files.
Decoding a large image takes a CPU for up to a second: ``check_image`` runs everything PIL does in a
small thread pool (``BDIA_DECODE_THREADS``), never on the event loop, after the checks that need no
parsing (size, type by the first bytes).
"""

from __future__ import annotations

import asyncio
import functools
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from bdia.jobqueue.cache import sha256

from .problems import Problem

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}


def sniff(data: bytes) -> str | None:
    """The media type the bytes actually are (PNG, JPEG or WebP), whatever the client claimed."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class ImageUpload:
    """A validated image upload."""

    data: bytes
    media_type: str
    width: int
    height: int

    @functools.cached_property
    def sha256(self) -> str:
        return sha256(self.data)


async def check_image(
    data: bytes, *, field: str, max_bytes: int, max_pixels: int, max_aspect_ratio: float = 20.0, threads: int = 2
) -> ImageUpload:
    """Check an uploaded image, cheapest checks first; raise a ``Problem`` naming ``field``.

    Refused: over the byte or pixel limits, not PNG/JPEG/WebP by its bytes, truncated or corrupt,
    animated, or more elongated than ``max_aspect_ratio``. Accepted and normalised by the worker:
    any mode (CMYK, 16-bit, palette, alpha) and EXIF orientation.

    The size and the type are checked here; the rest (header, verification, decoding, the digest) runs
    in a pool of ``threads`` threads, where further images wait their turn, so the event loop goes on.
    """
    media_type = _check_bytes(data, field, max_bytes)
    decode = functools.partial(_decode, data, media_type, field, max_pixels, max_aspect_ratio)
    return await asyncio.get_running_loop().run_in_executor(_decoders(threads), decode)


@functools.lru_cache
def _decoders(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="bdia-decode")


def _check_bytes(data: bytes, field: str, max_bytes: int) -> str:
    """The checks that parse nothing: size, emptiness, the type by the first bytes; the media type."""
    if len(data) > max_bytes:
        raise Problem(413, "image_too_large", f"{field}: {len(data)} bytes exceeds the limit of {max_bytes}")
    if not data:
        raise _invalid(field, "the file is empty")
    media_type = sniff(data)
    if media_type is None:
        raise Problem(415, "unsupported_media_type", f"{field}: not a PNG, JPEG or WebP file (judged by its bytes)")
    return media_type


def _decode(data: bytes, media_type: str, field: str, max_pixels: int, max_aspect_ratio: float) -> ImageUpload:
    """The header's limits, then verification and a full decode (PIL releases the GIL while it decodes)."""
    formats = [FORMATS[media_type]]
    try:
        # PIL's own bomb check warns (it raises only at twice its limit); the pixel limit here refuses
        # first. (No warnings.catch_warnings: it is not thread-safe, and this runs in threads.)
        with Image.open(io.BytesIO(data), formats=formats) as img:  # reads the header only
            width, height = img.size
            if width * height > max_pixels:
                raise _too_many_pixels(field, width, height, max_pixels)
            if width < 1 or height < 1:
                raise _invalid(field, "the image has no pixels")
            if max(width, height) > max_aspect_ratio * min(width, height):
                raise _invalid(field, f"{width}×{height} is more elongated than {max_aspect_ratio:g}:1")
            if getattr(img, "n_frames", 1) > 1:
                raise _invalid(field, "animated images are not supported: send a single frame")
            img.verify()  # structure and checksums, without decoding
        with Image.open(io.BytesIO(data), formats=formats) as img:
            img.load()  # a truncated or corrupt file fails here
    except Problem:
        raise
    except Image.DecompressionBombError:
        raise Problem(413, "image_too_large", f"{field}: too many pixels (over {max_pixels})") from None
    except Exception as exc:  # PIL raises many types for bad files
        raise _invalid(field, f"the image is truncated or corrupt ({exc})") from None
    if width < 1 or height < 1:
        raise _invalid(field, "the image has no pixels")
    upload = ImageUpload(data, media_type, width, height)
    _ = upload.sha256  # hashed here, off the event loop, once
    return upload


def _too_many_pixels(field: str, width: int, height: int, max_pixels: int) -> Problem:
    return Problem(413, "image_too_large", f"{field}: {width}×{height} = {width * height} pixels exceeds {max_pixels}")


def _invalid(field: str, message: str) -> Problem:
    return Problem(
        422,
        "invalid_image",
        f"{field}: {message}",
        errors=[{"loc": ["body", field], "msg": message, "type": "invalid_image"}],
    )
