"""The pixel limit is ours: one message, at our limit, whatever size Pillow would refuse or
warn about, read from the header before any pixel is decoded (crafted headers, so no test
allocates the pixels it declares)."""

from __future__ import annotations

import struct
import warnings
import zlib

import pytest
from PIL import Image

from clip_har.errors import ImageLoadError, ImageProblem
from clip_har.imaging import DEFAULT_MAX_PIXELS, load_image


def png_header(width: int, height: int) -> bytes:
    """A PNG declaring ``width x height`` pixels with no pixel data after its header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _rejection(data: bytes, **limits: int) -> ImageLoadError:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape
        with pytest.raises(ImageLoadError) as caught:
            load_image(data, **limits)
    return caught.value


def test_a_decompression_bomb_gets_our_message_not_pillows() -> None:
    error = _rejection(png_header(40_000, 40_000))  # 1.6 GP: far over Pillow's own refusal
    assert error.code is ImageProblem.TOO_LARGE
    assert error.reason == "image too large (1600.0 megapixels; limit is 64.0 megapixels)"
    assert "decompression bomb" not in str(error).lower()


@pytest.mark.parametrize("side", [8_500, 10_000, 20_000])  # 72 MP, 100 MP, 400 MP
def test_every_oversized_image_is_refused_in_the_same_words(side: int) -> None:
    error = _rejection(png_header(side, side))
    megapixels = side * side / 1e6
    assert error.reason == (
        f"image too large ({megapixels:.1f} megapixels; limit is "
        f"{DEFAULT_MAX_PIXELS / 1e6:.1f} megapixels)"
    )


def test_a_raised_limit_is_ours_to_raise_not_pillows() -> None:
    """225 MP is over twice Pillow's default limit; with our limit raised above it the
    header passes, and the (missing) pixel data is what fails."""
    error = _rejection(png_header(15_000, 15_000), max_pixels=300_000_000)
    assert error.code is ImageProblem.CORRUPT_DATA


def test_pillows_global_limit_is_left_as_it_was() -> None:
    before = Image.MAX_IMAGE_PIXELS
    _rejection(png_header(40_000, 40_000))
    _rejection(png_header(15_000, 15_000), max_pixels=300_000_000)
    assert before == Image.MAX_IMAGE_PIXELS
