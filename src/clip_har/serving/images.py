"""Uploaded images: type detection by magic bytes, strict base64, guarded decoding.

Every problem becomes an :class:`ApiError` with a stable code. Decoding reuses
:func:`clip_har.imaging.load_image`, which checks the pixel count from the header before a
pixel is decoded, so a small file that claims 30000x30000 pixels costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import anyio.to_thread
from PIL import Image

from clip_har.errors import ApiError, ImageProblem
from clip_har.imaging import ImageLoadError, load_image
from clip_har.serving.settings import ServeSettings

# image types we decode: (format name, predicate over the first bytes)
_IMAGE_SIGNATURES: tuple[tuple[str, tuple[bytes, ...]], ...] = (
    ("JPEG", (b"\xff\xd8\xff",)),
    ("PNG", (b"\x89PNG\r\n\x1a\n",)),
    ("GIF", (b"GIF87a", b"GIF89a")),
    ("BMP", (b"BM",)),
    ("TIFF", (b"II*\x00", b"MM\x00*")),
)
ACCEPTED_TYPES = ("JPEG", "PNG", "GIF", "WebP", "BMP", "TIFF")
"""The image types the service decodes (detected from their first bytes)."""

# common non-image content, named in the 415 message so a client sees what it sent
_OTHER_SIGNATURES: tuple[tuple[str, bytes], ...] = (
    ("PDF", b"%PDF-"),
    ("ZIP", b"PK\x03\x04"),
    ("gzip", b"\x1f\x8b"),
    ("7z", b"7z\xbc\xaf\x27\x1c"),
    ("RAR", b"Rar!\x1a\x07"),
    ("ELF executable", b"\x7fELF"),
    ("Windows executable", b"MZ"),
    ("Photoshop (PSD)", b"8BPS"),
    ("ICO", b"\x00\x00\x01\x00"),
    ("Ogg", b"OggS"),
    ("MP3", b"ID3"),
    ("Matroska/WebM", b"\x1aE\xdf\xa3"),
    ("JPEG 2000", b"\x00\x00\x00\x0cjP  "),
)
_SNIFF_BYTES = 512
_BASE64_WHITESPACE = re.compile(rb"[ \t\r\n]+")
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,", re.ASCII)
_URL_SCHEMES = ("http://", "https://", "ftp://", "file://", "s3://", "gs://")

# ImageProblem (from load_image) -> (HTTP status, API code): the one mapping
_PROBLEM_STATUS: dict[ImageProblem, tuple[int, str]] = {
    ImageProblem.EMPTY_FILE: (400, "empty_image"),
    ImageProblem.TOO_LARGE: (413, "image_too_large"),
    ImageProblem.TOO_SMALL: (400, "image_too_small"),
    ImageProblem.NOT_AN_IMAGE: (400, "invalid_image"),  # its signature matched: it is corrupt
    ImageProblem.CORRUPT_DATA: (400, "invalid_image"),
}
_DEFAULT_STATUS = (400, "invalid_image")


def sniff_type(data: bytes) -> str:
    """What ``data`` is, from its first bytes: an accepted type name (see
    :data:`ACCEPTED_TYPES`) or a description of something else ("PDF", "text", ...)."""
    head = data[:_SNIFF_BYTES]
    for name, signatures in _IMAGE_SIGNATURES:
        if head.startswith(signatures):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:4] == b"RIFF":
        return f"RIFF {head[8:12].decode('latin-1').strip() or 'container'}"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("latin-1")
        return "HEIF/AVIF" if brand in {"heic", "heix", "mif1", "msf1", "avif"} else "MP4/QuickTime"
    for name, signature in _OTHER_SIGNATURES:
        if head.startswith(signature):
            return name
    return _describe_text(head)


def _describe_text(head: bytes) -> str:
    """ "JSON", "HTML/XML", "SVG", "text" or "unknown binary data"."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut by the sniff window is still text
        if exc.start < len(head) - 3:
            return "unknown binary data"
        text = head[: exc.start].decode("utf-8")
    if any(ord(ch) < 32 and ch not in "\t\r\n\f" for ch in text):
        return "unknown binary data"
    start = text.lstrip("\ufeff \t\r\n").lower()
    if start.startswith(("{", "[")):
        return "JSON"
    if "<svg" in start[:_SNIFF_BYTES]:
        return "SVG"
    if start.startswith("<"):
        return "HTML/XML"
    return "text"


