"""Colour: any PIL mode to RGB, as ``transformers`` converts it (with two fixes)."""

from __future__ import annotations

import numpy as np
from PIL import Image

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """16-bit grey (``I;16*``, or ``I`` holding 16-bit values) to 8-bit: round(v * 255 / 65535).

    Pillow's own conversion clips every value above 255 to white, which is wrong for
    real 16-bit images. A 16-bit transparency key becomes an alpha channel.
    """
    values = np.asarray(image).astype(np.int64, copy=False)
    values = np.clip(values, 0, 65535)
    grey = ((values + 128) // 257).astype(np.uint8)  # == round(v / 257); v / 257 never ties
    luminance = Image.fromarray(np.ascontiguousarray(grey))
    key = image.info.get("transparency")
    if isinstance(key, int):
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
        return Image.merge("LA", (luminance, Image.fromarray(alpha)))
    return luminance


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of ``image``: transparency composited over white, like transformers.

    Matches ``transformers.image_transforms.convert_to_rgb`` for every 8-bit mode,
    with two deliberate differences: 16-bit grey is scaled (not clipped) to 8 bits,
    and the ``A`` band of ``LAB`` is not mistaken for alpha.
    """
    mode = image.mode
    transparency = image.info.get("transparency")
    if mode == "RGB" and transparency is None:
        return image
    if mode in _SIXTEEN_BIT_MODES:
        return to_rgb(_sixteen_bit_to_l(image))
    try:
        if mode in _ALPHA_MODES or transparency is not None:
            rgba = image.convert("RGBA") if mode != "La" else image.convert("LA").convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"cannot convert an image of mode {mode!r} to RGB: {exc}") from exc


# --------------------------------------------------------------------------- transform
