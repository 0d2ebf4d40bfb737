"""Evaluation plots and reports: PNGs that decode, a self-contained escaped page, Markdown."""

from __future__ import annotations

import base64
import copy
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_photo
from PIL import Image

from clip_har.evaluation.metrics import EvalArrays, compute_metrics
from clip_har.evaluation.plots import (
    PLOT_FILES,
    confusion_matrix_plot,
    example_grid,
    pick_examples,
    reliability_plot,
    write_plots,
)
from clip_har.evaluation.provenance import EvaluationSource, training_strategy
from clip_har.evaluation.report import render_html, render_markdown, write_report
from clip_har.models.bundle import EncoderInfo, HeadInfo, open_bundle

HOSTILE = "<script>alert(1)</script>"
CLASSES = ["running", "cycling", HOSTILE, "sleeping"]  # "sleeping" has no images
ROWS = 24
UNREADABLE_ROW = 3  # the most confident correct "running" photo is a broken file
META = {
    "bundle": "outputs/bundle",
    "data": "data/<split>",
    "split": "test",
    "format": "torch",
    "images": ROWS + 1,
    "unreadable": 1,
    "seconds": 1.23456,
}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return probs


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Labels, probabilities, photos, metrics, plots and both reports of a 4-class evaluation."""
    folder = tmp_path_factory.mktemp("evaluation")
    rng = np.random.default_rng(0)
    y_true = np.arange(ROWS) % 3  # classes 0..2; class 3 never occurs
    logits = rng.normal(size=(ROWS, len(CLASSES)))
    logits[np.arange(ROWS), y_true] += 1.5
    logits[UNREADABLE_ROW, 0] = 9.0  # label 0, predicted 0 with the highest confidence
    logits[1, 3] = 9.0  # "sleeping" predicted once though absent
    probs = _softmax(logits)
    paths = [make_photo(folder / f"photo_{i}.png", (96, 72), seed=i) for i in range(ROWS)]
    paths[UNREADABLE_ROW].write_bytes(b"not an image")
    metrics = compute_metrics(EvalArrays(y_true, probs, CLASSES), n_bootstrap=50)
    plots = write_plots(y_true, probs, paths, CLASSES, metrics, folder / "report")
    markdown, page = write_report(metrics, META, plots, folder / "report")
    return {
        "y_true": y_true,
        "probs": probs,
        "paths": paths,
        "metrics": metrics,
        "plots": plots,
        "markdown": markdown,
        "html": page,
    }


def test_write_plots_writes_every_png(evaluation: dict[str, Any]) -> None:
    plots: dict[str, Path] = evaluation["plots"]
    assert set(plots) == set(PLOT_FILES)
    for key, path in plots.items():
        assert path.name == PLOT_FILES[key]
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert min(image.size) > 200
            image.verify()
    leftovers = [p.name for p in plots["examples"].parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no staging files left behind


def test_pick_examples_takes_the_most_confident_readable_ones(
    evaluation: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    y_true, probs = evaluation["y_true"], evaluation["probs"]
    with caplog.at_level(logging.WARNING, logger="clip_har.evaluation.plots"):
        examples = pick_examples(y_true, probs, evaluation["paths"], CLASSES)
    assert "photo_3.png" in caplog.text
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    assert {e["true"] for e in examples} <= set(CLASSES[:3])  # nothing for "sleeping"
    for example in examples:
        index = CLASSES.index(example["true"])
        correct = example["correct"]
        assert (example["predicted"] == example["true"]) == correct
        candidates = [
            row
            for row in np.flatnonzero((y_true == index) & ((predicted == index) == correct))
            if row != UNREADABLE_ROW
        ]
        assert example["confidence"] == pytest.approx(confidence[candidates].max())
        assert isinstance(example["image"], Image.Image)
        assert max(example["image"].size) <= 192
    running_correct = [e for e in examples if e["true"] == "running" and e["correct"]]
    assert len(running_correct) == 1
    assert not running_correct[0]["path"].endswith("photo_3.png")


def test_example_grid_accepts_paths_and_images(tmp_path: Path) -> None:
    photo = make_photo(tmp_path / "a.jpg", (300, 120), seed=5)
    examples = [
        {"image": photo, "true": "a", "predicted": "a", "confidence": 0.9, "correct": True},
        {
            "image": Image.open(photo),
            "true": "costs $5",
            "predicted": "x$y$",
            "confidence": 0.4,
            "correct": False,
        },
    ]
    with Image.open(example_grid(examples, tmp_path / "grid.png")) as grid:
        assert grid.format == "PNG"
    with pytest.raises(ValueError, match="no examples"):
        example_grid([], tmp_path / "empty.png")


def test_write_plots_without_paths_has_no_example_grid(
    evaluation: dict[str, Any], tmp_path: Path
) -> None:
    plots = write_plots(
        evaluation["y_true"], evaluation["probs"], None, CLASSES, evaluation["metrics"], tmp_path
    )
    assert set(plots) == set(PLOT_FILES) - {"examples"}


def test_confusion_matrix_counts_and_shape_check(
    evaluation: dict[str, Any], tmp_path: Path
) -> None:
    metrics = dict(evaluation["metrics"], confusion_matrix_normalized=None)
    for normalized in (True, False):
        path = confusion_matrix_plot(metrics, CLASSES, tmp_path / f"{normalized}.png", normalized)
        with Image.open(path) as image:
            assert image.format == "PNG"
    with pytest.raises(ValueError, match="for 3 class names"):
        confusion_matrix_plot(metrics, CLASSES[:3], tmp_path / "wrong.png")


def test_html_is_self_contained(evaluation: dict[str, Any]) -> None:
    page = evaluation["html"].read_text(encoding="utf-8")
    sources = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(sources) == len(PLOT_FILES) == page.count("<img ")
    for key, source in zip(PLOT_FILES, sources, strict=True):
        assert source.startswith("data:image/png;base64,")
        data = base64.b64decode(source.split(",", 1)[1])
        assert data == evaluation["plots"][key].read_bytes()
    assert "id='confusion-matrix'" in page
    assert "id='examples'" in page
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page


def test_html_escapes_every_name(evaluation: dict[str, Any]) -> None:
    page = evaluation["html"].read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "data/&lt;split&gt;" in page


def test_html_shows_intervals_and_warnings(evaluation: dict[str, Any]) -> None:
    metrics = evaluation["metrics"]
    page = evaluation["html"].read_text(encoding="utf-8")
    low, high = metrics["accuracy_ci"]
    assert f"95% CI [{low:.3f}, {high:.3f}]" in page
    assert "No evaluation images of 1 class: sleeping" in page
    assert "Predicted but absent from the labels: sleeping" in page
    assert "1 image could not be read" in page


def test_markdown_has_tables_warnings_and_links(evaluation: dict[str, Any]) -> None:
    text = evaluation["markdown"].read_text(encoding="utf-8")
    assert "| metric | value | 95% CI |" in text
    assert "| class | precision | recall | F1 | support | ROC AUC | AP |" in text
    accuracy = evaluation["metrics"]["accuracy"]
    assert f"| accuracy | {accuracy:.3f} |" in text
    assert "| sleeping | " in text and "| — | — | 0 |" in text  # no images: recall/F1 undefined
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script" not in text
    assert "sleeping" in text.split("## Warnings", 1)[1].split("##", 1)[0]
    for key, file_name in PLOT_FILES.items():
        assert f"](<{file_name}>)" in text, key
    assert "| seconds | 1.23 |" in text


def test_markdown_links_relative_to_base(tmp_path: Path) -> None:
    plots = {"roc_pr": tmp_path / "plots" / "roc_pr.png"}
    text = render_markdown({}, {}, plots, base=tmp_path)
    assert "![ROC and precision-recall curves](<plots/roc_pr.png>)" in text


def test_undefined_values_render_as_dashes(evaluation: dict[str, Any], tmp_path: Path) -> None:
    metrics = copy.deepcopy(evaluation["metrics"])
    metrics.update(
        accuracy=None,
        accuracy_ci=None,
        f1_macro_ci=[None, None],
        roc_auc_macro=None,
        average_precision_macro=None,
        ece=None,
        top_k_accuracy={"1": None, "3": None},
    )
    metrics["reliability"]["accuracy"] = [None] * len(metrics["reliability"]["accuracy"])
    metrics["per_class"]["running"]["roc_auc"] = float("nan")
    with Image.open(reliability_plot(metrics, tmp_path / "reliability.png")) as image:
        assert image.format == "PNG"
    page = render_html(metrics, {"bundle": None, "split": "val"}, {})
    assert "<b>—</b>accuracy" in page
    assert "<small>" not in page  # no interval card note
    text = render_markdown(metrics, {}, {})
    assert "| accuracy | — |  |" in text
    assert "| top-3 accuracy | — |  |" in text
    assert "## Plots" not in text and "## Run" not in text


def _source(random_weights: bool, split: str | None = "test") -> EvaluationSource:
    return EvaluationSource(
        bundle="bundles/<har>",
        backbone="tiny" if random_weights else "openai/clip-vit-base-patch32",
        random_weights=random_weights,
        strategy="linear-probe",
        data="data/split",
        data_sha256="ab" * 32,
        split=split,
        format="onnx",
    )


def test_reports_head_with_their_source_and_flag_random_weights(
    evaluation: dict[str, Any],
) -> None:
    metrics = evaluation["metrics"]
    for random_weights in (True, False):
        source = _source(random_weights, split=None)
        text = render_markdown(metrics, META, {}, source=source)
        page = render_html(metrics, META, {}, source=source)
        head = text.split("## Summary", 1)[0]
        for expected in (source.backbone, "linear-probe", "data/split", "ab" * 32, "all rows"):
            assert expected in head and expected in page, expected
        assert "bundles/&lt;har&gt;" in head and "bundles/&lt;har&gt;" in page
        assert ("RANDOM WEIGHTS" in head) == random_weights
        assert ("RANDOM WEIGHTS" in page) == random_weights
        assert ("meaningless" in head.split("## Warnings", 1)[-1]) == random_weights
    assert EvaluationSource.from_json(source.to_json()) == source
    assert EvaluationSource.from_json(None) is None  # evaluations made before sources
    assert EvaluationSource.from_json({"bundle": "b"}) is None


def test_strategy_is_read_from_the_bundle_manifest(tiny_bundle: Path) -> None:
    manifest = open_bundle(tiny_bundle).manifest
    assert training_strategy(manifest) == "zero-shot"  # bundle create

    def made(head: str, metrics: dict[str, float], encoder: str | None = None) -> str:
        update: dict[str, Any] = {
            "head": HeadInfo(type=head),
            "metrics": metrics,
            "encoder": None if encoder is None else EncoderInfo(method=encoder, tensors=2),
        }
        return training_strategy(manifest.model_copy(update=update))

    assert made("linear", {"chosen_C": 1.0}) == "linear-probe"
    assert made("linear", {"chosen_wise_alpha": 0.5}) == "zs-init-linear"
    assert made("clip_adapter", {}) == "clip-adapter"
    assert made("tip_adapter", {"chosen_alpha": 1.0}) == "tip-adapter or tip-adapter-f"
    assert made("zero_shot", {}, encoder="lora") == "lora"
    assert made("linear", {}, encoder="partial") == "partial"
