"""Contract 5 — engines: ``Engine.predict(pixels) -> probabilities`` for every runtime.

An engine takes preprocessed pixels ``[N, 3, H, W]`` (float32) and returns class
probabilities ``[N, C]``. Engines are created by format name from a bundle: ``torch``
runs the bundle's classifier eagerly; every other format runs an artifact that
``clip-har export`` wrote into the bundle, verified by its sha256 and parity gate
before it is loaded. Runtime libraries are imported only when their format is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from clip_har.errors import ClipHarError
from clip_har.models.backbone import Backbone
from clip_har.models.bundle import Bundle
from clip_har.models.classifier import HARClassifier

ONNX_FORMATS = ("onnx", "onnx-opt", "onnx-int8", "onnx-int8-static", "onnx-fp16")
IMAGE_FORMATS = ("torch", *ONNX_FORMATS, "torchscript", "tensorrt")
TEXT_FORMAT = "text-onnx"


class Engine(Protocol):
    """Anything that turns a batch of pixels into class probabilities."""

    format: str

    def predict(self, pixels: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class EngineOptions:
    """Runtime settings shared by every engine."""

    threads: int | None = None  # intra-op threads; None = the runtime's default (all cores)
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    force: bool = False  # accept exports that failed (or never ran) their parity gate
    # ONNX Runtime providers in priority order, e.g. ("TensorrtExecutionProvider",
    # "CUDAExecutionProvider", "CPUExecutionProvider"); empty = chosen from ``device``
    providers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ClipHarError(f"threads must be at least 1, got {self.threads}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ClipHarError(f"device must be cpu, cuda or cuda:N, got '{self.device}'")


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


# (artifact file, format, options) -> engine; export's parity gate uses these before recording
ArtifactFactory = Callable[[Path, str, EngineOptions], Engine]


def _onnx(path: Path, format: str, options: EngineOptions) -> Engine:
    from clip_har.inference.onnx_engine import OnnxEngine

    return OnnxEngine(
        path,
        format,
        threads=options.threads,
        device=options.device,
        providers=options.providers,
    )


def _torchscript(path: Path, format: str, options: EngineOptions) -> Engine:
    from clip_har.inference.torchscript_engine import TorchScriptEngine

    return TorchScriptEngine(path, threads=options.threads, device=options.device)


def _tensorrt(path: Path, format: str, options: EngineOptions) -> Engine:
    from clip_har.inference.tensorrt_engine import TensorRTEngine

    index = int(options.device.partition(":")[2] or 0)
    return TensorRTEngine(path, device=index)


ARTIFACT_ENGINES: dict[str, ArtifactFactory] = {
    **dict.fromkeys(ONNX_FORMATS, _onnx),
    "torchscript": _torchscript,
    "tensorrt": _tensorrt,
}


def create_engine(
    bundle: Bundle, format: str = "torch", options: EngineOptions | None = None
) -> Engine:
    """The engine for ``format`` over ``bundle``; unknown formats list the known ones."""
    options = options or EngineOptions()
    if format == TorchEngine.format:
        return TorchEngine.from_bundle(bundle, options)
    factory = ARTIFACT_ENGINES.get(format)
    if factory is None:
        raise ClipHarError(
            f"unknown engine format '{format}' (available: {', '.join(IMAGE_FORMATS)})"
        )
    path, _ = bundle.export_file(format, force=options.force)
    return factory(path, format, options)
