"""TorchScript export: the traced image path, loadable with ``torch.jit.load`` alone."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from clip_har.export.onnx import ImageExport, eager_attention
from clip_har.models.classifier import HARClassifier


def export_torchscript(classifier: HARClassifier, path: Path, sample: torch.Tensor) -> None:
    """Trace ``pixels -> (probabilities, embeddings)`` and save it; the batch size stays free
    because CLIP's vision path has no batch-dependent Python branches."""
    module = ImageExport(classifier).eval()
    with (
        eager_attention(classifier.image_encoder.model),
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # tracer warnings; torch.jit's deprecation in 2.13
        traced = torch.jit.trace(module, (sample,), check_trace=False)  # type: ignore[no-untyped-call]
        torch.jit.save(traced, str(path))
