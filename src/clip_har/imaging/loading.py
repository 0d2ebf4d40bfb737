"""Image loading: size guards from the header, full decode, EXIF orientation."""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from clip_har.errors import ImageLoadError, ImageProblem

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
    }
)
"""File suffixes treated as images by every command that searches a folder."""


def has_image_name(path: Path) -> bool:
    """An image suffix on a visible name (``.``-files such as macOS ``._x.jpg`` are metadata)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def images_under(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (recursive), sorted."""
    return sorted(p for p in folder.rglob("*") if has_image_name(p) and p.is_file())


DEFAULT_MIN_SIDE = 32
"""Images whose shorter side is below this many pixels are rejected (``data.min_image_side``)."""
DEFAULT_MAX_PIXELS = 64_000_000
"""Images with more pixels are rejected from their header (``data.max_image_pixels``)."""

# Pillow's own decompression-bomb guard (Image.MAX_IMAGE_PIXELS: a warning above it, an
# error above twice it) would answer huge images in its words and at its limit. The size
# limit is ours: the header is parsed with Pillow's guard off, and decoders that re-check
# it get ours. The setting and the warning filter are process global, so they change under
# a lock, around the header parse and those decoders only.
_PILLOW_LIMIT_LOCK = threading.Lock()
# Formats whose decoders re-check the decompression-bomb limit while decoding.
_CHECKS_ON_LOAD = {"GIF", "ICO", "ICNS", "BLP", "DCX", "MIC", "GBR"}


@contextmanager
def _pillow_limit(max_pixels: int | None) -> Iterator[None]:
    """Pillow refuses images over ``max_pixels`` (``None``: never) inside the block, and
    never warns about their size."""
    with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        # Pillow errors above twice its setting (and only warns between the two)
        Image.MAX_IMAGE_PIXELS = None if max_pixels is None else max(1, max_pixels // 2)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _read_source(source: str | os.PathLike[str] | bytes | BinaryIO) -> tuple[bytes, str | None]:
    """The raw bytes of ``source`` and a name for messages."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), None
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise ImageLoadError(ImageProblem.MISSING_FILE, "file not found", name)
        if path.is_dir():
            raise ImageLoadError(ImageProblem.UNREADABLE, "is a directory, not an image file", name)
        try:
            return path.read_bytes(), name
        except OSError as exc:
            raise ImageLoadError(
                ImageProblem.UNREADABLE, f"cannot read file ({exc.strerror or exc})", name
            ) from exc
    read = getattr(source, "read", None)
    if read is None:
        raise ImageLoadError(
            ImageProblem.UNREADABLE, f"unsupported source type {type(source).__name__}"
        )
    stream_name = getattr(source, "name", None)
    label = stream_name if isinstance(stream_name, str) else None
    try:
        data = read()
    except OSError as exc:
        raise ImageLoadError(ImageProblem.UNREADABLE, f"cannot read stream ({exc})", label) from exc
    if not isinstance(data, bytes | bytearray):
        raise ImageLoadError(
            ImageProblem.UNREADABLE, "stream did not return bytes (open it in binary mode)", label
        )
    return bytes(data), label


def _too_large(pixels: int | None, limit: int) -> str:
    """The one message for an image over the pixel limit (``pixels`` unknown: a frame the
    decoder found too large)."""
    size = "over the limit once decoded" if pixels is None else f"{pixels / 1e6:.1f} megapixels"
    return f"image too large ({size}; limit is {limit / 1e6:.1f} megapixels)"


def load_image(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Open, size-check, fully decode and EXIF-orient an image, in its native mode.

    The size limits are checked from the header before any pixel is decoded. Every
    failure (missing file, directory, empty, not an image, truncated, too small,
    too large, decoder errors) raises :class:`ImageLoadError` with a ``reason``.
    """
    data, name = _read_source(source)
    if not data:
        raise ImageLoadError(ImageProblem.EMPTY_FILE, "empty file (0 bytes)", name)

    try:
        with _pillow_limit(None):  # the size is checked below, from the header
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            ImageProblem.NOT_AN_IMAGE, "not an image (cannot identify image file)", name
        ) from exc
    except Exception as exc:  # decoders raise many types on malformed headers
        raise ImageLoadError(
            ImageProblem.CORRUPT_DATA, f"corrupt image header ({type(exc).__name__}: {exc})", name
        ) from exc

    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(ImageProblem.TOO_LARGE, _too_large(width * height, max_pixels), name)
    if min(width, height) < min_side:
        raise ImageLoadError(
            ImageProblem.TOO_SMALL,
            f"image too small ({width}x{height} px; minimum side is {min_side} px)",
            name,
        )

    try:
        if image.format in _CHECKS_ON_LOAD:
            with _pillow_limit(max_pixels):
                image.load()
        else:
            image.load()
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(ImageProblem.TOO_LARGE, _too_large(None, max_pixels), name) from exc
    except Exception as exc:  # OSError, SyntaxError, ValueError, EOFError, struct.error, ...
        raise ImageLoadError(
            ImageProblem.CORRUPT_DATA,
            f"truncated or corrupt image data ({type(exc).__name__}: {exc})",
            name,
        ) from exc
    return _apply_exif_orientation(image, name)


_ORIENTATION_TAG = 0x0112


def _apply_exif_orientation(image: Image.Image, name: str | None) -> Image.Image:
    """Rotate/flip per the EXIF Orientation tag; no copy when there is nothing to do."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception as exc:  # a broken EXIF block must not make the photo unusable
        logger.warning("ignoring unreadable EXIF data in %s: %s", name or "image", exc)
        return image
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return image
    try:
        rotated = ImageOps.exif_transpose(image)
    except Exception as exc:
        raise ImageLoadError(
            ImageProblem.CORRUPT_DATA, f"cannot apply EXIF orientation ({exc})", name
        ) from exc
    return rotated if rotated is not None else image


# --------------------------------------------------------------------------- colour
