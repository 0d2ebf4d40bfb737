"""The reference engine: the bundle's own classifier, run eagerly in PyTorch.

Kept apart from :mod:`clip_har.inference.engines` so that serving an exported bundle
never imports torch: :func:`~clip_har.inference.engines.create_engine` loads this module
only for the ``torch`` format.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from clip_har.errors import UsageError
from clip_har.inference.formats import REFERENCE_FORMAT, EngineOptions

if TYPE_CHECKING:
    from clip_har.models.backbone import Backbone
    from clip_har.models.bundle import Bundle
    from clip_har.models.classifier import HARClassifier


logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchEngine:
    """Eager PyTorch on the CPU (or a given device), in fp32 or under bf16/fp16 autocast."""

    format = REFERENCE_FORMAT

    def __init__(
        self,
        classifier: HARClassifier,
        backbone: Backbone | None = None,
        device: str = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.classifier = classifier.to(device).eval()
        self.backbone = backbone  # kept so open-vocabulary heads can reuse the text encoder
        self.device = torch.device(device)
        self.precision = precision
        self._autocast_dtype = _autocast_dtype(self.device, precision)

    @classmethod
    def from_bundle(cls, bundle: Bundle, options: EngineOptions | None = None) -> TorchEngine:
        options = options or EngineOptions()
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        backbone = bundle.load_backbone()
        classifier = bundle.load_classifier(backbone)
        return cls(classifier, backbone, options.device, options.precision)

    @torch.inference_mode()
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
        dtype = self._autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            logits = self.classifier(batch)
        probs: np.ndarray = logits.float().softmax(dim=-1).cpu().numpy()
        return probs


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: plain fp32); refuses fp16 on
    a CPU and warns when the CPU computes bf16 without native instructions (slower)."""
    if precision == "fp32":
        return None
    if device.type == "cpu" and precision == "fp16":
        raise UsageError("fp16 runs on a CUDA device; on a CPU use bf16")
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        logger.warning(
            "this CPU has no native bf16 instructions (AVX512-BF16 or AMX): bf16 will be "
            "slower than fp32 here"
        )
    return _DTYPES[precision]
