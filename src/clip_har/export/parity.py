"""The parity gate: an exported artifact against torch fp32 on the same images.

Top-1 agreement counts only images whose reference top-1 margin exceeds ``2 x max |Δp|``.
See docs/export.md#the-parity-gate.
"""

from __future__ import annotations

import numpy as np

from clip_har.config import ParityLimit, ParitySettings
from clip_har.models.bundle import ParityInfo

MARGIN_BOUND_FACTOR = 2.0  # two probabilities that may each move by e can swap within 2e


def limit_for(settings: ParitySettings, precision: str) -> ParityLimit:
    """The gate of a precision (``fp32``, ``fp16`` or ``int8``)."""
    limit: ParityLimit = getattr(settings, precision)
    return limit


def top1_margins(probabilities: np.ndarray) -> np.ndarray:
    """Per image, the top-1 minus the top-2 probability (``inf`` with a single class)."""
    if probabilities.shape[1] < 2:
        return np.full(len(probabilities), np.inf)
    top2 = np.sort(probabilities.astype(np.float64), axis=1)[:, -2:]
    margins: np.ndarray = top2[:, 1] - top2[:, 0]
    return margins


def check_parity(
    reference: np.ndarray, candidate: np.ndarray, limit: ParityLimit, *, real_photos: bool
) -> ParityInfo:
    """Max absolute probability difference, and top-1 agreement over the decided images;
    passed when both are inside the gate. Non-finite outputs always fail."""
    if reference.shape != candidate.shape:
        raise ValueError(f"output shape {candidate.shape} != reference {reference.shape}")
    finite = bool(np.isfinite(candidate).all())
    diff = float(np.abs(candidate.astype(np.float64) - reference).max()) if finite else np.inf
    margins = top1_margins(reference)
    bound = MARGIN_BOUND_FACTOR * diff
    decided = margins > bound
    same = candidate.argmax(axis=1) == reference.argmax(axis=1)
    agreement = float(same[decided].mean()) if decided.any() else 1.0
    return ParityInfo(
        images=len(reference),
        real_photos=real_photos,
        max_abs_diff=diff if finite else 1.0,
        top1_agreement=agreement,
        max_abs_diff_limit=limit.max_abs_diff,
        agreement_floor=limit.top1_agreement,
        median_margin=float(np.median(margins)) if reference.shape[1] > 1 else None,
        margin_bound=bound if finite else None,
        decided_images=int(decided.sum()),
        excluded_images=int((~decided).sum()),
        top1_agreement_all=float(same.mean()),
        passed=finite and diff <= limit.max_abs_diff and agreement >= limit.top1_agreement,
    )
