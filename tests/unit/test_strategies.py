"""Every strategy learns a synthetic, learnable task on the ``tiny`` backbone, writes a
bundle that reproduces its accuracy, and reuses cached embeddings across runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clip_har.config import Settings, load_settings
from clip_har.data.datasets import ManifestDataset
from clip_har.data.manifest import read_manifest, write_manifest
from clip_har.data.sources import import_source
from clip_har.data.splits import split_manifest
from clip_har.imaging import Preprocessor
from clip_har.models.bundle import open_bundle
from clip_har.training.finetune import E2E_STRATEGIES, image_accuracy
from clip_har.training.run import TrainOutcome, run_training
from clip_har.training.strategies import FEATURE_STRATEGIES

SHAPES = {  # class -> (colour, shape): four classes, chance is 25 %
    "red_disc": ((220, 30, 30), "ellipse"),
    "green_box": ((30, 200, 60), "rectangle"),
    "blue_bar": ((40, 60, 230), "bar"),
    "yellow_cross": ((235, 215, 30), "cross"),
}
PER_CLASS = 30


def _draw(path: Path, colour: tuple[int, int, int], shape: str, rng: np.random.Generator) -> None:
    size = 64
    grey = int(rng.integers(110, 140))
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    extent = int(rng.integers(34, 50))
    x, y = (int(v) for v in rng.integers(2, size - extent - 2, size=2))
    jitter = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in colour)
    box = (x, y, x + extent, y + extent)
    if shape == "ellipse":
        draw.ellipse(box, fill=jitter)
    elif shape == "rectangle":
        draw.rectangle(box, fill=jitter)
    elif shape == "bar":
        draw.rectangle((x, y + extent // 3, x + extent, y + 2 * extent // 3), fill=jitter)
    else:
        draw.rectangle((x + extent // 3, y, x + 2 * extent // 3, y + extent), fill=jitter)
        draw.rectangle((x, y + extent // 3, x + extent, y + 2 * extent // 3), fill=jitter)
    image.save(path)


@pytest.fixture(scope="module")
def shapes_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A split manifest over 4 x 30 generated photos of coloured shapes."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for label, (colour, shape) in SHAPES.items():
        (root / "photos" / label).mkdir(parents=True)
        for i in range(PER_CLASS):
            _draw(root / "photos" / label / f"{i}.png", colour, shape, rng)
    manifest = import_source(str(root / "photos"), workers=1)
    split = split_manifest(manifest, (0.6, 0.4, 0.0), seed=0, near_distance=0)
    return write_manifest(split.manifest, root / "split").parent


def _settings(cache: Path, strategy: str, model: str = "tiny") -> Settings:
    train = {"strategy": strategy, "epochs": 30, "batch_size": 16, "lr": 0.05, "tracking": "none"}
    overrides = {"cache_dir": str(cache), "model": {"spec": model}, "train": train}
    return load_settings(None, overrides | {"prompts": {"set": "minimal"}})


def _train(cache: Path, split: Path, out: Path, strategy: str, model: str = "tiny") -> TrainOutcome:
    return run_training(_settings(cache, strategy, model), split, out / strategy, overwrite=True)


@pytest.mark.slow
def test_every_trained_strategy_beats_chance_by_a_wide_margin(
    shapes_split: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    first = _train(clip_har_cache, shapes_split, tmp_path, "zero-shot")
    assert first.embedding.encoded > 0
    assert 0.0 <= first.result.val_accuracy <= 1.0
    for strategy in (*FEATURE_STRATEGIES[1:], *E2E_STRATEGIES):
        outcome = _train(clip_har_cache, shapes_split, tmp_path, strategy)
        assert outcome.embedding.encoded == 0, f"{strategy} re-encoded images"
        assert outcome.embedding.reused == PER_CLASS * len(SHAPES)
        assert outcome.result.val_accuracy >= 0.8, (strategy, outcome.result.val_accuracy)
        bundle = open_bundle(outcome.bundle.directory)
        assert bundle.manifest.metrics["val_accuracy"] == pytest.approx(outcome.result.val_accuracy)
        assert bundle.class_names == sorted(SHAPES)
        if strategy in E2E_STRATEGIES:  # the bundle carries the tuned encoder
            assert bundle.manifest.encoder is not None
            backbone = bundle.load_backbone()
            classifier = bundle.load_classifier(backbone)
            val = read_manifest(shapes_split)
            dataset = ManifestDataset(
                val[val["split"] == "val"], Preprocessor(backbone.image_config), bundle.class_names
            )
            assert image_accuracy(classifier, dataset, 32) == pytest.approx(
                outcome.result.val_accuracy
            )
