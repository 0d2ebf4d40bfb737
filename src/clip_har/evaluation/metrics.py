"""Classification metrics from predicted probabilities, with bootstrap confidence intervals.

Undefined values are ``None``, so the result is strict JSON. See docs/evaluation.md#metrics.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from clip_har.errors import EvaluationError
from clip_har.evaluation import BOOTSTRAP_RESAMPLES
from clip_har.io import noun_form, plural

__all__ = [
    "CONFIDENCE",
    "EvalArrays",
    "bootstrap_indices",
    "check_bootstrap",
    "compute_metrics",
    "percentile_interval",
    "replicate_scores",
    "summary",
]

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95  # of every bootstrap interval
PROB_TOLERANCE = 1e-2  # rows must sum to 1 within this: float16 softmax passes, logits do not
BOOTSTRAP_CELLS = 1 << 22  # resampled indices held in memory at once


@dataclass(frozen=True, eq=False)
class EvalArrays:
    """Labels and predicted probabilities of one model on one evaluation set.

    Validated on construction; ``y_true`` is stored as int64 and ``probs`` as float64.
    """

    y_true: np.ndarray  # int64 [N], class index
    probs: np.ndarray  # float [N, C], rows sum to 1
    class_names: list[str]  # C

    def __post_init__(self) -> None:
        y_true, probs = np.asarray(self.y_true), np.asarray(self.probs)
        names = [str(name) for name in self.class_names]
        _check_shapes(y_true, probs, names)
        if y_true.dtype.kind not in "iu":
            raise EvaluationError(f"y_true must hold integer class indices, not {y_true.dtype}")
        if y_true.min() < 0 or y_true.max() >= len(names):
            raise EvaluationError(
                f"y_true holds class indices outside 0..{len(names) - 1} "
                f"(min {y_true.min()}, max {y_true.max()})"
            )
        if probs.dtype.kind not in "fiu":
            raise EvaluationError(f"probs must be numeric, not {probs.dtype}")
        probs = probs.astype(np.float64)
        _check_probabilities(probs)
        object.__setattr__(self, "y_true", y_true.astype(np.int64))
        object.__setattr__(self, "probs", probs)
        object.__setattr__(self, "class_names", names)

    @cached_property
    def y_pred(self) -> np.ndarray:
        """The top-1 predicted class of every row (ties go to the lower index)."""
        return np.asarray(self.probs.argmax(axis=1), dtype=np.int64)


def _check_shapes(y_true: np.ndarray, probs: np.ndarray, names: list[str]) -> None:
    if y_true.ndim != 1:
        raise EvaluationError(f"y_true must be 1-D [N], got shape {y_true.shape}")
    if probs.ndim != 2:
        raise EvaluationError(f"probs must be 2-D [N, C], got shape {probs.shape}")
    if len(y_true) == 0:
        raise EvaluationError("nothing to evaluate: there are no labelled predictions (N=0)")
    if not names:
        raise EvaluationError("nothing to evaluate: the class list is empty")
    if len(set(names)) != len(names):
        raise EvaluationError("class names must be unique")
    if probs.shape[0] != len(y_true):
        raise EvaluationError(f"{probs.shape[0]} rows of probs for {len(y_true)} labels")
    if probs.shape[1] != len(names):
        raise EvaluationError(f"{probs.shape[1]} columns of probs for {len(names)} class names")


def _check_probabilities(probs: np.ndarray) -> None:
    if not np.isfinite(probs).all():
        raise EvaluationError("probs contain NaN or infinite values")
    worst = float(np.abs(probs.sum(axis=1) - 1.0).max())
    if probs.min() < 0.0 or worst > PROB_TOLERANCE:
        raise EvaluationError(
            f"probs must be probabilities: non-negative rows summing to 1 (worst row is off "
            f"by {worst:.3g}); apply a softmax to logits first"
        )


def check_bootstrap(n_bootstrap: int) -> None:
    """Reject a negative replicate count (0 means: no intervals)."""
    if n_bootstrap < 0:
        raise EvaluationError(f"n_bootstrap must be 0 or more, got {n_bootstrap}")


def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """``n_bootstrap`` resampled index rows, in ``[replicates, n]`` chunks, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    step = max(1, BOOTSTRAP_CELLS // n)
    for start in range(0, n_bootstrap, step):
        yield rng.integers(0, n, size=(min(step, n_bootstrap - start), n))


def replicate_scores(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 (all C labels, ``zero_division=0``) of each row of ``indices``."""
    replicates = indices.shape[0]
    truth, guess = y_true[indices], y_pred[indices]
    offset = (np.arange(replicates, dtype=np.int64) * n_classes)[:, None]
    hit = truth == guess
    cells = replicates * n_classes

    def counts(flat: np.ndarray) -> np.ndarray:
        return np.bincount(flat, minlength=cells).reshape(replicates, n_classes)

    true_positive = counts((offset + truth)[hit])
    denominator = counts((offset + truth).ravel()) + counts((offset + guess).ravel())
    f1 = np.divide(
        2.0 * true_positive,
        denominator,
        out=np.zeros((replicates, n_classes)),
        where=denominator > 0,
    )
    return hit.mean(axis=1), f1.mean(axis=1)


def percentile_interval(samples: np.ndarray) -> list[float]:
    """The central :data:`CONFIDENCE` percentile interval of bootstrap ``samples``."""
    tail = 100.0 * (1.0 - CONFIDENCE) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return [float(low), float(high)]


def _bootstrap_intervals(
    arrays: EvalArrays, n_bootstrap: int, seed: int
) -> tuple[list[float] | None, list[float] | None]:
    """Percentile intervals of accuracy and macro-F1, or None when ``n_bootstrap`` is 0."""
    if n_bootstrap == 0:
        return None, None
    y_pred, n_classes = arrays.y_pred, len(arrays.class_names)
    accuracy, f1 = zip(
        *(
            replicate_scores(arrays.y_true, y_pred, n_classes, indices)
            for indices in bootstrap_indices(len(arrays.y_true), n_bootstrap, seed)
        ),
        strict=True,
    )
    return percentile_interval(np.concatenate(accuracy)), percentile_interval(np.concatenate(f1))


def _top_k(arrays: EvalArrays, top_k: Sequence[int]) -> dict[str, float]:
    """Top-k accuracy per k (capped at the class count); ties rank like ``argmax``."""
    if any(k < 1 for k in top_k):
        raise EvaluationError(f"every top-k must be at least 1, got {list(top_k)}")
    probs, y_true = arrays.probs, arrays.y_true
    truth = probs[np.arange(len(y_true)), y_true][:, None]
    columns = np.arange(probs.shape[1])
    rank = ((probs > truth) | ((probs == truth) & (columns < y_true[:, None]))).sum(axis=1)
    capped = sorted({min(k, probs.shape[1]) for k in top_k})
    return {str(k): float((rank < k).mean()) for k in capped}


def _one_vs_rest(arrays: EvalArrays) -> tuple[list[float | None], list[float | None]]:
    """Per-class ROC-AUC and average precision; None where a class lacks positives or negatives."""
    auc: list[float | None] = []
    precision: list[float | None] = []
    for index in range(len(arrays.class_names)):
        positive = arrays.y_true == index
        if positive.all() or not positive.any():
            auc.append(None)
            precision.append(None)
            continue
        score = arrays.probs[:, index]
        auc.append(float(roc_auc_score(positive, score)))
        precision.append(float(average_precision_score(positive, score)))
    return auc, precision


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


def _calibration(arrays: EvalArrays, bins: int) -> tuple[float, dict[str, list[Any]]]:
    """ECE over ``bins`` equal-width top-1 confidence bins ``(lo, hi]`` and the reliability data."""
    if bins < 1:
        raise EvaluationError(f"bins must be at least 1, got {bins}")
    confidence = arrays.probs.max(axis=1)
    correct = (arrays.y_pred == arrays.y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    filled = count > 0
    mean_confidence = np.divide(
        np.bincount(which, weights=confidence, minlength=bins),
        count,
        out=np.zeros(bins),
        where=filled,
    )
    accuracy = np.divide(
        np.bincount(which, weights=correct, minlength=bins), count, out=np.zeros(bins), where=filled
    )
    ece = float(np.sum(count * np.abs(accuracy - mean_confidence)) / len(confidence))
    reliability = {
        "edges": edges.tolist(),
        "confidence": _where_filled(mean_confidence, filled),
        "accuracy": _where_filled(accuracy, filled),
        "count": count.tolist(),
    }
    return ece, reliability


def _where_filled(values: np.ndarray, filled: np.ndarray) -> list[float | None]:
    return [float(value) if full else None for value, full in zip(values, filled, strict=True)]


def _confusion(arrays: EvalArrays) -> tuple[np.ndarray, np.ndarray]:
    """Counts (rows = true class) and the row-normalised matrix; empty rows stay zero."""
    labels = np.arange(len(arrays.class_names))
    counts = confusion_matrix(arrays.y_true, arrays.y_pred, labels=labels)
    support = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(
        counts, support, out=np.zeros(counts.shape, dtype=np.float64), where=support > 0
    )
    return counts, normalized


def _balanced_accuracy(arrays: EvalArrays) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition)."""
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": reported instead
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(arrays.y_true, arrays.y_pred))


def compute_metrics(
    arrays: EvalArrays,
    *,
    top_k: Sequence[int] = (1, 3, 5),
    n_bootstrap: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    bins: int = 15,
) -> dict[str, Any]:
    """Every metric of one evaluation as a JSON-ready dict (see the module docstring).

    ``n_bootstrap`` replicates (seeded by ``seed``; 0 skips them) give the 95% percentile
    intervals of accuracy and macro-F1; ``bins`` equal-width bins give ECE and reliability.
    """
    check_bootstrap(n_bootstrap)
    names, y_true, y_pred = arrays.class_names, arrays.y_true, arrays.y_pred
    labels = np.arange(len(names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    macro = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    weighted = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="weighted", zero_division=0
    )
    auc, average_precision = _one_vs_rest(arrays)
    counts, normalized = _confusion(arrays)
    ece, reliability = _calibration(arrays, bins)
    accuracy_ci, f1_ci = _bootstrap_intervals(arrays, n_bootstrap, seed)
    predicted = np.bincount(y_pred, minlength=len(names))
    without_support = [name for name, n in zip(names, support, strict=True) if n == 0]
    predicted_absent = [
        name for name, n, p in zip(names, support, predicted, strict=True) if n == 0 and p > 0
    ]
    if without_support:
        logger.warning(
            "no evaluation images of %s: %s",
            noun_form(len(without_support), "class"),
            ", ".join(without_support),
        )
    if predicted_absent:
        logger.warning("predicted but absent from the labels: %s", ", ".join(predicted_absent))
    metrics: dict[str, Any] = {
        "n_evaluated": len(y_true),
        "class_names": list(names),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "accuracy_ci": accuracy_ci,
        "top_k_accuracy": _top_k(arrays, top_k),
        "balanced_accuracy": _balanced_accuracy(arrays),
        "macro": {"precision": float(macro[0]), "recall": float(macro[1]), "f1": float(macro[2])},
        "weighted": {
            "precision": float(weighted[0]),
            "recall": float(weighted[1]),
            "f1": float(weighted[2]),
        },
        "f1_macro_ci": f1_ci,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "roc_auc": auc[i],
                "average_precision": average_precision[i],
            }
            for i, name in enumerate(names)
        },
        "roc_auc_macro": _mean_defined(auc),
        "average_precision_macro": _mean_defined(average_precision),
        "confusion_matrix": counts.tolist(),
        "confusion_matrix_normalized": normalized.tolist(),
        "ece": ece,
        "reliability": reliability,
        "classes_without_support": without_support,
        "predicted_but_absent": predicted_absent,
        "auc_undefined_for": [
            name for name, value in zip(names, auc, strict=True) if value is None
        ],
        "n_bootstrap": n_bootstrap,
        "seed": seed,
    }
    logger.info(
        "evaluated %s over %d classes: accuracy %.4f, macro-F1 %.4f, ECE %.4f",
        plural(len(y_true), "image"),
        len(names),
        metrics["accuracy"],
        metrics["macro"]["f1"],
        ece,
    )
    return metrics


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat scalars of a :func:`compute_metrics` result for DVC/MLflow; undefined ones left out."""
    flat: dict[str, float | None] = {
        "n_evaluated": metrics["n_evaluated"],
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "f1_macro": metrics["macro"]["f1"],
        "precision_macro": metrics["macro"]["precision"],
        "recall_macro": metrics["macro"]["recall"],
        "f1_weighted": metrics["weighted"]["f1"],
        "precision_weighted": metrics["weighted"]["precision"],
        "recall_weighted": metrics["weighted"]["recall"],
        "roc_auc_macro": metrics["roc_auc_macro"],
        "average_precision_macro": metrics["average_precision_macro"],
        "ece": metrics["ece"],
    }
    for name, key in (("accuracy", "accuracy_ci"), ("f1_macro", "f1_macro_ci")):
        if metrics[key] is not None:
            flat[f"{name}_ci_low"], flat[f"{name}_ci_high"] = metrics[key]
    for k, value in metrics["top_k_accuracy"].items():
        flat[f"top_k_accuracy_{k}"] = value
    return {key: value for key, value in flat.items() if value is not None}
