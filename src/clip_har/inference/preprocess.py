"""The one image preprocessing implementation: load, orient, RGB, resize, centre crop, normalise.

Everything that turns an image into model pixels (training-time evaluation, every
inference engine, the server, the UI) goes through :class:`Preprocessor`. Its output
matches ``transformers.CLIPImageProcessorPil`` (the PIL backend of
``CLIPImageProcessor``) to float rounding: the uint8 pixels after resize and crop
are bit-identical, only the final multiply-add differs in the last float32 bits.

How it stays exact and still runs faster than the reference:

* the resize is Pillow's own fixed-point convolution, reproduced bit for bit by
  :mod:`clip_har.inference.kernels` (same filters, same 22-bit coefficients, same
  uint8 rounding between the passes, same pass order), but computed only for the
  pixels that survive the centre crop and vectorised over contiguous rows.
  Pillow's ``resize(box=...)`` is not used: it takes the box as 32-bit floats,
  which moves the filter taps (2.2% of pixel values changed on the 904 HAR dev
  photos, up to 15 levels). JPEG draft mode and ``reducing_gap`` are excluded for
  the same reason. A probe at first use checks the kernels against the installed
  Pillow and falls back to Pillow itself if they ever disagree.
* no round trips through numpy and back, no float64 intermediates: one uint8 view
  of the cropped image and one fused cast-multiply plus one add write the float32
  result straight into its slot of the batch array.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import PIL
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, model_validator

from clip_har.errors import ClipHarError
from clip_har.inference import kernels

logger = logging.getLogger(__name__)

__all__ = [
    "ImageConfig",
    "ImageLoadError",
    "Preprocessor",
    "load_image",
    "to_rgb",
]

ResizeMode = Literal["shortest_edge", "exact"]
ResampleName = Literal["nearest", "bilinear", "bicubic", "lanczos"]

# Pillow's integer filter codes, as stored in Hugging Face preprocessor configs.
_PIL_CODE_TO_NAME: dict[int, ResampleName] = {
    0: "nearest",
    1: "lanczos",
    2: "bilinear",
    3: "bicubic",
}
_NAME_TO_PIL: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
_PIL_UNSUPPORTED = {4: "box", 5: "hamming"}

_OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HALF = (0.5, 0.5, 0.5)


class ImageConfig(BaseModel, frozen=True):
    """How an image becomes model pixels (a subset of ``CLIPImageProcessor`` settings).

    ``size`` is ``(edge, edge)`` for ``shortest_edge`` (the target length of the
    shorter side) and ``(height, width)`` for ``exact``; ``crop_size`` is
    ``(height, width)`` of the centre crop, or ``None`` for no crop.
    """

    resize_mode: ResizeMode
    size: tuple[int, int]
    crop_size: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: ResampleName
    rescale_factor: float = 1 / 255

    @model_validator(mode="after")
    def _check(self) -> ImageConfig:
        if min(self.size) < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if self.crop_size is not None and min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        if self.resize_mode == "shortest_edge":
            if self.size[0] != self.size[1]:
                raise ValueError(f"shortest_edge resizing takes size=(edge, edge), got {self.size}")
            if self.crop_size is None:
                raise ValueError(
                    "shortest_edge resizing without a centre crop gives a different output "
                    "size for every aspect ratio; set crop_size (or use resize_mode='exact')"
                )
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must be non-zero, got {self.std}")
        if not self.rescale_factor > 0:
            raise ValueError(f"rescale_factor must be positive, got {self.rescale_factor}")
        return self

    @property
    def output_size(self) -> tuple[int, int]:
        """``(height, width)`` of the pixels the preprocessor produces."""
        if self.crop_size is not None:
            return self.crop_size
        return self.size

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> ImageConfig:
        """Parse a Hugging Face ``preprocessor_config.json`` (CLIP, SigLIP and alike)."""
        kind = str(cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or "")
        family = "siglip" if "siglip" in kind.lower() else "clip"
        if kind and "clip" not in kind.lower() and family != "siglip":
            logger.warning("preprocessor type %r is not CLIP or SigLIP; reading it as CLIP", kind)

        if cfg.get("do_resize", True) is False:
            raise ValueError(
                "preprocessor config has do_resize=false: models need a fixed input size, "
                "so a config without resizing is not supported"
            )
        if cfg.get("do_pad"):
            raise ValueError("preprocessor config has do_pad=true, which is not supported")
        if cfg.get("do_convert_rgb") is False:
            logger.info("preprocessor config has do_convert_rgb=false; images are converted anyway")

        default_crop = family == "clip"
        do_crop = bool(cfg.get("do_center_crop", default_crop))
        resize_mode, size = _parse_size(cfg.get("size", 224), family)
        crop_size: tuple[int, int] | None = None
        if do_crop:
            crop_size = _parse_crop(cfg.get("crop_size", 224))

        default_mean, default_std = (
            (_HALF, _HALF) if family == "siglip" else (_OPENAI_CLIP_MEAN, _OPENAI_CLIP_STD)
        )
        if cfg.get("do_normalize", True) is False:
            mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
            std: tuple[float, float, float] = (1.0, 1.0, 1.0)
        else:
            mean = _triple(cfg.get("image_mean", default_mean), "image_mean")
            std = _triple(cfg.get("image_std", default_std), "image_std")
        factor = float(cfg.get("rescale_factor", 1 / 255))
        if cfg.get("do_rescale", True) is False:
            factor = 1.0
        return cls(
            resize_mode=resize_mode,
            size=size,
            crop_size=crop_size,
            mean=mean,
            std=std,
            resample=_parse_resample(cfg.get("resample", 3)),
            rescale_factor=factor,
        )

    def to_hf(self) -> dict[str, Any]:
        """A ``CLIPImageProcessor``-compatible ``preprocessor_config.json`` dict."""
        size: dict[str, int] = (
            {"shortest_edge": self.size[0]}
            if self.resize_mode == "shortest_edge"
            else {"height": self.size[0], "width": self.size[1]}
        )
        out: dict[str, Any] = {
            "image_processor_type": "CLIPImageProcessor",
            "do_convert_rgb": True,
            "do_resize": True,
            "size": size,
            "resample": next(k for k, v in _PIL_CODE_TO_NAME.items() if v == self.resample),
            "do_center_crop": self.crop_size is not None,
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
        }
        if self.crop_size is not None:
            out["crop_size"] = {"height": self.crop_size[0], "width": self.crop_size[1]}
        return out


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def _parse_size(value: Any, family: str) -> tuple[ResizeMode, tuple[int, int]]:
    if isinstance(value, int) and not isinstance(value, bool):
        edge = _positive_int(value, "size")
        # transformers reads an int size as the shortest edge for CLIP processors
        # (default_to_square=False) and as a square for the base class / SigLIP.
        if family == "clip":
            return "shortest_edge", (edge, edge)
        return "exact", (edge, edge)
    if isinstance(value, list | tuple) and len(value) == 2:
        return "exact", (_positive_int(value[0], "size"), _positive_int(value[1], "size"))
    if isinstance(value, Mapping):
        keys = {k for k, v in value.items() if v is not None}
        if keys == {"shortest_edge"}:
            edge = _positive_int(value["shortest_edge"], "size.shortest_edge")
            return "shortest_edge", (edge, edge)
        if keys == {"height", "width"}:
            return "exact", (
                _positive_int(value["height"], "size.height"),
                _positive_int(value["width"], "size.width"),
            )
    raise ValueError(
        f"unsupported preprocessor size {value!r}: expected an int, "
        "{'shortest_edge': N} or {'height': H, 'width': W} "
        "(longest_edge / max_height resizing is not supported)"
    )


def _parse_crop(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        side = _positive_int(value, "crop_size")
        return side, side
    if isinstance(value, list | tuple) and len(value) == 2:
        return _positive_int(value[0], "crop_size"), _positive_int(value[1], "crop_size")
    if isinstance(value, Mapping) and {k for k, v in value.items() if v is not None} == {
        "height",
        "width",
    }:
        return (
            _positive_int(value["height"], "crop_size.height"),
            _positive_int(value["width"], "crop_size.width"),
        )
    raise ValueError(
        f"unsupported crop_size {value!r}: expected an int or {{'height': H, 'width': W}}"
    )


def _parse_resample(value: Any) -> ResampleName:
    if isinstance(value, str) and value.lower() in _NAME_TO_PIL:
        name: ResampleName = _PIL_CODE_TO_NAME[int(_NAME_TO_PIL[value.lower()])]
        return name
    if isinstance(value, int) and not isinstance(value, bool):
        if value in _PIL_CODE_TO_NAME:
            return _PIL_CODE_TO_NAME[value]
        if value in _PIL_UNSUPPORTED:
            raise ValueError(
                f"resample={value} ({_PIL_UNSUPPORTED[value]}) is not supported; "
                "use nearest (0), lanczos (1), bilinear (2) or bicubic (3)"
            )
    raise ValueError(
        f"unsupported resample {value!r}: use nearest (0), lanczos (1), bilinear (2) or bicubic (3)"
    )


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), float(value), float(value)
    if isinstance(value, list | tuple) and len(value) == 3:
        a, b, c = (float(v) for v in value)
        return a, b, c
    raise ValueError(f"{what} must be a number or 3 numbers (one per RGB channel), got {value!r}")


# --------------------------------------------------------------------------- loading


class ImageLoadError(ClipHarError, ValueError):
    """An image cannot be used; ``reason`` says why in words a person understands."""

    def __init__(self, reason: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"cannot load image {where}{reason}")


# Image.open may warn about (or refuse) huge images. The warning filter is process
# global, so it is changed under a lock; only the header parse happens inside it.
_WARNINGS_LOCK = threading.Lock()
# Formats whose decoders re-check the decompression-bomb limit while decoding.
_CHECKS_ON_LOAD = {"GIF", "ICO", "ICNS", "BLP", "DCX", "MIC", "GBR"}


def _read_source(source: str | os.PathLike[str] | bytes | BinaryIO) -> tuple[bytes, str | None]:
    """The raw bytes of ``source`` and a name for messages."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), None
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise ImageLoadError("file not found", name)
        if path.is_dir():
            raise ImageLoadError("is a directory, not an image file", name)
        try:
            return path.read_bytes(), name
        except OSError as exc:
            raise ImageLoadError(f"cannot read file ({exc.strerror or exc})", name) from exc
    read = getattr(source, "read", None)
    if read is None:
        raise ImageLoadError(f"unsupported source type {type(source).__name__}")
    stream_name = getattr(source, "name", None)
    label = stream_name if isinstance(stream_name, str) else None
    try:
        data = read()
    except OSError as exc:
        raise ImageLoadError(f"cannot read stream ({exc})", label) from exc
    if not isinstance(data, bytes | bytearray):
        raise ImageLoadError("stream did not return bytes (open it in binary mode)", label)
    return bytes(data), label


