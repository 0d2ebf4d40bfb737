"""Evaluation plots, one PNG each, drawn on matplotlib's Agg canvas (no pyplot global state).

See docs/evaluation.md#plots.
"""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, ImageOps
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from clip_har.imaging import load_image, to_rgb
from clip_har.io import atomic_write, plural

__all__ = [
    "PLOT_FILES",
    "confusion_matrix_plot",
    "example_grid",
    "per_class_f1_plot",
    "pick_examples",
    "reliability_plot",
    "roc_pr_plot",
    "write_plots",
]

logger = logging.getLogger(__name__)

PLOT_FILES = {
    "confusion_matrix": "confusion_matrix.png",
    "per_class_f1": "per_class_f1.png",
    "roc_pr": "roc_pr.png",
    "reliability": "reliability.png",
    "examples": "examples.png",
}
DPI = 110
THUMBNAIL = 192  # px, the longest side of an example thumbnail
GRID_COLUMNS = 6
CORRECT_COLOUR = "#2e8b57"
WRONG_COLOUR = "#c0392b"
BAR_COLOUR = "#4c72b0"


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Save ``figure`` as a PNG at ``path`` atomically."""
    target = Path(path)
    with atomic_write(target) as staging:
        figure.savefig(staging, format="png", dpi=DPI)
    logger.debug("wrote %s", target)
    return target


def _floats(values: Any) -> np.ndarray:
    """A float64 array of a (nested) list; ``None`` becomes NaN."""
    return np.array(values, dtype=np.float64)


def _plain(text: Any) -> str:
    """``text`` with its dollar signs escaped, so matplotlib never reads it as mathtext."""
    return str(text).replace("$", r"\$")


def _confusion(metrics: dict[str, Any], normalized: bool) -> np.ndarray:
    counts = metrics.get("confusion_matrix")
    if not counts:
        raise ValueError("metrics hold no confusion matrix")
    if not normalized:
        return _floats(counts)
    given = metrics.get("confusion_matrix_normalized")
    if given:
        return _floats(given)
    raw = _floats(counts)
    support = raw.sum(axis=1, keepdims=True)
    rates: np.ndarray = np.divide(raw, support, out=np.zeros_like(raw), where=support > 0)
    return rates


def confusion_matrix_plot(
    metrics: dict[str, Any],
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    normalized: bool = True,
) -> Path:
    """The confusion matrix (rows = true class) with every non-zero cell annotated."""
    matrix = _confusion(metrics, normalized)
    n = len(class_names)
    if matrix.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {matrix.shape} for {n} class names")
    side = max(4.5, 0.42 * n + 2.5)
    font = 9 if n <= 20 else 6
    figure = _figure(side + 1.0, side)
    axes = figure.add_subplot()
    top = 1.0 if normalized else max(1.0, float(np.nanmax(matrix)))
    image = axes.imshow(matrix, cmap="Blues", vmin=0.0, vmax=top, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02)
    for (row, column), value in np.ndenumerate(matrix):
        if np.isnan(value) or value == 0:
            continue
        text = f"{value:.2f}" if normalized else f"{int(value)}"
        colour = "white" if value > 0.6 * top else "#222222"
        axes.text(column, row, text, ha="center", va="center", fontsize=font, color=colour)
    ticks = np.arange(n)
    axes.set_xticks(ticks, [_plain(name) for name in class_names], rotation=45, ha="right")
    axes.set_yticks(ticks, [_plain(name) for name in class_names])
    axes.tick_params(labelsize=font)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    kind = "row-normalised (recall on the diagonal)" if normalized else "counts"
    axes.set_title(f"Confusion matrix, {kind}")
    return _save(figure, path)


def per_class_f1_plot(
    metrics: dict[str, Any], class_names: Sequence[str], path: str | os.PathLike[str]
) -> Path:
    """Horizontal F1 bars, best class on top; classes without evaluation images are left out."""
    per_class: dict[str, dict[str, Any]] = metrics.get("per_class") or {}
    absent = set(metrics.get("classes_without_support") or [])
    scored = [
        (_plain(name), float(per_class[name]["f1"]))
        for name in class_names
        if name not in absent and (per_class.get(name) or {}).get("f1") is not None
    ]
    if not scored:
        raise ValueError("no class has an F1 score to plot")
    scored.sort(key=lambda item: item[1])
    figure = _figure(7.5, max(2.5, 0.32 * len(scored) + 1.3))
    axes = figure.add_subplot()
    names, values = zip(*scored, strict=True)
    bars = axes.barh(range(len(names)), values, color=BAR_COLOUR)
    axes.set_yticks(range(len(names)), names)
    axes.bar_label(bars, fmt="%.2f", padding=3, fontsize=8)
    axes.set_xlim(0.0, 1.1)
    axes.set_xlabel("F1")
    macro = (metrics.get("macro") or {}).get("f1")
    if macro is not None:
        axes.axvline(macro, color="#555555", linestyle="--", linewidth=1)
        axes.text(macro, len(names) - 0.4, f" macro {macro:.2f}", fontsize=8, color="#555555")
    title = "F1 per class"
    if absent:
        title += f" ({plural(len(absent), 'class')} without evaluation images left out)"
    axes.set_title(title, fontsize=10)
    return _save(figure, path)


def roc_pr_plot(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
) -> Path:
    """One-vs-rest ROC (left) and precision-recall (right) curves per class.

    A class without positives is skipped in both panels; one without negatives (every
    image is of that class) has no ROC curve.
    """
    labels = np.asarray(y_true)
    scores = np.asarray(probs, dtype=np.float64)
    if scores.shape != (len(labels), len(class_names)):
        raise ValueError(
            f"probs of shape {scores.shape} for {len(labels)} labels and {len(class_names)} classes"
        )
    figure = _figure(12.0, 5.2)
    roc_axes, pr_axes = figure.subplots(1, 2)
    palette = colormaps["tab20"]
    handles: list[Line2D] = []
    legend: list[str] = []
    for index, name in enumerate(class_names):
        positive = labels == index
        if not positive.any():
            continue
        colour = palette(index % palette.N)
        score = scores[:, index]
        precision, recall, _ = precision_recall_curve(positive, score)
        pr_axes.plot(recall, precision, color=colour, linewidth=1.2, drawstyle="steps-post")
        summary = f"AP {average_precision_score(positive, score):.2f}"
        if not positive.all():
            fpr, tpr, _ = roc_curve(positive, score)
            roc_axes.plot(fpr, tpr, color=colour, linewidth=1.2)
            summary = f"AUC {auc(fpr, tpr):.2f}, {summary}"
        handles.append(Line2D([], [], color=colour, linewidth=2))
        legend.append(f"{_plain(name)} ({summary})")
    if not handles:
        raise ValueError("no class has positive examples: no curve to draw")
    roc_axes.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1)
    roc_axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate")
    roc_axes.set(ylabel="true positive rate", title="ROC, one vs rest")
    pr_axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    pr_axes.set_title("Precision-recall, one vs rest")
    figure.legend(handles, legend, loc="outside right center", fontsize=8, frameon=False)
    return _save(figure, path)


def reliability_plot(metrics: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Accuracy per top-1 confidence bin (bars) and its mean confidence (diamonds) against
    the diagonal, with the number of images per bin below."""
    reliability: dict[str, Any] = metrics.get("reliability") or {}
    edges = _floats(reliability.get("edges") or [])
    if edges.size < 2:
        raise ValueError("metrics hold no reliability bins")
    accuracy = _floats(reliability.get("accuracy"))
    confidence = _floats(reliability.get("confidence"))
    counts = _floats(reliability.get("count"))
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = ~np.isnan(accuracy) & ~np.isnan(confidence)
    figure = _figure(6.0, 6.0)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(
        centres[filled],
        accuracy[filled],
        width=widths[filled],
        color=BAR_COLOUR,
        edgecolor="white",
        label="accuracy",
    )
    top.scatter(
        centres[filled],
        confidence[filled],
        marker="D",
        s=22,
        color=WRONG_COLOUR,
        zorder=3,
        label="mean confidence",
    )
    top.plot(
        [0, 1], [0, 1], color="#555555", linestyle="--", linewidth=1, label="perfect calibration"
    )
    top.set(xlim=(float(edges[0]), float(edges[-1])), ylim=(0, 1.02), ylabel="accuracy")
    top.legend(loc="upper left", fontsize=8)
    ece = metrics.get("ece")
    top.set_title("Reliability diagram, ECE " + ("n/a" if ece is None else f"{ece:.3f}"))
    bottom.bar(centres, np.nan_to_num(counts), width=widths, color="#8c8c8c", edgecolor="white")
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="images")
    return _save(figure, path)


