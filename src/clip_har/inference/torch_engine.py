"""The reference engine: the bundle's own classifier, run eagerly in PyTorch.

Kept apart from :mod:`clip_har.inference.engines` so that serving an exported bundle
never imports torch: :func:`~clip_har.inference.engines.create_engine` loads this module
only for the ``torch`` format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from clip_har.inference.formats import REFERENCE_FORMAT, EngineOptions

if TYPE_CHECKING:
    from clip_har.models.backbone import Backbone
    from clip_har.models.bundle import Bundle
    from clip_har.models.classifier import HARClassifier


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
