"""Contract 5 — engines: ``Engine.predict(pixels) -> probabilities`` for every runtime.

An engine takes preprocessed pixels ``[N, 3, H, W]`` (float32) and returns class
probabilities ``[N, C]``. Engines are created by format name from a bundle, so
new runtimes (onnx, torchscript, tensorrt) register here without touching callers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from clip_har.errors import ClipHarError
from clip_har.models.backbone import Backbone
from clip_har.models.bundle import Bundle
from clip_har.models.classifier import HARClassifier


class Engine(Protocol):
    """Anything that turns a batch of pixels into class probabilities."""

    format: str

    def predict(self, pixels: np.ndarray) -> np.ndarray: ...


class TorchEngine:
    """Eager PyTorch on the CPU (or a given device)."""

    format = "torch"

    def __init__(
        self, classifier: HARClassifier, backbone: Backbone | None = None, device: str = "cpu"
    ) -> None:
        self.classifier = classifier.to(device).eval()
        self.backbone = backbone  # kept so open-vocabulary heads can reuse the text encoder
        self.device = torch.device(device)

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> TorchEngine:
        backbone = bundle.load_backbone()
        return cls(bundle.load_classifier(backbone), backbone)

    @torch.inference_mode()
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
        probs: np.ndarray = self.classifier(batch).softmax(dim=-1).cpu().numpy()
        return probs


EngineFactory = Callable[[Bundle], Engine]

ENGINES: dict[str, EngineFactory] = {TorchEngine.format: TorchEngine.from_bundle}


def create_engine(bundle: Bundle, format: str = "torch") -> Engine:
    """The engine for ``format`` over ``bundle``; unknown formats list the known ones."""
    factory = ENGINES.get(format)
    if factory is None:
        raise ClipHarError(f"unknown engine format '{format}' (available: {', '.join(ENGINES)})")
    return factory(bundle)
