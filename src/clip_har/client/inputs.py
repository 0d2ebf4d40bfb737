"""What the client sends as an image: a file path, encoded bytes, or a PIL image (sent as PNG)."""

from __future__ import annotations

import io
import mimetypes
from os import PathLike
from pathlib import Path
from typing import Union

from PIL import Image

from clip_har.client.errors import HARInputError

ImageInput = Union[str, "PathLike[str]", bytes, bytearray, memoryview, Image.Image]
"""An image for the client: a path (``str`` or ``Path``), encoded bytes, or a PIL image."""

_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


def _png_bytes(image: Image.Image) -> bytes:
    if image.mode not in _PNG_MODES:  # CMYK, YCbCr, F, ...: PNG cannot hold them
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_image(image: ImageInput, index: int = 0) -> tuple[str, bytes, str]:
    """``(filename, bytes, content type)`` of ``image``; :class:`HARInputError` for a path
    that is not a readable file, a URL, or a value of another type."""
    if isinstance(image, Image.Image):
        return f"image-{index}.png", _png_bytes(image), "image/png"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"image-{index}", bytes(image), "application/octet-stream"
    if isinstance(image, (str, PathLike)):
        text = str(image)
        if text.startswith(("http://", "https://")):
            raise HARInputError(
                f"{text}: the client sends image bytes, never URLs; download the image first"
            )
        path = Path(text)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise HARInputError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise HARInputError(f"{path}: is a folder, not an image file") from None
        except OSError as exc:
            raise HARInputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return path.name, data, content_type
    raise HARInputError(
        f"an image must be a path, bytes or a PIL image, not {type(image).__name__}"
    )
