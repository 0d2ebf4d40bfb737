"""Every registered strategy learns a synthetic, learnable task on the ``tiny`` backbone,
writes a bundle that reproduces its accuracy, and reuses cached embeddings across runs."""

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
from clip_har.errors import ConfigError, RegistryError
from clip_har.imaging import Preprocessor
from clip_har.models.bundle import open_bundle
from clip_har.training.finetune import image_accuracy
from clip_har.training.run import TrainOutcome, run_training
from clip_har.training.strategies import STRATEGIES, register_strategy

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


@pytest.fixture(scope="module")
def warm_cache(
    shapes_split: Path, clip_har_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One run that fills the embedding cache, so that every strategy after it reuses it."""
    outcome = _train(clip_har_cache, shapes_split, tmp_path_factory.mktemp("warm"), "zero-shot")
    assert outcome.embedding.skipped == 0


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_registered_strategy_learns_and_its_bundle_reproduces_it(
    strategy: str, shapes_split: Path, clip_har_cache: Path, warm_cache: None, tmp_path: Path
) -> None:
    outcome = _train(clip_har_cache, shapes_split, tmp_path, strategy)
    assert outcome.embedding.encoded == 0, f"{strategy} re-encoded images"
    assert outcome.embedding.reused == PER_CLASS * len(SHAPES)
    if strategy == "zero-shot":  # learns nothing: it is the baseline every run reports
        assert outcome.result.val_accuracy == outcome.zero_shot_accuracy
    else:  # chance is 25 %
        assert outcome.result.val_accuracy >= 0.8, outcome.result.val_accuracy
    bundle = open_bundle(outcome.bundle.directory)
    assert bundle.manifest.metrics["val_accuracy"] == pytest.approx(outcome.result.val_accuracy)
    assert bundle.class_names == sorted(SHAPES)
    if not STRATEGIES[strategy].end_to_end:
        assert bundle.manifest.encoder is None
        return
    assert bundle.manifest.encoder is not None  # the bundle carries the tuned encoder
    backbone = bundle.load_backbone()
    classifier = bundle.load_classifier(backbone)
    val = read_manifest(shapes_split)
    dataset = ManifestDataset(
        val[val["split"] == "val"], Preprocessor(backbone.image_config), bundle.class_names
    )
    assert image_accuracy(classifier, dataset, 32) == pytest.approx(outcome.result.val_accuracy)


def test_an_unknown_strategy_names_the_setting_and_every_registered_strategy(
    clip_har_cache: Path, tmp_path: Path
) -> None:
    settings = _settings(clip_har_cache, "magic")
    with pytest.raises(ConfigError, match=r"train\.strategy") as error:
        run_training(settings, tmp_path / "split", tmp_path / "bundle")  # before any work
    assert all(name in str(error.value) for name in STRATEGIES)


def test_a_strategy_name_cannot_be_registered_twice() -> None:
    original = STRATEGIES["linear-probe"]
    with pytest.raises(RegistryError, match="'linear-probe' is already registered"):
        register_strategy("linear-probe", summary="an impostor")(original.fit)
    assert STRATEGIES["linear-probe"] is original