def _too_large(pixels: int, limit: int) -> str:
    return f"image too large ({pixels / 1e6:.1f} megapixels; limit is {limit / 1e6:.1f} megapixels)"


def load_image(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    min_side: int = 16,
    max_pixels: int = 64_000_000,
) -> Image.Image:
    """Open, size-check, fully decode and EXIF-orient an image, in its native mode.

    The size limits are checked from the header before any pixel is decoded. Every
    failure (missing file, directory, empty, not an image, truncated, too small,
    too large, decoder errors) raises :class:`ImageLoadError` with a ``reason``.
    """
    data, name = _read_source(source)
    if not data:
        raise ImageLoadError("empty file (0 bytes)", name)

    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"image too large ({exc})", name) from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError("not an image (cannot identify image file)", name) from exc
    except Exception as exc:  # decoders raise many types on malformed headers
        raise ImageLoadError(f"corrupt image header ({type(exc).__name__}: {exc})", name) from exc

    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(_too_large(width * height, max_pixels), name)
    if min(width, height) < min_side:
        raise ImageLoadError(
            f"image too small ({width}x{height} px; minimum side is {min_side} px)", name
        )

    try:
        if image.format in _CHECKS_ON_LOAD:
            with _WARNINGS_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
        else:
            image.load()
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"image too large ({exc})", name) from exc
    except Exception as exc:  # OSError, SyntaxError, ValueError, EOFError, struct.error, ...
        raise ImageLoadError(
            f"truncated or corrupt image data ({type(exc).__name__}: {exc})", name
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
        raise ImageLoadError(f"cannot apply EXIF orientation ({exc})", name) from exc
    return rotated if rotated is not None else image


# --------------------------------------------------------------------------- colour

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


class Preprocessor:
    """Any-mode PIL image -> normalised float32 ``[3, H, W]``, as an :class:`ImageConfig` says."""

    def __init__(self, config: ImageConfig) -> None:
        self.config = config
        self._resample = _NAME_TO_PIL[config.resample]
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
            whole = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), _NAME_TO_PIL[name]))
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