def _thumbnail(image: Image.Image | str | os.PathLike[str]) -> Image.Image:
    """A new RGB image fitted into THUMBNAIL px, from ``image`` or the file at that path.

    Files go through the project's own loader (EXIF orientation, size limits) and colour
    conversion; a file that cannot be used raises ``ImageLoadError`` (a ``ValueError``).
    """
    # min_side=1: the image was already accepted for prediction under the settings' guard
    loaded = image if isinstance(image, Image.Image) else load_image(image, min_side=1)
    return ImageOps.contain(to_rgb(loaded), (THUMBNAIL, THUMBNAIL))


def pick_examples(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    paths: Sequence[str | os.PathLike[str]],
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    """Per true class, the most confident correct and the most confident wrong prediction.

    Images that cannot be read are skipped (with a warning) in favour of the next most
    confident one. Each example is ``{image, path, true, predicted, confidence, correct}``
    with ``image`` a loaded thumbnail.
    """
    labels = np.asarray(y_true)
    scores = np.asarray(probs, dtype=np.float64)
    if not len(labels) == len(scores) == len(paths):
        raise ValueError(f"{len(labels)} labels, {len(scores)} rows of probs, {len(paths)} paths")
    predicted = scores.argmax(axis=1)
    confidence = scores.max(axis=1)
    examples: list[dict[str, Any]] = []
    for index, name in enumerate(class_names):
        for correct in (True, False):
            rows = np.flatnonzero((labels == index) & ((predicted == index) == correct))
            for row in rows[np.argsort(-confidence[rows], kind="stable")]:
                try:
                    thumbnail = _thumbnail(paths[row])
                except ValueError as error:  # ImageLoadError or an unusable mode
                    logger.warning("skipping unreadable example %s: %s", paths[row], error)
                    continue
                examples.append(
                    {
                        "image": thumbnail,
                        "path": str(paths[row]),
                        "true": str(name),
                        "predicted": str(class_names[predicted[row]]),
                        "confidence": float(confidence[row]),
                        "correct": correct,
                    }
                )
                break
    return examples


def example_grid(examples: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Thumbnails titled "true → predicted (confidence)" in green (correct) or red frames."""
    if not examples:
        raise ValueError("no examples to draw")
    columns = min(GRID_COLUMNS, len(examples))
    rows = -(-len(examples) // columns)
    figure = _figure(2.3 * columns, 2.3 * rows)
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes, example in zip(grid.flat, examples, strict=False):
        colour = CORRECT_COLOUR if example["correct"] else WRONG_COLOUR
        axes.imshow(np.asarray(_thumbnail(example["image"])))
        axes.set_xticks([])
        axes.set_yticks([])
        for spine in axes.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)
        title = f"{example['true']} → {example['predicted']} ({example['confidence']:.2f})"
        axes.set_title(_plain(textwrap.fill(title, 28)), fontsize=8.5, color=colour)
    for axes in grid.flat[len(examples) :]:
        axes.set_axis_off()
    figure.suptitle("Most confident correct (green) and wrong (red) prediction per class")
    return _save(figure, path)


def write_plots(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    paths: Sequence[str | os.PathLike[str]] | None,
    class_names: Sequence[str],
    metrics: dict[str, Any],
    out_dir: str | os.PathLike[str],
) -> dict[str, Path]:
    """Every plot into ``out_dir`` under the names of :data:`PLOT_FILES`, keyed like it.

    ``paths`` are the evaluated images (row-aligned with ``y_true``); without them, or
    when none of them can be read, there is no example grid.
    """
    folder = Path(out_dir)
    names = [str(name) for name in class_names]
    written = {
        "confusion_matrix": confusion_matrix_plot(
            metrics, names, folder / PLOT_FILES["confusion_matrix"]
        ),
        "per_class_f1": per_class_f1_plot(metrics, names, folder / PLOT_FILES["per_class_f1"]),
        "roc_pr": roc_pr_plot(y_true, probs, names, folder / PLOT_FILES["roc_pr"]),
        "reliability": reliability_plot(metrics, folder / PLOT_FILES["reliability"]),
    }
    examples = pick_examples(y_true, probs, paths, names) if paths is not None else []
    if examples:
        written["examples"] = example_grid(examples, folder / PLOT_FILES["examples"])
    else:
        logger.warning("no example grid: no readable evaluation images")
    logger.info("wrote %s to %s", plural(len(written), "plot"), folder)
    return written
