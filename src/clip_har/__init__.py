"""CLIP HAR: human action recognition in images with CLIP, zero-shot and fine-tuned.

The public Python API (see docs/python-api.md)::

    import clip_har

    predictor = clip_har.Predictor.from_bundle("bundles/zs", format="onnx")
    for result in predictor.predict_files([Path("photo.jpg")]):
        print(result.path, result.prediction or result.error)

Names are imported on first use, so ``import clip_har`` stays light: it loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from clip_har.version import __version__

if TYPE_CHECKING:
    from clip_har.errors import (
        BundleError,
        ClipHarError,
        ConfigError,
        ImageLoadError,
        ImageProblem,
        ModelUnavailableError,
    )
    from clip_har.imaging import ImageConfig, Preprocessor, load_image
    from clip_har.inference.engines import Engine, EngineOptions, create_engine
    from clip_har.inference.predictor import FileResult, Prediction, PredictOptions, Predictor
    from clip_har.models.backbone import Backbone, load_backbone
    from clip_har.models.bundle import Bundle, open_bundle

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Predictor": "clip_har.inference.predictor",
    "Prediction": "clip_har.inference.predictor",
    "PredictOptions": "clip_har.inference.predictor",
    "FileResult": "clip_har.inference.predictor",
    "Engine": "clip_har.inference.engines",
    "EngineOptions": "clip_har.inference.engines",
    "create_engine": "clip_har.inference.engines",
    "Bundle": "clip_har.models.bundle",
    "open_bundle": "clip_har.models.bundle",
    "Backbone": "clip_har.models.backbone",
    "load_backbone": "clip_har.models.backbone",
    "ImageConfig": "clip_har.imaging",
    "Preprocessor": "clip_har.imaging",
    "load_image": "clip_har.imaging",
    "ClipHarError": "clip_har.errors",
    "BundleError": "clip_har.errors",
    "ConfigError": "clip_har.errors",
    "ImageLoadError": "clip_har.errors",
    "ImageProblem": "clip_har.errors",
    "ModelUnavailableError": "clip_har.errors",
}

__all__ = [
    "Backbone",
    "Bundle",
    "BundleError",
    "ClipHarError",
    "ConfigError",
    "Engine",
    "EngineOptions",
    "FileResult",
    "ImageConfig",
    "ImageLoadError",
    "ImageProblem",
    "ModelUnavailableError",
    "PredictOptions",
    "Prediction",
    "Predictor",
    "Preprocessor",
    "__version__",
    "create_engine",
    "load_backbone",
    "load_image",
    "open_bundle",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clip_har' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
