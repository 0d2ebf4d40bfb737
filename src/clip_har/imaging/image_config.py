"""How an image becomes model pixels: :class:`ImageConfig`, parsed from Hugging Face configs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ValidationError, model_validator

from clip_har.errors import PreprocessingConfigError

logger = logging.getLogger(__name__)

ResizeMode = Literal["shortest_edge", "exact"]
ResampleName = Literal["nearest", "bilinear", "bicubic", "lanczos"]

# Pillow's integer filter codes, as stored in Hugging Face preprocessor configs.
_PIL_CODE_TO_NAME: dict[int, ResampleName] = {
    0: "nearest",
    1: "lanczos",
    2: "bilinear",
    3: "bicubic",
}
NAME_TO_PIL: dict[str, Image.Resampling] = {
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
        # PreprocessingConfigError is a ValueError: direct construction still raises
        # pydantic's ValidationError, and from_hf reads the field back from it.
        if min(self.size) < 1:
            raise PreprocessingConfigError("size", f"must be positive, got {self.size}")
        if self.crop_size is not None and min(self.crop_size) < 1:
            raise PreprocessingConfigError("crop_size", f"must be positive, got {self.crop_size}")
        if self.resize_mode == "shortest_edge":
            if self.size[0] != self.size[1]:
                raise PreprocessingConfigError(
                    "size", f"shortest_edge resizing takes size=(edge, edge), got {self.size}"
                )
            if self.crop_size is None:
                raise PreprocessingConfigError(
                    "crop_size",
                    "shortest_edge resizing without a centre crop gives a different output "
                    "size for every aspect ratio; set crop_size (or use resize_mode='exact')",
                )
        if any(s == 0 for s in self.std):
            raise PreprocessingConfigError("std", f"must be non-zero, got {self.std}")
        if not self.rescale_factor > 0:
            raise PreprocessingConfigError(
                "rescale_factor", f"must be positive, got {self.rescale_factor}"
            )
        return self

    @property
    def output_size(self) -> tuple[int, int]:
        """``(height, width)`` of the pixels the preprocessor produces."""
        if self.crop_size is not None:
            return self.crop_size
        return self.size

    @classmethod
    def from_hf(cls, cfg: Any) -> ImageConfig:
        """Parse a Hugging Face ``preprocessor_config.json`` (CLIP, SigLIP and alike).

        Raises :class:`PreprocessingConfigError` naming the field that cannot be used; the
        loader that read the file adds its path with :meth:`PreprocessingConfigError.at`.
        """
        if not isinstance(cfg, Mapping):
            raise PreprocessingConfigError(
                None, f"must hold a JSON object, not {type(cfg).__name__}"
            )
        try:
            return cls._from_hf(cfg)
        except ValidationError as exc:
            raise _config_error(exc) from None

    @classmethod
    def _from_hf(cls, cfg: Mapping[str, Any]) -> ImageConfig:
        kind = str(cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or "")
        family = "siglip" if "siglip" in kind.lower() else "clip"
        if kind and "clip" not in kind.lower() and family != "siglip":
            logger.warning("preprocessor type %r is not CLIP or SigLIP; reading it as CLIP", kind)

        if cfg.get("do_resize", True) is False:
            raise PreprocessingConfigError(
                "do_resize",
                "do_resize=false is not supported: models need a fixed input size",
            )
        if cfg.get("do_pad"):
            raise PreprocessingConfigError("do_pad", "do_pad=true is not supported")
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
        factor = _number(cfg.get("rescale_factor", 1 / 255), "rescale_factor")
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


# the ImageConfig fields that from_hf fills from differently named Hugging Face keys
_HF_KEYS = {"mean": "image_mean", "std": "image_std"}


def _config_error(exc: ValidationError) -> PreprocessingConfigError:
    """The first problem of a failed ImageConfig construction, with its Hugging Face key."""
    error = exc.errors()[0]
    original = (error.get("ctx") or {}).get("error")
    if isinstance(original, PreprocessingConfigError):
        field, reason = original.field, original.reason
    else:
        field, reason = ".".join(str(part) for part in error["loc"]) or None, error["msg"]
    return PreprocessingConfigError(_HF_KEYS.get(field or "", field), reason)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PreprocessingConfigError(what, f"must be a number, got {value!r}")
    return float(value)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PreprocessingConfigError(what, f"must be a positive integer, got {value!r}")
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
    raise PreprocessingConfigError(
        "size",
        f"unsupported value {value!r}: expected an int, "
        "{'shortest_edge': N} or {'height': H, 'width': W} "
        "(longest_edge / max_height resizing is not supported)",
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
    raise PreprocessingConfigError(
        "crop_size", f"unsupported value {value!r}: expected an int or {{'height': H, 'width': W}}"
    )


def _parse_resample(value: Any) -> ResampleName:
    if isinstance(value, str) and value.lower() in NAME_TO_PIL:
        name: ResampleName = _PIL_CODE_TO_NAME[int(NAME_TO_PIL[value.lower()])]
        return name
    if isinstance(value, int) and not isinstance(value, bool):
        if value in _PIL_CODE_TO_NAME:
            return _PIL_CODE_TO_NAME[value]
        if value in _PIL_UNSUPPORTED:
            raise PreprocessingConfigError(
                "resample",
                f"{value} ({_PIL_UNSUPPORTED[value]}) is not supported; "
                "use nearest (0), lanczos (1), bilinear (2) or bicubic (3)",
            )
    raise PreprocessingConfigError(
        "resample",
        f"unsupported resample {value!r}: "
        "use nearest (0), lanczos (1), bilinear (2) or bicubic (3)",
    )


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), float(value), float(value)
    if isinstance(value, list | tuple) and len(value) == 3:
        a, b, c = (_number(v, what) for v in value)
        return a, b, c
    raise PreprocessingConfigError(
        what, f"must be a number or 3 numbers (one per RGB channel), got {value!r}"
    )


# --------------------------------------------------------------------------- loading
