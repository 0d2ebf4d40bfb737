"""The drift statistics, on plain arrays: PSI of categorical distributions, the two-sample KS
test, and a domain classifier's cross-validated ROC AUC (Evidently's embedding drift test)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

PSI_STABLE = 0.1
"""PSI below this: no meaningful shift (the conventional band)."""
PSI_MODERATE = 0.25
"""PSI from :data:`PSI_STABLE` to this: a moderate shift; above it: a significant one."""
PSI_SMOOTHING = 0.5
"""Pseudo-count added to every category (Jeffreys): an empty bin is not log(0), and a small
window's missing rare class does not dominate the index."""
AUC_FOLDS = 5


def psi_band(value: float) -> str:
    """``stable``, ``moderate`` or ``significant``: the conventional PSI bands."""
    if value < PSI_STABLE:
        return "stable"
    return "moderate" if value <= PSI_MODERATE else "significant"


def smoothed_shares(
    counts: Mapping[str, int], categories: Sequence[str], smoothing: float = PSI_SMOOTHING
) -> NDArray[np.float64]:
    """Shares of ``categories`` in ``counts`` with ``smoothing`` added to every category."""
    values = np.array([counts.get(name, 0) for name in categories], dtype=np.float64) + smoothing
    total = values.sum()
    if total <= 0:
        raise ValueError("no counts and no smoothing: shares are undefined")
    shares: NDArray[np.float64] = values / total
    return shares


def psi(
    expected: Mapping[str, int],
    actual: Mapping[str, int],
    categories: Iterable[str] | None = None,
    smoothing: float = PSI_SMOOTHING,
) -> float:
    """Population stability index ``sum((a - e) * ln(a / e))`` of ``actual`` against
    ``expected`` category counts, over ``categories`` (default: every category of either),
    with ``smoothing`` pseudo-counts. 0 for identical distributions; symmetric in the two."""
    names = sorted(set(expected) | set(actual)) if categories is None else list(categories)
    if not names:
        raise ValueError("PSI needs at least one category")
    e = smoothed_shares(expected, names, smoothing)
    a = smoothed_shares(actual, names, smoothing)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class KsResult:
    """A two-sample KS test: the largest distance between the empirical CDFs, its p-value."""

    statistic: float
    pvalue: float


def ks_test(
    reference: Sequence[float] | NDArray[np.floating],
    current: Sequence[float] | NDArray[np.floating],
) -> KsResult:
    """The two-sided two-sample Kolmogorov-Smirnov test (scipy's; exact for small samples)."""
    from scipy.stats import ks_2samp

    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(current, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("the KS test needs two non-empty samples")
    result = ks_2samp(a, b)
    return KsResult(float(result.statistic), float(result.pvalue))


@dataclass(frozen=True)
class DomainAuc:
    """A domain classifier's cross-validated scores: ``labels`` 0 = reference, 1 = current;
    ``scores`` its out-of-fold probability of "current"; ``auc`` their ROC AUC."""

    auc: float
    labels: NDArray[np.int64]
    scores: NDArray[np.float64]
    folds: int


def domain_auc(
    reference: NDArray[np.floating],
    current: NDArray[np.floating],
    *,
    folds: int = AUC_FOLDS,
    seed: int = 0,
) -> DomainAuc:
    """How well a logistic regression tells ``current`` rows from ``reference`` rows, as the
    ROC AUC of its out-of-fold predictions (stratified ``folds``-fold cross-validation, so
    the score is honest however many dimensions there are): about 0.5 when the two come from
    one distribution (below it for duplicated rows), 1.0 when they are fully separable."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        raise ValueError(
            f"embeddings must be two [N, D] arrays of one D, got {reference.shape} and "
            f"{current.shape}"
        )
    folds = min(folds, len(reference), len(current))
    if folds < 2:
        raise ValueError("the domain classifier needs at least 2 rows on each side")
    features = np.vstack([reference, current]).astype(np.float64)
    labels = np.concatenate([np.zeros(len(reference)), np.ones(len(current))]).astype(np.int64)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probabilities = cross_val_predict(model, features, labels, cv=splitter, method="predict_proba")
    scores = np.asarray(probabilities[:, 1], dtype=np.float64)
    return DomainAuc(float(roc_auc_score(labels, scores)), labels, scores, folds)


def histogram(
    values: Sequence[float] | NDArray[np.floating], bins: int
) -> tuple[list[float], list[int]]:
    """Counts of ``values`` in ``bins`` equal bins over [0, 1] (a probability's range):
    ``(edges, counts)``, the last bin closed."""
    counts, edges = np.histogram(
        np.clip(np.asarray(values, dtype=np.float64), 0, 1), bins=bins, range=(0.0, 1.0)
    )
    return [float(e) for e in edges], [int(c) for c in counts]
