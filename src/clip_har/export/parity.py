"""The parity gate: an exported artifact against torch fp32 on the same images."""

from __future__ import annotations

import numpy as np

from clip_har.config import ParityLimit, ParitySettings
from clip_har.models.bundle import ParityInfo


def limit_for(settings: ParitySettings, precision: str) -> ParityLimit:
    """The gate of a precision (``fp32``, ``fp16`` or ``int8``)."""
    limit: ParityLimit = getattr(settings, precision)
    return limit


def check_parity(
    reference: np.ndarray, candidate: np.ndarray, limit: ParityLimit, *, real_photos: bool
) -> ParityInfo:
    """Max absolute probability difference and top-1 agreement; passed when both are inside
    the gate. Non-finite outputs always fail."""
    if reference.shape != candidate.shape:
        raise ValueError(f"output shape {candidate.shape} != reference {reference.shape}")
    finite = bool(np.isfinite(candidate).all())
    diff = float(np.abs(candidate.astype(np.float64) - reference).max()) if finite else np.inf
    agreement = float((candidate.argmax(axis=1) == reference.argmax(axis=1)).mean())
    top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else None
    return ParityInfo(
        images=len(reference),
        real_photos=real_photos,
        max_abs_diff=diff if finite else 1.0,
        top1_agreement=agreement,
        max_abs_diff_limit=limit.max_abs_diff,
        agreement_floor=limit.top1_agreement,
        median_margin=None if top2 is None else float(np.median(top2[:, 1] - top2[:, 0])),
        passed=finite and diff <= limit.max_abs_diff and agreement >= limit.top1_agreement,
    )
