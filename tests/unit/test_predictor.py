"""Predictor: files in order, failures with reasons, top-k, open vocabulary, engine choice."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_har.errors import ClipHarError, ConfigError
from clip_har.inference.inputs import collect_inputs
from clip_har.inference.predictor import PredictOptions, Predictor


def test_files_are_predicted_in_order_with_reasons_for_failures(
    tiny_bundle: Path, mixed_folder: Path
) -> None:
    predictor = Predictor.from_bundle(tiny_bundle, options=PredictOptions(top_k=3, batch_size=2))
    paths = collect_inputs([str(mixed_folder)]).paths
    results = list(predictor.predict_files(paths))
    assert [r.path for r in results] == paths
    failures = {r.path.name: r.error for r in results if r.error}
    assert set(failures) == {"empty.jpg", "truncated.jpg", "notes.jpg", "pixel.png"}
    assert "empty" in failures["empty.jpg"]
    assert "truncated" in failures["truncated.jpg"] or "corrupt" in failures["truncated.jpg"]
    assert "not an image" in failures["notes.jpg"]
    assert "too small" in failures["pixel.png"]
    good = [r.prediction for r in results if r.prediction]
    assert len(good) == 5
    for prediction in good:
        assert len(prediction.top_k) == 3
        scores = [score for _, score in prediction.top_k]
        assert scores == sorted(scores, reverse=True)
        assert prediction.label == prediction.top_k[0][0]
        assert 0.0 < prediction.score <= 1.0


@pytest.mark.parametrize(
    "bad", [{"top_k": 0}, {"batch_size": 0}, {"min_side": 0}, {"max_pixels": -1}]
)
def test_options_below_1_are_a_config_error(bad: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="must be at least 1"):
        PredictOptions(**bad)


def test_batching_does_not_change_results(tiny_bundle: Path, photo_folder: Path) -> None:
    paths = sorted(photo_folder.iterdir())
    one = Predictor.from_bundle(tiny_bundle, options=PredictOptions(batch_size=1))
    many = Predictor.from_bundle(tiny_bundle, options=PredictOptions(batch_size=64))
    for a, b in zip(one.predict_files(paths), many.predict_files(paths), strict=True):
        assert a.prediction is not None and b.prediction is not None
        assert a.prediction.label == b.prediction.label
        assert a.prediction.score == pytest.approx(b.prediction.score, abs=1e-5)


def test_images_of_any_mode_are_accepted(tiny_bundle: Path) -> None:
    predictor = Predictor.from_bundle(tiny_bundle)
    images = [Image.new(mode, (40, 30)) for mode in ("RGB", "L", "RGBA", "P", "CMYK")]
    assert len(predictor.predict_images(images)) == 5


def test_open_vocabulary_from_bundle_and_model(tiny_bundle: Path, photo_folder: Path) -> None:
    labels = ["juggling", "surfing", "waving"]
    predictor = Predictor.from_bundle(tiny_bundle).with_labels(labels)
    assert predictor.class_names == labels
    image = Image.open(next(photo_folder.glob("*.jpg")))
    [prediction] = predictor.predict_images([image])
    assert prediction.label in labels
    assert sum(score for _, score in prediction.top_k) == pytest.approx(1.0, abs=1e-5)

    direct = Predictor.from_model("tiny", labels, "actions")
    [same] = direct.predict_images([image])
    assert same.label == prediction.label
    assert same.score == pytest.approx(prediction.score, abs=1e-6)
    assert "RANDOM WEIGHTS" in direct.model_label


def test_open_vocabulary_needs_a_backbone(tiny_bundle: Path) -> None:
    predictor = Predictor.from_bundle(tiny_bundle)
    predictor.vocabulary = None  # what a non-torch engine looks like
    with pytest.raises(ClipHarError, match="open-vocabulary"):
        predictor.with_labels(["a", "b"])


def test_unknown_engine_format_lists_choices(tiny_bundle: Path) -> None:
    with pytest.raises(ClipHarError, match="available: torch"):
        Predictor.from_bundle(tiny_bundle, format="tflite")


def test_predict_pixels_matches_predict_images(tiny_bundle: Path) -> None:
    predictor = Predictor.from_bundle(tiny_bundle)
    image = Image.fromarray(np.full((50, 70, 3), 128, dtype=np.uint8))
    [from_image] = predictor.predict_images([image])
    [from_pixels] = predictor.predict_pixels(predictor.preprocessor.batch([image]))
    assert from_image == from_pixels


def test_collect_inputs_handles_files_dirs_globs(photo_folder: Path) -> None:
    nested = photo_folder / "sub"
    nested.mkdir()
    (nested / "x.png").write_bytes((photo_folder / "good_1.png").read_bytes())
    (photo_folder / "readme.txt").write_text("skip me")
    collected = collect_inputs(
        [str(photo_folder), str(photo_folder / "*.jpg"), str(photo_folder / "nope*.png")]
    )
    names = [p.name for p in collected.paths]
    assert "x.png" in names and "readme.txt" not in names
    assert len(names) == len(set(collected.paths))  # globs repeat files: kept once
    assert collected.unmatched == [str(photo_folder / "nope*.png")]
