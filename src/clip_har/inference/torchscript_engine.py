"""TorchScript engine: a traced ``pixels -> (probabilities, embeddings)`` module that
needs neither transformers nor the bundle's Python classes to run."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from clip_har.errors import ClipHarError


class TorchScriptEngine:
    """Runs an exported TorchScript archive with ``torch.jit.load``."""

    format = "torchscript"

    def __init__(self, path: Path, *, threads: int | None = None, device: str = "cpu") -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in torch 2.13
                self.module = torch.jit.load(  # type: ignore[no-untyped-call]
                    str(path), map_location=self.device
                ).eval()
        except (RuntimeError, ValueError) as exc:
            raise ClipHarError(f"{path}: not a loadable TorchScript archive: {exc}") from None

    @torch.inference_mode()
    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities [N, C], embeddings [N, D])`` as float32."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
        probs, embeddings = self.module(batch)
        return probs.float().cpu().numpy(), embeddings.float().cpu().numpy()

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.run(pixels)[0]
