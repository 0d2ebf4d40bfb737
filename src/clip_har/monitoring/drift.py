"""Drift of a window of predictions against a reference profile: the three scores, each
held to its threshold from ``params.yaml``'s ``monitor`` section (torch-free)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from clip_har.config import MonitorSettings
from clip_har.monitoring import CLASS_PSI, CONFIDENCE_KS, EMBEDDING_AUC
from clip_har.monitoring.profile import ReferenceProfile
from clip_har.monitoring.stats import DomainAuc, domain_auc, ks_test, psi, psi_band


@dataclass(frozen=True)
class Thresholds:
    """When a score is drift (see :class:`clip_har.config.MonitorSettings`)."""

    psi: float = MonitorSettings().psi_threshold
    ks_statistic: float = MonitorSettings().ks_statistic
    ks_pvalue: float = MonitorSettings().ks_pvalue
    auc: float = MonitorSettings().auc_threshold

    @classmethod
    def from_settings(cls, settings: MonitorSettings) -> Thresholds:
        return cls(
            settings.psi_threshold,
            settings.ks_statistic,
            settings.ks_pvalue,
            settings.auc_threshold,
        )


@dataclass(frozen=True)
class Score:
    """One drift score: ``drifted`` when over ``threshold``; ``detail`` adds what explains it
    (the PSI band, the KS p-value, the folds)."""

    metric: str
    value: float
    threshold: float
    drifted: bool
    samples: int
    detail: dict[str, Any] = field(default_factory=dict)

    def detail_text(self) -> str:
        """``detail`` in words: ``band=significant, pvalue=0.0012``."""
        return ", ".join(
            f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in self.detail.items()
        )


@dataclass(frozen=True)
class DriftResult:
    """The scores of one window; ``skipped`` says why a score was not computed."""

    reference_id: str
    scores: list[Score]
    skipped: dict[str, str]
    class_counts: dict[str, int]
    confidences: NDArray[np.float64] = field(repr=False)
    domain: DomainAuc | None = field(default=None, repr=False)

    @property
    def drifted(self) -> list[Score]:
        return [score for score in self.scores if score.drifted]


def class_drift(profile: ReferenceProfile, labels: Sequence[str], thresholds: Thresholds) -> Score:
    """PSI of the window's predicted classes against the reference's, over the reference's
    classes plus any label the window adds (an answer outside them is drift too)."""
    current = Counter(labels)
    categories = list(profile.info["bundle"].get("classes") or profile.class_counts)
    categories += sorted(set(current) - set(categories))
    value = psi(profile.class_counts, current, categories)
    unknown = sorted(set(current) - set(profile.info["bundle"].get("classes") or []))
    detail: dict[str, Any] = {"band": psi_band(value)}
    if unknown:
        detail["labels_outside_reference"] = unknown[:20]
    return Score(CLASS_PSI, value, thresholds.psi, value > thresholds.psi, len(labels), detail)


def confidence_drift(
    profile: ReferenceProfile, confidences: Sequence[float], thresholds: Thresholds
) -> Score:
    """KS test of the window's top-1 confidences against the reference's: drift when the
    statistic is over its threshold and the p-value under its own (a real, large change)."""
    result = ks_test(profile.confidences, confidences)
    drifted = result.statistic > thresholds.ks_statistic and result.pvalue < thresholds.ks_pvalue
    detail = {"pvalue": result.pvalue, "pvalue_threshold": thresholds.ks_pvalue}
    return Score(
        CONFIDENCE_KS, result.statistic, thresholds.ks_statistic, drifted, len(confidences), detail
    )


def embedding_drift(
    profile: ReferenceProfile,
    embeddings: NDArray[np.floating],
    thresholds: Thresholds,
    seed: int = 0,
) -> tuple[Score, DomainAuc]:
    """The domain classifier's cross-validated ROC AUC between the reference's embedding
    sample and the window's image embeddings."""
    domain = domain_auc(profile.embeddings, np.asarray(embeddings), seed=seed)
    score = Score(
        EMBEDDING_AUC,
        domain.auc,
        thresholds.auc,
        domain.auc > thresholds.auc,
        len(embeddings),
        {"folds": domain.folds, "reference_embeddings": len(profile.embeddings)},
    )
    return score, domain


def compute_drift(
    profile: ReferenceProfile,
    labels: Sequence[str],
    confidences: Sequence[float],
    thresholds: Thresholds,
    *,
    embeddings: NDArray[np.floating] | None = None,
    embedding_note: str | None = None,
    seed: int = 0,
) -> DriftResult:
    """Every score of a window (``labels`` and ``confidences`` of its predictions, and the
    embeddings of its stored images when there are any; else ``embedding_note`` says why)."""
    if len(labels) != len(confidences) or not labels:
        raise ValueError("a window needs one confidence per label, and at least one")
    scores = [
        class_drift(profile, labels, thresholds),
        confidence_drift(profile, confidences, thresholds),
    ]
    skipped: dict[str, str] = {}
    domain = None
    if embeddings is not None and len(embeddings) >= 2 and len(profile.embeddings) >= 2:
        score, domain = embedding_drift(profile, embeddings, thresholds, seed)
        scores.append(score)
    else:
        skipped[EMBEDDING_AUC] = embedding_note or "no embeddings of the window's images"
    return DriftResult(
        reference_id=profile.id,
        scores=scores,
        skipped=skipped,
        class_counts=dict(sorted(Counter(labels).items())),
        confidences=np.asarray(confidences, dtype=np.float64),
        domain=domain,
    )
