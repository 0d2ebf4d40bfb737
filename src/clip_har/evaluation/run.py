"""Evaluate a bundle on a manifest: predictions, metrics, plots, reports, tracking.

``clip-har evaluate`` and the DVC ``evaluate`` stage call :func:`evaluate`.
See docs/evaluation.md#running-an-evaluation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clip_har.data.manifest import read_manifest
from clip_har.errors import ClipHarError, EvaluationError, UsageError
from clip_har.evaluation import (  # the file names live there, for readers without torch
    BOOTSTRAP_RESAMPLES,
    DETAILS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
)
from clip_har.evaluation.metrics import EvalArrays, compute_metrics, summary
from clip_har.evaluation.plots import write_plots
from clip_har.evaluation.provenance import EvaluationSource
from clip_har.evaluation.report import write_report
from clip_har.inference.predictor import PredictOptions, Predictor
from clip_har.io import plural, write_json_atomic, write_text_atomic
from clip_har.models.bundle import open_bundle
from clip_har.tracking import Tracker

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
PREDICTION_COLUMNS = ("path", "sha256", "label", "predicted", "confidence", "correct", "error")
DEFAULT_SPLIT = "test"  # evaluated when none is named and the manifest has splits
ALL_SPLITS = "all"  # --split all: every row


@dataclass(frozen=True)
class EvaluationOutcome:
    """What an evaluation measured and where it wrote it."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    output: Path
    images_per_second: float
    unreadable: int
    unknown_labels: dict[str, int]
    source: EvaluationSource


def resolve_split(manifest: pd.DataFrame, requested: str | None, data: Path) -> str | None:
    """The split to evaluate, None for every row.

    Without ``requested``: :data:`DEFAULT_SPLIT` when the manifest has splits, else every
    row. ``all`` is every row. Naming another split of a manifest without splits is a usage
    error: it has no rows of that split.
    """
    has_splits = bool(manifest["split"].notna().any())
    if requested is None:
        return DEFAULT_SPLIT if has_splits else None
    if requested == ALL_SPLITS:
        return None
    if not has_splits:
        raise UsageError(
            f"--split {requested}: {data} has no split column, so it has no '{requested}' "
            f"rows; split it first (`clip-har data split {data} -o DIR`), or leave out "
            "--split to evaluate every row"
        )
    return requested


def select_rows(manifest: pd.DataFrame, split: str | None) -> pd.DataFrame:
    """The labelled rows of ``split`` (every row when None, see :func:`resolve_split`)."""
    if split is not None:
        chosen = manifest[manifest["split"].eq(split).fillna(False)]
        if chosen.empty:
            present = ", ".join(sorted(manifest["split"].dropna().unique()))
            raise ClipHarError(
                f"no rows in split '{split}' (splits present: {present}; or --split all)"
            )
    else:
        chosen = manifest
    labelled = chosen[chosen["label"].notna()]
    if labelled.empty:
        raise ClipHarError("no labelled rows to evaluate: evaluation needs true labels")
    if len(labelled) < len(chosen):
        logger.warning("%s left out", plural(len(chosen) - len(labelled), "unlabelled row"))
    return labelled.reset_index(drop=True)


def _open_predictor(bundle: str, format: str, options: PredictOptions) -> Predictor:
    if bundle.startswith("models:"):
        raise ClipHarError(
            f"{bundle}: registry references (models:/NAME@ALIAS) need the model registry, "
            "which is not part of clip-har yet; pass a bundle directory"
        )
    return Predictor.from_bundle(bundle, format, options)


