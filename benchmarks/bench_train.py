"""Training platform: embedding throughput, feature-based fit times, and how much cheaper
a cached-feature fit is than one end-to-end epoch.

    .venv/bin/python benchmarks/bench_train.py [--data DIR] [--e2e-images N]

* embedding: :class:`clip_har.training.features.FeatureStore` (shared preprocessing, batched
  image encoder, safetensors shards) with ``clip-vit-b32-random`` over the HAR dev photos
  into an empty store, images/s;
* fit: every feature-based strategy on 10,000 x 512 cached features, 15 classes (synthetic
  class clusters; the same sizes a real run has), seconds each; the trained ones run 10
  epochs with batch 256, as feature-based heads are usually trained;
* end-to-end epoch: the same :class:`~clip_har.training.trainer.Trainer`, fine-tuning the
  whole ViT-B/32 image encoder + linear head on dev photos through ``ManifestDataset``; timed
  on ``--e2e-images`` images and scaled to the 10,000 images of the feature fit.

``cached_fit_vs_e2e_epoch`` = one end-to-end epoch / the slowest feature-based fit.
Writes ``benchmarks/results/train.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _results import print_ratios, write_results
from torch import nn

from clip_har.data.datasets import ManifestDataset, make_loader
from clip_har.data.sources import import_source
from clip_har.imaging import Preprocessor
from clip_har.models.backbone import Backbone, load_backbone
from clip_har.models.classifier import HARClassifier, TextEmbeddingCache
from clip_har.models.heads import LinearHead
from clip_har.models.prompts import load_class_names, load_prompt_set
from clip_har.training.features import FeatureStore
from clip_har.training.strategies import STRATEGIES, FeatureData, StrategyInputs
from clip_har.training.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "har" / "dev"
MODEL = "clip-vit-b32-random"
FEATURES, CLASSES, VAL = 10_000, 15, 1_500
GOALS = {"cached_fit_vs_e2e_epoch": 50.0}


def synthetic_features(backbone: Backbone, seed: int = 0) -> FeatureData:
    """10k train + 1.5k val unit vectors around 15 random class centres."""
    generator = torch.Generator().manual_seed(seed)
    dim = backbone.embed_dim
    centres = nn.functional.normalize(torch.randn(CLASSES, dim, generator=generator), dim=-1)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, CLASSES, (n,), generator=generator)
        noise = torch.randn(n, dim, generator=generator) * 0.06
        return nn.functional.normalize(centres[labels] + noise, dim=-1), labels

    (train_x, train_y), (val_x, val_y) = draw(FEATURES), draw(VAL)
    return FeatureData(
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        class_names=load_class_names("har15"),
        prompts=load_prompt_set("actions"),
        text_cache=TextEmbeddingCache(backbone),
        logit_scale=backbone.logit_scale,
    )


def embedding_throughput(backbone: Backbone, manifest: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as root:
        store = FeatureStore(Path(root), backbone)
        start = time.perf_counter()
        _, stats = store.embed(manifest, batch_size=32, num_workers=1)
        seconds = time.perf_counter() - start
    return {
        "measure": "embedding",
        "model": MODEL,
        "images": stats.encoded,
        "seconds": round(seconds, 3),
        "images_per_s": round(stats.encoded / seconds, 2),
    }


def fit_times(backbone: Backbone, config: TrainConfig) -> list[dict[str, Any]]:
    data = synthetic_features(backbone)
    data.zero_shot_weights()  # text embeddings are cached once, as in a real run
    rows = []
    for name, strategy in STRATEGIES.items():
        if strategy.end_to_end:  # timed on photos by e2e_epoch
            continue
        start = time.perf_counter()
        result = strategy.fit(StrategyInputs(data, Trainer(config)))
        rows.append(
            {
                "measure": "fit",
                "strategy": name,
                "features": f"{FEATURES}x{backbone.embed_dim}",
                "seconds": round(time.perf_counter() - start, 3),
                "val_accuracy": round(result.val_accuracy, 4),
            }
        )
    return rows


def e2e_epoch(
    backbone: Backbone, manifest: Any, images: int, config: TrainConfig
) -> dict[str, Any]:
    """One epoch (``config.epochs`` is 1) of whole-encoder fine-tuning on ``images`` photos."""
    rows = manifest.iloc[:images].copy()
    classes = sorted(set(rows["label"]))
    dataset = ManifestDataset(rows, Preprocessor(backbone.image_config), classes)
    loader = make_loader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=1)
    head = LinearHead(torch.zeros(len(classes), backbone.embed_dim))
    model = HARClassifier(backbone.image_encoder, head, classes).train()
    start = time.perf_counter()
    Trainer(config).fit(model, loader, lambda _: {"val_accuracy": 0.0})
    seconds = time.perf_counter() - start
    return {
        "measure": "e2e_epoch",
        "model": MODEL,
        "images_timed": len(rows),
        "seconds_timed": round(seconds, 3),
        "seconds_per_image": round(seconds / len(rows), 5),
        "seconds_for_10k": round(seconds / len(rows) * FEATURES, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labels.csv + images/")
    parser.add_argument("--e2e-images", type=int, default=128)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no photos at {args.data}: pass --data DIR (labels.csv + images/)")
        return 2

    torch.manual_seed(0)
    backbone = load_backbone(MODEL)
    manifest = import_source(str(args.data))
    results = [embedding_throughput(backbone, manifest)]
    results += fit_times(backbone, TrainConfig(epochs=10, batch_size=256, lr=1e-3, seed=0))
    e2e = TrainConfig(epochs=1, batch_size=32, lr=1e-5, seed=0)
    results.append(e2e_epoch(backbone, manifest, args.e2e_images, e2e))

    slowest = max(r["seconds"] for r in results if r["measure"] == "fit")
    ratios = {"cached_fit_vs_e2e_epoch": round(results[-1]["seconds_for_10k"] / slowest, 1)}
    notes = (
        "Fit times: feature-based strategies on 10k cached features (trained ones: 10 epochs, "
        "batch 256). The end-to-end epoch (batch 32) fine-tunes the whole image encoder on "
        "real photos with the same Trainer; it is timed on "
        f"{results[-1]['images_timed']} images and scaled linearly to 10k (per-image cost "
        "is constant across an epoch)."
    )
    paths = write_results("train", results, ratios, GOALS, notes)
    for r in results:
        print("  " + ", ".join(f"{k}={v}" for k, v in r.items()))
    print_ratios(ratios, GOALS, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
