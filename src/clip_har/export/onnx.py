"""ONNX export of the image path (pixels -> probabilities + embeddings, head folded in) and of
the text encoder, plus ONNX Runtime's transformer graph optimisation."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clip_har.errors import ClipHarError
from clip_har.inference.signature import IMAGE_INPUT, IMAGE_OUTPUTS, TEXT_INPUTS, TEXT_OUTPUT
from clip_har.models.backbone import Backbone, pooled_output
from clip_har.models.classifier import HARClassifier

log = logging.getLogger(__name__)

MIN_OPSET = 17


class ImageExport(nn.Module):
    """What every exported image artifact computes: ``(probabilities, embeddings)``."""

    def __init__(self, classifier: HARClassifier) -> None:
        super().__init__()
        self.image_encoder = classifier.image_encoder
        self.head = classifier.head

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.image_encoder(pixels)
        return self.head(embeddings).softmax(dim=-1), embeddings


class TextExport(nn.Module):
    """Token ids + attention mask -> L2-normalised text embeddings."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = pooled_output(
            self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        )
        return nn.functional.normalize(features, dim=-1)


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Trace attention as plain MatMul/Softmax, the pattern ONNX Runtime fuses into one
    ``Attention`` op (SDPA traces into a form its optimiser does not recognise)."""
    previous = getattr(model.config, "_attn_implementation", None)
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None or previous in (None, "eager"):
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(previous)


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, **kwargs: Any) -> None:
    """``torch.onnx.export`` with the TorchScript-based exporter (see docs/export.md: its
    graphs are the ones ONNX Runtime's transformer optimiser fuses)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow in HF code
        torch.onnx.export(module, args, str(path), dynamo=False, do_constant_folding=True, **kwargs)


def export_image_onnx(
    classifier: HARClassifier, path: Path, sample: torch.Tensor, opset: int = MIN_OPSET
) -> None:
    """Write the image path as ONNX with a dynamic batch axis, then run ``onnx.checker``."""
    if opset < MIN_OPSET:
        raise ClipHarError(f"ONNX opset must be at least {MIN_OPSET}, got {opset}")
    module = ImageExport(classifier).eval()
    batch = {0: "batch"}
    with eager_attention(classifier.image_encoder.model), torch.no_grad():
        _export(
            module,
            (sample,),
            path,
            input_names=[IMAGE_INPUT],
            output_names=list(IMAGE_OUTPUTS),
            dynamic_axes={IMAGE_INPUT: batch, **dict.fromkeys(IMAGE_OUTPUTS, batch)},
            opset_version=opset,
        )
    check_onnx(path)


def export_text_onnx(backbone: Backbone, path: Path, opset: int = MIN_OPSET) -> None:
    """Write the text encoder as ONNX with dynamic batch and sequence axes."""
    tokens = backbone.tokenizer(
        ["a photo of a person running.", "eating"], padding=True, return_tensors="pt"
    )
    axes = {0: "batch", 1: "sequence"}
    with eager_attention(backbone.model), torch.no_grad():
        _export(
            TextExport(backbone.model).eval(),
            (tokens["input_ids"], tokens["attention_mask"]),
            path,
            input_names=list(TEXT_INPUTS),
            output_names=[TEXT_OUTPUT],
            dynamic_axes={**dict.fromkeys(TEXT_INPUTS, axes), TEXT_OUTPUT: {0: "batch"}},
            opset_version=opset,
        )
    check_onnx(path)


def check_onnx(path: Path) -> None:
    """``onnx.checker`` on the file (path-based, so models over 2 GB are checked too)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ClipHarError(f"{path}: onnx.checker rejected the export: {exc}") from None


def optimize_onnx(source: Path, target: Path, backbone: Backbone) -> dict[str, int]:
    """ONNX Runtime's transformer optimiser (fused attention, LayerNorm, GELU); returns how
    many of each fused operator it made."""
    from onnxruntime.transformers.optimizer import optimize_model

    vision = getattr(backbone.model.config, "vision_config", backbone.model.config)
    model = optimize_model(
        str(source),
        model_type="clip",
        num_heads=int(vision.num_attention_heads),
        hidden_size=int(vision.hidden_size),
        opt_level=1,
    )
    model.save_model_to_file(str(target))
    fused = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    log.info("graph optimisation fused %s", fused or "nothing")
    return fused
