"""``clip-har monitor reference``: profile a bundle on reference images (torch)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from clip_har.errors import ClipHarError
from clip_har.inference.predictor import PredictOptions
from clip_har.io import git_commit, plural
from clip_har.monitoring import PROFILE_SCHEMA
from clip_har.monitoring.embed import BundleEmbedder
from clip_har.monitoring.profile import ReferenceProfile, profile_id
from clip_har.monitoring.stats import histogram

logger = logging.getLogger(__name__)


def sample_indices(count: int, limit: int, seed: int = 0) -> np.ndarray:
    """At most ``limit`` of ``range(count)``, drawn without replacement, in order."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def build_reference(
    bundle_dir: Path,
    paths: Sequence[Path],
    *,
    data: dict[str, Any],
    options: PredictOptions | None = None,
    max_embeddings: int = 2000,
    bins: int = 20,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ReferenceProfile, list[tuple[Path, str]]]:
    """Predict and embed ``paths`` with the bundle: the profile (``data`` says where the images
    came from) and the files that could not be used, each with its reason."""
    embedder = BundleEmbedder(bundle_dir, options)
    result = embedder.embed_files(paths, progress)
    unusable = [(paths[index], reason) for index, reason in result.failures]
    if not result.indices:
        raise ClipHarError(
            f"none of the {plural(len(paths), 'reference image')} could be used "
            f"(first: {unusable[0][0]}: {unusable[0][1]})"
            if unusable
            else "no reference images"
        )
    top = result.probabilities.argmax(axis=1)
    labels = [embedder.class_names[i] for i in top]
    confidences = result.probabilities.max(axis=1).astype(np.float32)
    kept = sample_indices(len(result.embeddings), max_embeddings, seed)
    embeddings = result.embeddings[kept]
    edges, counts = histogram(confidences, bins)
    manifest = embedder.bundle.manifest
    info: dict[str, Any] = {
        "schema_version": PROFILE_SCHEMA,
        "id": "",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "bundle": {
            "path": str(bundle_dir.absolute()),
            "name": manifest.name,
            "backbone": manifest.backbone.spec,
            "model_key": embedder.model_key,
            "classes": list(embedder.class_names),
        },
        "data": data,
        "images": len(result.indices),
        "unusable": len(unusable),
        "class_counts": dict(sorted(Counter(labels).items())),
        "confidence_histogram": {"edges": edges, "counts": counts},
        "confidence_mean": float(confidences.mean()),
        "embedding": {
            "dim": int(embeddings.shape[1]),
            "kept": len(embeddings),
            "mean_norm": float(np.linalg.norm(embeddings.mean(axis=0))),
            "cov_trace": float(np.trace(np.atleast_2d(np.cov(embeddings, rowvar=False))))
            if len(embeddings) > 1
            else 0.0,
        },
    }
    info["id"] = profile_id(info)
    logger.info("reference %s: %s", info["id"], plural(len(result.indices), "image"))
    return ReferenceProfile(info, confidences, embeddings.astype(np.float32)), unusable
