"""Compiled preprocessing kernels: Pillow's resampling, bit for bit, and the final normalise.

Compiled with numba on first use and cached on disk. See docs/preprocessing.md#the-resize-kernels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numba
import numpy as np
from numpy.typing import NDArray

PRECISION_BITS = 22  # Pillow: 32 - 8 - 2
_HALF = 1 << (PRECISION_BITS - 1)

Box = tuple[int, int, int, int]  # left, top, right, bottom in the resized image


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


FILTERS: dict[str, tuple[Callable[[float], float], float]] = {
    "bilinear": (_bilinear, 1.0),
    "bicubic": (_bicubic, 2.0),
    "lanczos": (_lanczos, 3.0),
}


@functools.lru_cache(maxsize=4096)
def coefficients(in_size: int, out_size: int, name: str) -> tuple[NDArray[np.int32], ...]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the box ``(0, in_size)``.

    Returns ``bounds [out_size, 2]`` (first source index, tap count) and the integer
    weights ``[out_size, ksize]``.
    """
    filter_fn, support = FILTERS[name]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    ksize = math.ceil(support) * 2 + 1
    bounds = np.zeros((out_size, 2), dtype=np.int32)
    weights = np.zeros((out_size, ksize), dtype=np.int32)
    inverse = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        taps = [filter_fn((x + xmin - center + 0.5) * inverse) for x in range(xmax)]
        total = sum(taps)
        for x, tap in enumerate(taps):
            value = tap / total if total != 0.0 else tap
            weights[xx, x] = int(value * (1 << PRECISION_BITS) + (0.5 if value >= 0 else -0.5))
        bounds[xx] = (xmin, xmax)
    bounds.setflags(write=False)
    weights.setflags(write=False)
    return bounds, weights


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _filter_rows(src, offset, col0, width, bounds, weights, first, count, dst):  # type: ignore[no-untyped-def]
    """``dst[i] = clip8(sum_t w[first+i, t] * src[b0 - offset + t, col0:col0+width])``.

    One output row per iteration, accumulated over whole contiguous source rows.
    """
    acc = np.empty(width, np.int32)
    for i in range(count):
        start = bounds[first + i, 0] - offset
        taps = bounds[first + i, 1]
        acc[:] = _HALF
        for t in range(taps):
            weight = weights[first + i, t]
            row = src[start + t, col0 : col0 + width]
            for m in range(width):
                acc[m] += np.int32(row[m]) * weight
        out = dst[i]
        for m in range(width):
            out[m] = min(max(acc[m] >> PRECISION_BITS, 0), 255)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _transpose(src, row0, rows, col0, cols, dst):  # type: ignore[no-untyped-def]
    """``dst[x, 3y + c] = src[row0 + y, 3(col0 + x) + c]`` for interleaved RGB rows."""
    block = 16
    for yb in range(0, rows, block):
        for xb in range(0, cols, block):
            for y in range(yb, min(yb + block, rows)):
                line = src[row0 + y]
                for x in range(xb, min(xb + block, cols)):
                    s = 3 * (col0 + x)
                    d = dst[x]
                    d[3 * y] = line[s]
                    d[3 * y + 1] = line[s + 1]
                    d[3 * y + 2] = line[s + 2]


def vertical_first(width: int, height: int, new_w: int, new_h: int) -> bool:
    """Whether Pillow runs the vertical pass first (it does when that pass removes more
    than twice the pixels the horizontal one does; verified by the parity tests)."""
    return new_h < height and (height - new_h) > 2 * (width - new_w)


def resize_crop(
    rgb: NDArray[np.uint8], new_size: tuple[int, int], box: Box, name: str
) -> NDArray[np.uint8]:
    """``np.asarray(Image.fromarray(rgb).resize((new_w, new_h), name))[box]`` as ``[h, w, 3]``."""
    height, width = rgb.shape[:2]
    new_h, new_w = new_size
    left, top, right, bottom = box
    crop_w, crop_h = right - left, bottom - top
    flat = rgb.reshape(height, width * 3)
    h_bounds, h_weights = coefficients(width, new_w, name)
    v_bounds, v_weights = coefficients(height, new_h, name)
    resize_x, resize_y = new_w != width, new_h != height

    if not resize_x:  # vertical pass only (or nothing): rows of the original are contiguous
        if not resize_y:
            return rgb[top:bottom, left:right]
        out = np.empty((crop_h, crop_w * 3), np.uint8)
        _filter_rows(flat, 0, 3 * left, 3 * crop_w, v_bounds, v_weights, top, crop_h, out)
        return out.reshape(crop_h, crop_w, 3)

    if resize_y and vertical_first(width, height, new_w, new_h):
        c0 = int(h_bounds[left, 0])
        c1 = int(h_bounds[right - 1, 0] + h_bounds[right - 1, 1])
        rows = np.empty((crop_h, (c1 - c0) * 3), np.uint8)
        _filter_rows(flat, 0, 3 * c0, 3 * (c1 - c0), v_bounds, v_weights, top, crop_h, rows)
        columns = np.empty((c1 - c0, crop_h * 3), np.uint8)
        _transpose(rows, 0, crop_h, 0, c1 - c0, columns)
        filtered = np.empty((crop_w, crop_h * 3), np.uint8)
        _filter_rows(columns, c0, 0, 3 * crop_h, h_bounds, h_weights, left, crop_w, filtered)
        out = np.empty((crop_h, crop_w * 3), np.uint8)
        _transpose(filtered, 0, crop_w, 0, crop_h, out)
        return out.reshape(crop_h, crop_w, 3)

    # horizontal pass first (Pillow's usual order), over the source rows the crop needs
    r0, r1 = top, bottom
    if resize_y:
        r0 = int(v_bounds[top, 0])
        r1 = int(v_bounds[bottom - 1, 0] + v_bounds[bottom - 1, 1])
    columns = np.empty((width, (r1 - r0) * 3), np.uint8)
    _transpose(flat, r0, r1 - r0, 0, width, columns)
    filtered = np.empty((crop_w, (r1 - r0) * 3), np.uint8)
    _filter_rows(columns, 0, 0, 3 * (r1 - r0), h_bounds, h_weights, left, crop_w, filtered)
    rows = np.empty((r1 - r0, crop_w * 3), np.uint8)
    _transpose(filtered, 0, crop_w, 0, r1 - r0, rows)
    if not resize_y:
        return rows.reshape(crop_h, crop_w, 3)
    out = np.empty((crop_h, crop_w * 3), np.uint8)
    _filter_rows(rows, r0, 0, 3 * crop_w, v_bounds, v_weights, top, crop_h, out)
    return out.reshape(crop_h, crop_w, 3)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _normalise(pixels, scale, shift, out):  # type: ignore[no-untyped-def]
    """``out[c, y, x] = float32(pixels[y, x, c]) * scale[c] + shift[c]`` (two float32 roundings,
    exactly as numpy's separate multiply and add)."""
    height, width = pixels.shape[0], pixels.shape[1]
    for c in range(3):
        s = scale[c]
        b = shift[c]
        plane = out[c]
        for y in range(height):
            line = pixels[y]
            target = plane[y]
            for x in range(width):
                target[x] = np.float32(line[x, c]) * s + b


def normalise_into(
    pixels: NDArray[np.uint8],
    scale: NDArray[np.float32],
    shift: NDArray[np.float32],
    out: NDArray[np.float32],
) -> None:
    """Write normalised ``[3, H, W]`` float32 pixels for uint8 ``[H, W, 3]`` into ``out``."""
    _normalise(pixels, scale, shift, out)
