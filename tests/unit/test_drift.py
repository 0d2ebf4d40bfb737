"""Drift monitoring's statistics, profile files, window parsing and score storage.

Protects: PSI is 0 for one distribution, symmetric, matches the formula and stays finite
for empty classes; the conventional PSI bands; the KS statistic and p-value against hand
computed cases; the domain classifier's AUC near 0.5 for one distribution and near 1 for
separated ones; a window's verdict per score (and the embedding score skipped with the
reason); reference folders round-trip and damaged ones are named; ``--since`` parsing; the
store keeps the latest score per metric, ``/metrics`` exports it as
``clip_har_drift_score{metric=...}`` and ``/v1/stats/predictions`` answers it in ``drift``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clip_har.cli.monitor import parse_since
from clip_har.errors import UsageError
from clip_har.monitoring import CLASS_PSI, CONFIDENCE_KS, EMBEDDING_AUC
from clip_har.monitoring.drift import Thresholds, compute_drift
from clip_har.monitoring.profile import (
    ProfileError,
    ReferenceProfile,
    load_profile,
    profile_id,
    save_profile,
)
from clip_har.monitoring.stats import domain_auc, ks_test, psi, psi_band
from clip_har.serving.metrics import ServingMetrics
from clip_har.serving.schemas import PredictionStatsResponse
from clip_har.serving.store import (
    DriftScoreRecord,
    PredictionStore,
    read_prediction_stats,
    record_drift_scores,
    sqlite_file_url,
)

CLASSES = ["running", "sitting", "eating"]


# --------------------------------------------------------------------------- statistics


def test_psi_is_zero_for_one_distribution_and_symmetric() -> None:
    counts = {"running": 30, "sitting": 50, "eating": 20}
    doubled = {k: 2 * v for k, v in counts.items()}
    assert psi(counts, doubled, smoothing=0) == pytest.approx(0.0, abs=1e-12)
    shifted = {"running": 70, "sitting": 20, "eating": 10}
    assert psi(counts, shifted) == pytest.approx(psi(shifted, counts))


def test_psi_matches_the_formula() -> None:
    expected, actual = {"a": 50, "b": 50}, {"a": 90, "b": 10}
    by_hand = (0.9 - 0.5) * math.log(0.9 / 0.5) + (0.1 - 0.5) * math.log(0.1 / 0.5)
    assert psi(expected, actual, smoothing=0) == pytest.approx(by_hand)


def test_psi_of_an_empty_class_is_finite_and_large() -> None:
    value = psi({"a": 50, "b": 50}, {"a": 100}, categories=["a", "b"])
    assert math.isfinite(value) and value > 0.25


@pytest.mark.parametrize(
    ("value", "band"),
    [
        (0.0, "stable"),
        (0.09, "stable"),
        (0.1, "moderate"),
        (0.25, "moderate"),
        (0.3, "significant"),
    ],
)
def test_psi_bands(value: float, band: str) -> None:
    assert psi_band(value) == band


def test_ks_statistic_and_pvalue() -> None:
    same = ks_test([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])
    assert (same.statistic, same.pvalue) == (0.0, 1.0)
    interleaved = ks_test([0.1, 0.2, 0.3], [0.25, 0.35, 0.45])
    assert interleaved.statistic == pytest.approx(2 / 3)
    apart = ks_test(np.linspace(0.0, 0.4, 50), np.linspace(0.6, 1.0, 50))
    assert apart.statistic == 1.0 and apart.pvalue < 1e-6


def test_domain_auc_tells_shifted_embeddings_from_the_same_ones() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 8))
    same = domain_auc(reference, rng.normal(size=(200, 8)))
    shifted = domain_auc(reference, rng.normal(loc=2.0, size=(200, 8)))
    assert same.auc < 0.65
    assert shifted.auc > 0.95
    assert same.folds == 5 and len(same.scores) == 400


def test_domain_auc_needs_rows_of_one_width() -> None:
    with pytest.raises(ValueError, match="one D"):
        domain_auc(np.zeros((4, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2 rows"):
        domain_auc(np.zeros((1, 3)), np.zeros((4, 3)))


# --------------------------------------------------------------------------- a window's verdict


def _profile(
    counts: dict[str, int], confidences: np.ndarray, embeddings: np.ndarray
) -> ReferenceProfile:
    info: dict[str, Any] = {
        "schema_version": 1,
        "id": "",
        "bundle": {"path": "/nowhere", "name": "tiny", "model_key": "k", "classes": CLASSES},
        "class_counts": counts,
        "confidence_histogram": {"edges": list(np.linspace(0, 1, 11)), "counts": [0] * 10},
        "images": sum(counts.values()),
    }
    info["id"] = profile_id(info)
    return ReferenceProfile(info, confidences.astype(np.float32), embeddings.astype(np.float32))


@pytest.fixture
def reference() -> ReferenceProfile:
    rng = np.random.default_rng(1)
    return _profile(
        {"running": 100, "sitting": 100, "eating": 100},
        rng.uniform(0.3, 0.9, size=300),
        rng.normal(size=(300, 6)),
    )


def test_a_window_like_the_reference_is_not_drift(reference: ReferenceProfile) -> None:
    rng = np.random.default_rng(2)
    labels = [CLASSES[i % 3] for i in range(300)]
    result = compute_drift(
        reference,
        labels,
        list(rng.uniform(0.3, 0.9, size=300)),
        Thresholds(),
        embeddings=rng.normal(size=(300, 6)),
    )
    assert [s.metric for s in result.scores] == [CLASS_PSI, CONFIDENCE_KS, EMBEDDING_AUC]
    assert result.drifted == [] and result.skipped == {}
    assert result.scores[0].detail["band"] == "stable"


def test_a_shifted_window_is_drift_in_every_score(reference: ReferenceProfile) -> None:
    rng = np.random.default_rng(3)
    result = compute_drift(
        reference,
        ["running"] * 280 + ["sitting"] * 20,
        list(rng.uniform(0.05, 0.2, size=300)),
        Thresholds(),
        embeddings=rng.normal(loc=3.0, size=(300, 6)),
    )
    assert {s.metric for s in result.drifted} == {CLASS_PSI, CONFIDENCE_KS, EMBEDDING_AUC}
    assert result.scores[0].detail["band"] == "significant"


def test_labels_outside_the_reference_count_as_drift(reference: ReferenceProfile) -> None:
    result = compute_drift(reference, ["a cat"] * 50, [0.5] * 50, Thresholds())
    assert result.scores[0].drifted
    assert result.scores[0].detail["labels_outside_reference"] == ["a cat"]


def test_embedding_drift_is_skipped_with_the_reason(reference: ReferenceProfile) -> None:
    result = compute_drift(
        reference, ["running"] * 10, [0.5] * 10, Thresholds(), embedding_note="no --images"
    )
    assert [s.metric for s in result.scores] == [CLASS_PSI, CONFIDENCE_KS]
    assert result.skipped == {EMBEDDING_AUC: "no --images"}


def test_a_large_ks_statistic_from_a_tiny_window_is_not_drift(reference: ReferenceProfile) -> None:
    """The p-value guard: three predictions cannot show a significant change."""
    result = compute_drift(reference, CLASSES, [0.5, 0.52, 0.55], Thresholds())
    ks = result.scores[1]
    assert ks.value > 0.5 and ks.detail["pvalue"] > 0.01 and not ks.drifted


# --------------------------------------------------------------------------- reference folders


def test_a_reference_folder_round_trips(reference: ReferenceProfile, tmp_path: Path) -> None:
    save_profile(tmp_path, reference)
    loaded = load_profile(tmp_path)
    assert loaded.info == reference.info and loaded.id == reference.id
    assert np.array_equal(loaded.confidences, reference.confidences)
    assert np.array_equal(loaded.embeddings, reference.embeddings)


def test_damaged_reference_folders_are_named(reference: ReferenceProfile, tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "missing")
    with pytest.raises(ProfileError, match=r"profile\.json: missing"):
        load_profile(tmp_path)
    save_profile(tmp_path, reference)
    (tmp_path / "arrays.npz").write_bytes(b"not an archive")
    with pytest.raises(ProfileError, match=r"arrays\.npz: not readable"):
        load_profile(tmp_path)
    (tmp_path / "profile.json").write_text('{"schema_version": 99}')
    with pytest.raises(ProfileError, match="schema"):
        load_profile(tmp_path)


# --------------------------------------------------------------------------- --since

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", None),
        ("90s", NOW - timedelta(seconds=90)),
        ("30m", NOW - timedelta(minutes=30)),
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("2026-05-31T12:00:00Z", NOW - timedelta(days=1)),
        ("2026-05-31T12:00:00", NOW - timedelta(days=1)),  # no offset: UTC
        ("2026-05-31T14:00:00+02:00", NOW - timedelta(days=1)),
    ],
)
def test_since_parses_durations_and_times(text: str, expected: datetime | None) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "24", "h24", "2027-01-01T00:00:00Z"])
def test_bad_or_future_since_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="--since"):
        parse_since(text, NOW)


# --------------------------------------------------------------------------- scores in the store


def _score(metric: str, value: float, at: datetime, run: str) -> DriftScoreRecord:
    return DriftScoreRecord(
        run_id=run,
        created_at=at,
        metric=metric,
        value=value,
        threshold=0.25,
        drifted=value > 0.25,
        reference_id="ref1",
        samples=120,
        since=at - timedelta(hours=24),
    )


def test_the_latest_score_of_each_metric_is_served(tmp_path: Path) -> None:
    url = sqlite_file_url(tmp_path / "serving.db")
    store = PredictionStore(url)
    try:
        earlier = NOW - timedelta(days=1)
        record_drift_scores(
            url, [_score(CLASS_PSI, 0.5, earlier, "a"), _score(CONFIDENCE_KS, 0.1, earlier, "a")]
        )
        record_drift_scores(url, [_score(CLASS_PSI, 0.05, NOW, "b")])
        latest = {s.metric: s for s in store.latest_drift_scores_now()}
        assert set(latest) == {CLASS_PSI, CONFIDENCE_KS}
        assert (latest[CLASS_PSI].value, latest[CLASS_PSI].run_id) == (0.05, "b")
        assert latest[CONFIDENCE_KS].run_id == "a"  # not in the later run: the older score stays
        assert latest[CLASS_PSI].created_at == NOW  # timezone-aware, UTC

        metrics = ServingMetrics()
        metrics.refresh_drift(store.latest_drift_scores_now)
        text = metrics.render()[0].decode()
        assert 'clip_har_drift_score{metric="class_psi"} 0.05' in text
        assert 'clip_har_drift_score{metric="confidence_ks"} 0.1' in text
        assert 'clip_har_drift_detected{metric="class_psi"} 0.0' in text

        with store.engine.connect() as connection:
            stats = read_prediction_stats(connection, NOW - timedelta(hours=1), NOW, 3600)
        body = PredictionStatsResponse.of(stats, store.latest_drift_scores_now()).model_dump()
        assert body["drift"][CLASS_PSI]["value"] == 0.05
        assert body["drift"][CLASS_PSI]["drifted"] is False
        assert body["drift"][CONFIDENCE_KS]["reference_id"] == "ref1"
    finally:
        store.close()


def test_no_scores_means_no_drift_object_and_no_gauge_samples(tmp_path: Path) -> None:
    store = PredictionStore(sqlite_file_url(tmp_path / "serving.db"))
    try:
        metrics = ServingMetrics()
        metrics.refresh_drift(store.latest_drift_scores_now)
        assert "clip_har_drift_score{" not in metrics.render()[0].decode()
        with store.engine.connect() as connection:
            stats = read_prediction_stats(connection, NOW - timedelta(hours=1), NOW, 3600)
        assert PredictionStatsResponse.of(stats, store.latest_drift_scores_now()).drift is None
    finally:
        store.close()


def test_a_failing_drift_source_keeps_the_scrape_working() -> None:
    metrics = ServingMetrics()
    good = [_score(CLASS_PSI, 0.3, NOW, "a"), _score("something_else", 1.0, NOW, "a")]
    metrics.refresh_drift(lambda: good)

    def broken() -> list[DriftScoreRecord]:
        raise RuntimeError("database gone")

    metrics.refresh_drift(broken)
    text = metrics.render()[0].decode()
    assert 'clip_har_drift_score{metric="class_psi"} 0.3' in text  # the last good scores
    assert "something_else" not in text  # a bounded label set
