"""Contract 5 — engines: ``Engine.predict(pixels) -> probabilities`` for every runtime.

:func:`create_engine` is the one entry point. See docs/inference.md#engines.
"""

from __future__ import annotations

import numpy as np
import torch

from clip_har.errors import ClipHarError
from clip_har.inference.formats import (
    REFERENCE_FORMAT,
    Engine,
    EngineOptions,
    engine_formats,
    get_format,
)
from clip_har.models.backbone import Backbone
from clip_har.models.bundle import Bundle
from clip_har.models.classifier import HARClassifier

__all__ = ["Engine", "EngineOptions", "TorchEngine", "create_engine"]


class TorchEngine:
    """Eager PyTorch on the CPU (or a given device)."""

    format = REFERENCE_FORMAT

    def __init__(
        self, classifier: HARClassifier, backbone: Backbone | None = None, device: str = "cpu"
    ) -> None:
        self.classifier = classifier.to(device).eval()
        self.backbone = backbone  # kept so open-vocabulary heads can reuse the text encoder
        self.device = torch.device(device)

    @classmethod
    def from_bundle(cls, bundle: Bundle, options: EngineOptions | None = None) -> TorchEngine:
        options = options or EngineOptions()
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        backbone = bundle.load_backbone()
        return cls(bundle.load_classifier(backbone), backbone, options.device)

    @torch.inference_mode()
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
        probs: np.ndarray = self.classifier(batch).softmax(dim=-1).float().cpu().numpy()
        return probs


def create_engine(
    bundle: Bundle, format: str = REFERENCE_FORMAT, options: EngineOptions | None = None
) -> Engine:
    """The engine for ``format`` over ``bundle``; unknown formats list the known ones."""
    options = options or EngineOptions()
    if format == REFERENCE_FORMAT:
        return TorchEngine.from_bundle(bundle, options)
    factory = get_format(format).engine if format in engine_formats() else None
    if factory is None:
        raise ClipHarError(
            f"unknown engine format '{format}' (available: {', '.join(engine_formats())})"
        )
    path, _ = bundle.export_file(format, force=options.force)
    return factory(path, format, options)
