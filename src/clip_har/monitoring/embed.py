"""Image embeddings and class probabilities of a bundle in one pass (torch): the bundle's own
image encoder, then its head, with the same preprocessing and image guards as ``predict``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from clip_har.errors import BundleError
from clip_har.imaging import ImageLoadError, load_image
from clip_har.inference.predictor import PredictOptions, Predictor
from clip_har.inference.torch_engine import TorchEngine
from clip_har.models.bundle import Bundle, open_bundle

logger = logging.getLogger(__name__)


def model_key(bundle: Bundle) -> str:
    """What makes two bundles embed and predict alike: backbone fingerprint, head and
    fine-tuned encoder hashes (a reference only compares with its own model)."""
    manifest = bundle.manifest
    encoder = manifest.encoder.sha256 if manifest.encoder is not None else None
    return f"{manifest.backbone.fingerprint}|head:{manifest.head.sha256}|encoder:{encoder}"


@dataclass(frozen=True)
class Embedded:
    """The images that could be used: their ``indices`` in the input, L2-normalised
    ``embeddings`` [N, D] and ``probabilities`` [N, C]; ``failures``: (index, reason) of
    the rest."""

    indices: list[int]
    embeddings: NDArray[np.float32]
    probabilities: NDArray[np.float32]
    failures: list[tuple[int, str]]


class BundleEmbedder:
    """A bundle's image encoder and head (torch format)."""

    def __init__(self, directory: Path, options: PredictOptions | None = None) -> None:
        self.bundle = open_bundle(directory)
        self.options = options or PredictOptions()
        predictor = Predictor.from_bundle(directory, "torch", self.options)
        engine = predictor.engine
        if not isinstance(engine, TorchEngine):  # the torch format always gives one
            raise BundleError(f"{directory}: the torch engine did not load")
        self.class_names = predictor.class_names
        self.preprocessor = predictor.preprocessor
        self._engine = engine
        self.model_key = model_key(self.bundle)

    @torch.inference_mode()
    def _run(self, pixels: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        classifier = self._engine.classifier
        batch = torch.from_numpy(pixels).to(self._engine.device)
        embeddings = classifier.image_encoder(batch)
        probabilities = classifier.head(embeddings).float().softmax(dim=-1)
        return (
            embeddings.float().cpu().numpy().astype(np.float32),
            probabilities.cpu().numpy().astype(np.float32),
        )

    def embed_files(
        self, paths: Sequence[Path], progress: Callable[[int, int], None] | None = None
    ) -> Embedded:
        """Embed and classify ``paths`` in batches; unusable files are listed, not fatal."""
        indices: list[int] = []
        embedded: list[NDArray[np.float32]] = []
        probabilities: list[NDArray[np.float32]] = []
        failures: list[tuple[int, str]] = []
        size = self.options.batch_size
        for start in range(0, len(paths), size):
            images: list[Image.Image] = []
            kept: list[int] = []
            for index in range(start, min(start + size, len(paths))):
                try:
                    image = load_image(
                        paths[index],
                        min_side=self.options.min_side,
                        max_pixels=self.options.max_pixels,
                    )
                except ImageLoadError as exc:
                    failures.append((index, exc.reason))
                    continue
                images.append(image)
                kept.append(index)
            if images:
                vectors, probs = self._run(self.preprocessor.batch(images))
                embedded.append(vectors)
                probabilities.append(probs)
                indices.extend(kept)
            if progress is not None:
                progress(min(start + size, len(paths)), len(paths))
        dim = self.bundle.manifest.backbone.embed_dim
        return Embedded(
            indices,
            np.concatenate(embedded) if embedded else np.zeros((0, dim), np.float32),
            np.concatenate(probabilities)
            if probabilities
            else np.zeros((0, len(self.class_names)), np.float32),
            failures,
        )
