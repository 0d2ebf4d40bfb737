"""The one image preprocessing implementation: load, orient, RGB, resize, centre crop, normalise.

Training-time evaluation and every inference engine go through :class:`Preprocessor`.
Parity with ``transformers`` and how it stays exact: docs/preprocessing.md#the-preprocessor.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np
import PIL
from numpy.typing import NDArray
from PIL import Image

from clip_har.imaging import kernels
from clip_har.imaging.colour import to_rgb
from clip_har.imaging.image_config import NAME_TO_PIL, ImageConfig

logger = logging.getLogger(__name__)


class Preprocessor:
    """Any-mode PIL image -> normalised float32 ``[3, H, W]``, as an :class:`ImageConfig` says."""

    def __init__(self, config: ImageConfig) -> None:
        self.config = config
        self._resample = NAME_TO_PIL[config.resample]
        self._fast_filter = config.resample if config.resample in kernels.FILTERS else None
        self._out_h, self._out_w = config.output_size
        mean = np.asarray(config.mean, dtype=np.float64)
        std = np.asarray(config.std, dtype=np.float64)
        # y = (x * factor - mean) / std  ==  x * scale + offset
        self._scale = (config.rescale_factor / std).astype(np.float32)
        self._offset = (-mean / std).astype(np.float32)

    @property
    def output_size(self) -> tuple[int, int]:
        """``(height, width)`` of every output."""
        return self._out_h, self._out_w

    def __call__(self, image: Image.Image) -> NDArray[np.float32]:
        """Normalised pixels ``[3, H, W]`` for one image."""
        out = np.empty((3, self._out_h, self._out_w), dtype=np.float32)
        self.into(image, out)
        return out

    def batch(
        self, images: Sequence[Image.Image], *, out: NDArray[np.float32] | None = None
    ) -> NDArray[np.float32]:
        """Normalised pixels ``[N, 3, H, W]`` (contiguous) for a list of images.

        ``out`` (optional) is a C-contiguous float32 array of at least ``N`` rows to
        write into; reusing one across batches saves the page faults of fresh memory.
        The result is then ``out[:N]``.
        """
        shape = (len(images), 3, self._out_h, self._out_w)
        if out is None:
            target = np.empty(shape, dtype=np.float32)
        else:
            if (
                out.dtype != np.float32
                or not out.flags.c_contiguous
                or out.shape[1:] != shape[1:]
                or out.shape[0] < shape[0]
            ):
                raise ValueError(
                    f"out must be a C-contiguous float32 array of shape (>= {shape[0]}, "
                    f"{', '.join(map(str, shape[1:]))}), got {out.dtype} {out.shape}"
                )
            target = out[: shape[0]]
        for i, image in enumerate(images):
            self.into(image, target[i])
        return target

    def resized_uint8(self, image: Image.Image) -> NDArray[np.uint8]:
        """The RGB uint8 ``[H, W, 3]`` pixels after resize and crop, before normalising."""
        return self._resize_crop(to_rgb(image))

    def into(self, image: Image.Image, out: NDArray[np.float32]) -> None:
        """Write normalised ``[3, H, W]`` pixels for ``image`` into ``out`` (no allocation)."""
        self._check_out(out, (self._out_h, self._out_w))  # before the resize, not after
        self.normalise(self.resized_uint8(image), out)

    def normalise(
        self, pixels: NDArray[np.uint8], out: NDArray[np.float32] | None = None
    ) -> NDArray[np.float32]:
        """uint8 ``[H, W, 3]`` pixels (from :meth:`resized_uint8`, possibly augmented) to
        normalised float32 ``[3, H, W]``, written into ``out`` when given; returns it."""
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"pixels must be uint8 [H, W, 3], got {pixels.dtype} {pixels.shape}")
        height, width = pixels.shape[:2]
        if out is None:
            out = np.empty((3, height, width), dtype=np.float32)
        else:
            self._check_out(out, (height, width))
        kernels.normalise_into(pixels, self._scale, self._offset, out)
        return out

    @staticmethod
    def _check_out(out: NDArray[np.float32], size: tuple[int, int]) -> None:
        if out.dtype != np.float32 or out.shape != (3, *size):
            raise ValueError(
                f"out must be float32 of shape (3, {size[0]}, {size[1]}), "
                f"got {out.dtype} {out.shape}"
            )

    def _target(self, width: int, height: int) -> tuple[int, int]:
        """Resized ``(height, width)``, computed exactly as transformers does."""
        if self.config.resize_mode == "exact":
            return self.config.size
        edge = self.config.size[0]
        # transformers.image_transforms.get_resize_output_image_size: int() truncation
        if width <= height:
            return int(edge * height / width), edge
        return edge, int(edge * width / height)

    def _resize_crop(self, rgb: Image.Image) -> NDArray[np.uint8]:
        width, height = rgb.size
        new_h, new_w = self._target(width, height)
        crop_h, crop_w = self.config.crop_size or (new_h, new_w)
        top = (new_h - crop_h) // 2
        left = (new_w - crop_w) // 2
        if top < 0 or left < 0 or self._fast_filter is None or not _fast_path_is_exact():
            return self._resize_then_pad(rgb, new_h, new_w, crop_h, crop_w)
        box = (left, top, left + crop_w, top + crop_h)
        return kernels.resize_crop(np.asarray(rgb), (new_h, new_w), box, self._fast_filter)

    def _resize_then_pad(
        self, rgb: Image.Image, new_h: int, new_w: int, crop_h: int, crop_w: int
    ) -> NDArray[np.uint8]:
        """transformers' resize + centre crop, literally: one resize call, then a crop
        that zero-pads (before normalisation, centred with ceil offsets) where the
        resized image is smaller than the crop."""
        resized: NDArray[np.uint8] = np.asarray(rgb.resize((new_w, new_h), self._resample))
        if crop_h <= new_h and crop_w <= new_w:
            top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
            return resized[top : top + crop_h, left : left + crop_w]
        pad_h, pad_w = max(crop_h, new_h), max(crop_w, new_w)
        canvas = np.zeros((pad_h, pad_w, 3), dtype=np.uint8)
        top_pad = -(-(pad_h - new_h) // 2)
        left_pad = -(-(pad_w - new_w) // 2)
        canvas[top_pad : top_pad + new_h, left_pad : left_pad + new_w] = resized
        top = (new_h - crop_h) // 2 + top_pad
        left = (new_w - crop_w) // 2 + left_pad
        return canvas[max(0, top) : top + crop_h, max(0, left) : left + crop_w]


@functools.cache
def _fast_path_is_exact() -> bool:
    """Check once per process that :func:`kernels.resize_crop` reproduces this Pillow's
    ``resize`` bit for bit (both pass orders, three filters); if a Pillow release changes
    its arithmetic, fall back to Pillow itself (always exact, slower) instead of drifting."""
    rng = np.random.default_rng(0)
    # both passes up (H first), up-x/down-y, tall shrink (V first), the 2x boundary
    probes = [(20, 30, 33, 45), (30, 40, 45, 25), (60, 90, 50, 60), (60, 90, 50, 70)]
    probes += [(60, 90, 50, 69), (90, 60, 50, 40), (40, 200, 30, 120)]
    for width, height, new_w, new_h in probes:
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        box = (new_w // 4, new_h // 4, new_w - new_w // 5, new_h - new_h // 5)
        for name in kernels.FILTERS:
            whole = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), NAME_TO_PIL[name]))
            left, top, right, bottom = box
            fast = kernels.resize_crop(pixels, (new_h, new_w), box, name)
            if not np.array_equal(whole[top:bottom, left:right], fast):
                logger.warning(
                    "Pillow %s resamples differently from clip_har's exact kernels; using "
                    "Pillow's slower resize to keep exact parity",
                    PIL.__version__,
                )
                return False
    return True
