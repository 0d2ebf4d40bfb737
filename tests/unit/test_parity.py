"""The parity gate on constructed probabilities (no runtime, so no CPU-specific rounding):
near-ties are excluded from top-1 agreement and counted, a real reordering of a clear
decision still fails, and records written before the rule still load."""

from __future__ import annotations

import numpy as np
import pytest

from clip_har.config import ParityLimit, ParitySettings
from clip_har.export.parity import check_parity, limit_for, top1_margins
from clip_har.models.bundle import ExportRecord, ParityInfo

INT8 = ParitySettings().int8


def _rows(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_near_ties_are_excluded_and_counted() -> None:
    """Two near-tied images reordered by an error far inside the gate: excluded, so the gate
    passes where counting every image (50% agreement) would fail the 90% floor."""
    reference = _rows([0.5001, 0.4999], [0.4999, 0.5001], [0.9, 0.1], [0.2, 0.8])
    candidate = _rows([0.4999, 0.5001], [0.5001, 0.4999], [0.9, 0.1], [0.2, 0.8])
    parity = check_parity(reference, candidate, INT8, real_photos=False)
    assert parity.passed
    assert (parity.decided_images, parity.excluded_images) == (2, 2)
    assert parity.top1_agreement == 1.0
    assert parity.top1_agreement_all == 0.5
    assert parity.max_abs_diff == pytest.approx(2e-4, rel=1e-3)
    assert parity.margin_bound == pytest.approx(2 * parity.max_abs_diff)


def test_a_random_weight_model_decides_nothing_and_passes_on_its_error() -> None:
    """Every image a near-tie (the tiny model): none decided, gated on max |Δp| alone."""
    rng = np.random.default_rng(0)
    reference = (np.full((12, 15), 1 / 15) + rng.uniform(-1e-5, 1e-5, (12, 15))).astype(np.float32)
    candidate = reference[:, ::-1].copy()  # every top-1 moved, by at most ~4e-5
    parity = check_parity(reference, candidate, INT8, real_photos=False)
    assert parity.passed and parity.decided_images == 0 and parity.excluded_images == 12
    assert parity.top1_agreement == 1.0 and parity.top1_agreement_all < 0.5


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_a_reordered_clear_decision_fails_every_gate(precision: str) -> None:
    """An image whose margin is four times the gate's allowed error has its top-1 swapped."""
    limit = limit_for(ParitySettings(), precision)
    margin = 4 * limit.max_abs_diff
    clear = [0.5 + margin / 2, 0.5 - margin / 2]
    reference = _rows(clear, [0.9, 0.1], [0.1, 0.9])
    candidate = _rows(clear[::-1], [0.9, 0.1], [0.1, 0.9])
    parity = check_parity(reference, candidate, limit, real_photos=True)
    assert not parity.passed
    assert parity.max_abs_diff > limit.max_abs_diff
    assert parity.top1_agreement_all == pytest.approx(2 / 3)


def test_the_margin_bound_follows_the_measured_error() -> None:
    """The bound is twice the error measured, not the limit: under a loose limit a larger
    error excludes more images, and the ones still decided are kept."""
    loose = ParityLimit(max_abs_diff=1.0, top1_agreement=1.0)
    reference = _rows([0.6, 0.4], [0.99, 0.01], [0.01, 0.99])
    candidate = _rows([0.45, 0.55], [0.99, 0.01], [0.01, 0.99])
    parity = check_parity(reference, candidate, loose, real_photos=False)
    # the flipped image (margin 0.2) is within 2 x max |Δp| = 0.3: a near-tie at this error
    assert (parity.decided_images, parity.excluded_images) == (2, 1)
    assert parity.passed and parity.top1_agreement == 1.0


def test_non_finite_outputs_always_fail() -> None:
    reference = _rows([0.9, 0.1], [0.2, 0.8])
    candidate = _rows([np.nan, 0.1], [0.2, 0.8])
    parity = check_parity(reference, candidate, INT8, real_photos=False)
    assert not parity.passed and parity.decided_images == 0 and parity.margin_bound is None


def test_margins_of_a_single_class_are_infinite() -> None:
    assert np.isinf(top1_margins(_rows([1.0], [1.0]))).all()
    single = check_parity(_rows([1.0]), _rows([1.0]), INT8, real_photos=False)
    assert single.passed and single.decided_images == 1 and single.median_margin is None


def test_a_record_written_before_the_rule_still_loads() -> None:
    """A manifest entry as the previous release wrote it: no decided/excluded fields."""
    old = {
        "format": "onnx-int8",
        "file": "exports/model.int8.onnx",
        "sha256": "0" * 64,
        "bytes": 1234,
        "precision": "int8",
        "opset": 17,
        "parity": {
            "images": 32,
            "real_photos": False,
            "max_abs_diff": 1.9e-4,
            "top1_agreement": 0.833,
            "max_abs_diff_limit": 0.05,
            "agreement_floor": 0.9,
            "median_margin": 1.1e-4,
            "passed": False,
        },
        "created_at": "2025-01-01T00:00:00Z",
        "details": {"method": "dynamic"},
    }
    record = ExportRecord.model_validate(old)
    assert isinstance(record.parity, ParityInfo) and not record.passed
    assert record.parity.decided_images is None and record.parity.top1_agreement_all is None
    assert ExportRecord.model_validate_json(record.model_dump_json()) == record
