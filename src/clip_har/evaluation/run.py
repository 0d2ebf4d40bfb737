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
from clip_har.errors import ClipHarError, EvaluationError
from clip_har.evaluation import BOOTSTRAP_RESAMPLES
from clip_har.evaluation.metrics import EvalArrays, compute_metrics, summary
from clip_har.evaluation.plots import write_plots
from clip_har.evaluation.report import write_report
from clip_har.inference.predictor import PredictOptions, Predictor
from clip_har.io import write_json_atomic, write_text_atomic
from clip_har.tracking import Tracker

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
METRICS_FILE = "metrics.json"  # flat scalars + per-class scores: what `dvc metrics` reads
DETAILS_FILE = "metrics_full.json"  # everything, confusion matrices and reliability included
PREDICTIONS_FILE = "predictions.csv"
PREDICTION_COLUMNS = ("path", "sha256", "label", "predicted", "confidence", "correct", "error")


@dataclass(frozen=True)
class EvaluationOutcome:
    """What an evaluation measured and where it wrote it."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    output: Path
    images_per_second: float
    unreadable: int
    unknown_labels: dict[str, int]


def select_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The labelled rows of ``split`` (every row for ``all`` or an unsplit manifest)."""
    if split != "all" and manifest["split"].notna().any():
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
        logger.warning("%d unlabelled row(s) left out", len(chosen) - len(labelled))
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
    split: str = "test",
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
    read the same images as unusable."""
    rows = select_rows(read_manifest(data), split)
    predictor = _open_predictor(bundle, format, options or PredictOptions())
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
        "bundle": bundle,
        "data": str(data),
        "split": split,
        "format": format,
        "images": len(rows),
        "unreadable": unreadable,
        "unknown_labels": unknown,
        "seconds": round(seconds, 3),
    }
    write_report(metrics, meta, plots, output)
    flat = summary(metrics) | {"unreadable": unreadable}
    per_class = {
        name: {k: v for k, v in scores.items() if k in ("precision", "recall", "f1", "support")}
        for name, scores in metrics["per_class"].items()
    }
    write_json_atomic(output / METRICS_FILE, flat | {"per_class": per_class}, sort_keys=True)
    write_json_atomic(output / DETAILS_FILE, metrics | {"meta": meta}, sort_keys=True)
    write_text_atomic(
        output / PREDICTIONS_FILE, predictions.to_csv(index=False, lineterminator="\n")
    )
    if tracker is not None:
        tracker.log_metrics(flat, step=0)
        tracker.log_artifact(output, name="evaluation")
    rate = len(rows) / seconds if seconds > 0 else float("inf")
    return EvaluationOutcome(metrics, predictions, output, rate, unreadable, unknown)