def image_error(exc: ImageLoadError) -> ApiError:
    """The API answer for an image ``load_image`` refused."""
    status, code = _PROBLEM_STATUS.get(exc.code, _DEFAULT_STATUS)
    return ApiError(status, code, exc.reason)


def decode_image(data: bytes, settings: ServeSettings) -> Image.Image:
    """The decoded image in ``data`` (blocking: call it off the event loop).

    Raises :class:`ApiError`: 400 ``empty_image``, 415 ``unsupported_media_type`` (not a type
    of :data:`ACCEPTED_TYPES`), 413 ``image_too_large`` (over ``settings.max_pixels``, from the
    header), 400 ``image_too_small`` (a side under ``settings.min_side``), 400
    ``invalid_image`` (truncated or corrupt).
    """
    if not data:
        raise ApiError(400, "empty_image", "the image is empty (0 bytes)")
    kind = sniff_type(data)
    if kind not in ACCEPTED_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"not a supported image: the data looks like {kind}; "
            f"send one of {', '.join(ACCEPTED_TYPES)}",
        )
    try:
        return load_image(data, min_side=settings.min_side, max_pixels=settings.max_pixels)
    except ImageLoadError as exc:
        raise image_error(exc) from exc


@dataclass(frozen=True)
class Decoded:
    """One image of a batch: the image, or the error that answers it."""

    image: Image.Image | None = None
    error: ApiError | None = None


def decode_each(datas: Sequence[bytes], settings: ServeSettings) -> list[Decoded]:
    """Decode every image, keeping each one's error (blocking)."""
    results = []
    for data in datas:
        try:
            results.append(Decoded(image=decode_image(data, settings)))
        except ApiError as exc:
            results.append(Decoded(error=exc))
    return results


async def decode_images(datas: Sequence[bytes], settings: ServeSettings) -> list[Image.Image]:
    """Decode every image in a worker thread; the first bad one raises its :class:`ApiError`."""

    def run() -> list[Image.Image]:
        return [decode_image(data, settings) for data in datas]

    return await anyio.to_thread.run_sync(run)


def looks_like_url(value: str) -> bool:
    """Whether ``value`` is a URL the client wants fetched (the server never fetches one)."""
    return value.lstrip()[:8].lower().startswith(_URL_SCHEMES)


def urls_not_supported(field: str) -> ApiError:
    """The answer to a request that names an image by URL."""
    return ApiError(
        400,
        "urls_not_supported",
        f"'{field}': the server never fetches URLs; send the image bytes "
        "(multipart upload or base64)",
    )


def decode_base64(value: str, field: str = "image_base64") -> bytes:
    """The bytes of a base64 image (standard alphabet, padded; a ``data:`` URL prefix and
    line breaks are accepted). Raises 400 ``invalid_base64`` or ``urls_not_supported``."""
    if looks_like_url(value):
        raise urls_not_supported(field)
    text = value.strip()
    match = _DATA_URL.match(text)
    if match:
        text = text[match.end() :]
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ApiError(
            400, "invalid_base64", f"'{field}': base64 holds ASCII characters only"
        ) from exc
    raw = _BASE64_WHITESPACE.sub(b"", raw)
    try:
        if sys.version_info >= (3, 11):
            return binascii.a2b_base64(raw, strict_mode=True)
        return base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise ApiError(
            400,
            "invalid_base64",
            f"'{field}': invalid base64 ({exc}); use the standard alphabet with '=' padding",
        ) from exc
