"""Paired comparison of two models on the same images: McNemar's test and bootstrap deltas.

Callers align both prediction sets by image first. See docs/evaluation.md#comparing-two-models.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.stats import binomtest, chi2
from sklearn.metrics import f1_score

from clip_har.errors import EvaluationError
from clip_har.evaluation import BOOTSTRAP_RESAMPLES
from clip_har.evaluation.metrics import (
    EvalArrays,
    bootstrap_indices,
    check_bootstrap,
    percentile_interval,
    replicate_scores,
)
from clip_har.io import plural

__all__ = ["EXACT_BELOW", "compare_predictions", "mcnemar"]

logger = logging.getLogger(__name__)

EXACT_BELOW = 25  # fewer discordant pairs than this: exact binomial test, else chi-square


def mcnemar(b01: int, b10: int) -> dict[str, Any]:
    """McNemar's test on the discordant pair counts.

    Exact two-sided binomial test below :data:`EXACT_BELOW` discordant pairs, otherwise
    chi-square (1 dof) with continuity correction; no discordant pairs gives p = 1.
    ``statistic`` is the chi-square value, None for the exact test.
    """
    discordant = b01 + b10
    if discordant == 0:
        return {"method": "exact", "statistic": None, "p_value": 1.0}
    if discordant < EXACT_BELOW:
        result = binomtest(b01, discordant, 0.5, alternative="two-sided")
        return {"method": "exact", "statistic": None, "p_value": float(result.pvalue)}
    statistic = (abs(b01 - b10) - 1) ** 2 / discordant
    return {
        "method": "chi2",
        "statistic": float(statistic),
        "p_value": float(chi2.sf(statistic, 1)),
    }


def _check_paired(a: EvalArrays, b: EvalArrays) -> None:
    if a.class_names != b.class_names:
        raise EvaluationError("the two prediction sets use different class lists (or orders)")
    if len(a.y_true) != len(b.y_true):
        raise EvaluationError(
            f"the two prediction sets cover {len(a.y_true)} and {len(b.y_true)} images; "
            "align them by image first"
        )
    differ = int(np.sum(a.y_true != b.y_true))
    if differ:
        raise EvaluationError(
            f"the labels of the two prediction sets differ at {plural(differ, 'position')}: "
            "they are not the same images in the same order; align them by image first"
        )


def _macro_f1(arrays: EvalArrays) -> float:
    labels = np.arange(len(arrays.class_names))
    return float(
        f1_score(arrays.y_true, arrays.y_pred, labels=labels, average="macro", zero_division=0)
    )


def _delta(a: float, b: float, samples: list[np.ndarray]) -> dict[str, Any]:
    return {
        "a": a,
        "b": b,
        "delta": b - a,
        "delta_ci": percentile_interval(np.concatenate(samples)) if samples else None,
    }


def compare_predictions(
    a: EvalArrays, b: EvalArrays, *, n_bootstrap: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """McNemar's test on paired correctness plus accuracy and macro-F1 of both and their delta.

    ``b01`` counts images ``a`` gets right and ``b`` wrong, ``b10`` the reverse; ``n`` is the
    number of images. ``delta_ci`` is the 95% paired-bootstrap interval (None when
    ``n_bootstrap`` is 0).
    """
    check_bootstrap(n_bootstrap)
    _check_paired(a, b)
    y_true, pred_a, pred_b = a.y_true, a.y_pred, b.y_pred
    right_a, right_b = pred_a == y_true, pred_b == y_true
    b01 = int(np.sum(right_a & ~right_b))
    b10 = int(np.sum(~right_a & right_b))
    n_classes = len(a.class_names)
    accuracy_deltas: list[np.ndarray] = []
    f1_deltas: list[np.ndarray] = []
    for indices in bootstrap_indices(len(y_true), n_bootstrap, seed):
        accuracy_a, f1_a = replicate_scores(y_true, pred_a, n_classes, indices)
        accuracy_b, f1_b = replicate_scores(y_true, pred_b, n_classes, indices)
        accuracy_deltas.append(accuracy_b - accuracy_a)
        f1_deltas.append(f1_b - f1_a)
    test = mcnemar(b01, b10)
    result: dict[str, Any] = {
        "n": len(y_true),
        "b01": b01,
        "b10": b10,
        **test,
        "accuracy": _delta(float(right_a.mean()), float(right_b.mean()), accuracy_deltas),
        "f1_macro": _delta(_macro_f1(a), _macro_f1(b), f1_deltas),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
    }
    logger.info(
        "compared %d paired images: b01=%d b10=%d, McNemar (%s) p=%.4g, accuracy delta %+.4f",
        len(y_true),
        b01,
        b10,
        test["method"],
        test["p_value"],
        result["accuracy"]["delta"],
    )
    return result