def _predict(
    predictor: Predictor, rows: pd.DataFrame, progress: Progress | None
) -> tuple[pd.DataFrame, np.ndarray]:
    """One prediction row per manifest row and the probability matrix (NaN rows where the
    image could not be read; a model's non-finite output is an error, not "unreadable")."""
    paths = [Path(p) for p in rows["path"]]
    probs = np.full((len(paths), len(predictor.class_names)), np.nan)
    records = []
    for i, result in enumerate(predictor.predict_files(paths)):
        label = rows["label"].iloc[i]
        prediction = result.prediction
        if prediction is not None:
            if not np.isfinite(prediction.probabilities).all():
                raise ClipHarError(f"the model returned non-finite scores for {result.path}")
            probs[i] = prediction.probabilities
        records.append(
            {
                "path": str(result.path),
                "sha256": rows["sha256"].iloc[i],
                "label": label,
                "predicted": prediction.label if prediction else None,
                "confidence": round(prediction.score, 6) if prediction else None,
                "correct": (prediction.label == label) if prediction else None,
                "error": result.error,
            }
        )
        if progress is not None:
            progress(i + 1, len(paths))
    return pd.DataFrame.from_records(records, columns=PREDICTION_COLUMNS), probs


def evaluate(
    bundle: str,
    data: Path,
    output: Path,
    *,
    split: str | None = None,
    format: str = "torch",
    options: PredictOptions | None = None,
    n_bootstrap: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    progress: Progress | None = None,
    tracker: Tracker | None = None,
) -> EvaluationOutcome:
    """Predict every selected row with the bundle and write the full evaluation to ``output``
    (and log its metrics and files to ``tracker``, when given). ``options`` (batch size and
    image guards; default: the settings' defaults) are those ``predict`` uses, so both
    read the same images as unusable. ``split``: see :func:`resolve_split`."""
    manifest = read_manifest(data)
    selected = resolve_split(manifest, split, data)
    rows = select_rows(manifest, selected)
    predictor = _open_predictor(bundle, format, options or PredictOptions())
    source = EvaluationSource.describe(bundle, open_bundle(bundle).manifest, data, selected, format)
    if source.warning:
        logger.warning("%s", source.warning)
    classes = predictor.class_names
    known = rows["label"].isin(classes)
    unknown = rows.loc[~known, "label"].value_counts().to_dict()
    if unknown:
        logger.warning("labels the model does not know, left out: %s", unknown)
    rows = rows[known].reset_index(drop=True)
    if rows.empty:
        raise ClipHarError(f"none of the labels is one of the model's {len(classes)} classes")

    start = time.perf_counter()
    predictions, probs = _predict(predictor, rows, progress)
    seconds = time.perf_counter() - start
    readable = ~np.isnan(probs).any(axis=1)
    if not readable.any():
        raise ClipHarError("no image could be read: see the error column of predictions.csv")
    index = {name: i for i, name in enumerate(classes)}
    y_true = np.array([index[label] for label in rows["label"][readable]], dtype=np.int64)
    probs_ok = probs[readable] / probs[readable].sum(axis=1, keepdims=True)
    try:
        arrays = EvalArrays(y_true=y_true, probs=probs_ok, class_names=list(classes))
    except EvaluationError as exc:
        raise ClipHarError(f"cannot score these predictions: {exc}") from None
    metrics = compute_metrics(arrays, n_bootstrap=n_bootstrap, seed=seed)

    output.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in predictions["path"][readable]]
    plots = write_plots(y_true, probs_ok, paths, list(classes), metrics, output)
    unreadable = int((~readable).sum())
    meta = {
        "images": len(rows),
        "unreadable": unreadable,
        "unknown_labels": unknown,
        "seconds": round(seconds, 3),
    }
    write_report(metrics, meta, plots, output, source=source)
    flat = summary(metrics) | {"unreadable": unreadable}
    per_class = {
        name: {k: v for k, v in scores.items() if k in ("precision", "recall", "f1", "support")}
        for name, scores in metrics["per_class"].items()
    }
    recorded = {"per_class": per_class, "source": source.to_json()}
    write_json_atomic(output / METRICS_FILE, flat | recorded, sort_keys=True)
    write_json_atomic(
        output / DETAILS_FILE,
        metrics | {"meta": meta, "source": source.to_json()},
        sort_keys=True,
    )
    write_text_atomic(
        output / PREDICTIONS_FILE, predictions.to_csv(index=False, lineterminator="\n")
    )
    if tracker is not None:
        tracker.log_metrics(flat, step=0)
        tracker.log_artifact(output, name="evaluation")
    rate = len(rows) / seconds if seconds > 0 else float("inf")
    return EvaluationOutcome(metrics, predictions, output, rate, unreadable, unknown, source)
