"""Class balance: loss weights, the weighted sampler and resampling a split to a target."""

from collections import Counter

import pandas as pd
import pytest
import torch

from clip_har.data.balance import (
    class_counts,
    class_weights,
    parse_target,
    render_html,
    resample,
    sample_weights,
    weighted_sampler,
)
from clip_har.data.manifest import conform
from clip_har.errors import BalanceError, ClipHarError

TRAIN = {"run": 40, "sit": 10, "walk": 25}


def manifest(train: dict[str, int] = TRAIN, split: bool = True) -> pd.DataFrame:
    """``train`` counts per class, plus 3 val and 2 test rows of every class."""
    rows = []
    for label, count in train.items():
        parts = [("train", count), ("val", 3), ("test", 2)] if split else [(None, count)]
        for name, n in parts:
            rows += [
                {"path": f"/data/{label}/{name}_{i}.jpg", "label": label, "split": name}
                for i in range(n)
            ]
    return conform(pd.DataFrame(rows))


def test_class_counts_are_sorted_and_skip_missing_labels() -> None:
    labels = ["walk", None, "run", pd.NA, "walk", float("nan")]
    assert class_counts(labels) == {"run": 1, "walk": 2}
    assert list(class_counts(["b", "a", "c"])) == ["a", "b", "c"]


@pytest.mark.parametrize("scheme", ["inverse", "sqrt_inverse", "effective"])
def test_weights_have_unit_count_weighted_mean_and_follow_class_order(scheme: str) -> None:
    labels = ["a"] * 90 + ["b"] * 10
    weights = class_weights(labels, ["b", "a"], scheme=scheme, beta=0.99)
    assert weights.dtype == torch.float32 and weights.shape == (2,)
    assert float(weights[0] * 10 + weights[1] * 90) / 100 == pytest.approx(1.0, abs=1e-6)
    assert weights[0] > weights[1]  # the rare class "b" comes first and weighs more


def test_inverse_weights_equalise_class_totals_and_sqrt_is_milder() -> None:
    labels = ["a"] * 90 + ["b"] * 10
    inverse = class_weights(labels, ["a", "b"])
    assert float(inverse[0] * 90) == pytest.approx(float(inverse[1] * 10))
    assert inverse.tolist() == pytest.approx([100 / 180, 100 / 20])
    sqrt = class_weights(labels, ["a", "b"], scheme="sqrt_inverse")
    assert float(sqrt[1] / sqrt[0]) == pytest.approx(3.0)
    assert class_weights(["a", "b"], ["a", "b"]).tolist() == [1.0, 1.0]


def test_weight_errors_are_clear() -> None:
    with pytest.raises(BalanceError, match="no examples of the class"):
        class_weights(["a", "a"], ["a", "b"])
    with pytest.raises(BalanceError, match="not among the classes: z"):
        class_weights(["a", "z"], ["a"])
    with pytest.raises(BalanceError, match="unknown weight scheme"):
        class_weights(["a"], ["a"], scheme="log")
    with pytest.raises(BalanceError, match="beta"):
        class_weights(["a"], ["a"], scheme="effective", beta=1.0)
    assert issubclass(BalanceError, ClipHarError)


def test_sample_weights_are_inverse_class_counts() -> None:
    weights = sample_weights(["a", "a", "a", "b"])
    assert weights.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    with pytest.raises(BalanceError, match="1 unlabelled"):
        sample_weights(["a", None])


def test_sampler_is_reproducible_and_draws_classes_evenly() -> None:
    labels = ["common"] * 900 + ["rare"] * 100
    first = list(weighted_sampler(labels, seed=3))
    assert len(first) == 1000
    assert list(weighted_sampler(labels, seed=3)) == first
    assert list(weighted_sampler(labels, seed=4)) != first
    draws = list(weighted_sampler(labels, num_samples=4000, seed=5))
    rare = sum(labels[i] == "rare" for i in draws) / len(draws)
    assert abs(rare - 0.5) < 0.05  # binomial sd is 0.008: a 6-sigma band
    assert len(set(draws)) > 500  # draws spread over many rows, not a few


def test_sampler_rejects_empty_input() -> None:
    with pytest.raises(BalanceError, match="no rows"):
        weighted_sampler([])
    with pytest.raises(BalanceError, match="positive"):
        weighted_sampler(["a"], num_samples=0)


@pytest.mark.parametrize(
    ("target", "goal"), [("min", 10), ("max", 40), ("median", 25), (30, 30), ("7", 7)]
)
def test_resample_train_to_target(target: int | str, goal: int) -> None:
    frame = manifest()
    result = resample(frame, target, seed=1)
    report, out = result.report, result.manifest
    train = out[out["split"] == "train"]
    assert train["label"].value_counts().to_dict() == {name: goal for name in TRAIN}
    assert report["target"] == goal and report["split"] == "train"
    assert report["before"] == TRAIN and report["after"] == {name: goal for name in TRAIN}
    assert report["imbalance_ratio_before"] == 4.0 and report["imbalance_ratio_after"] == 1.0
    assert report["rows_before"] == len(frame) and report["rows_after"] == len(out)
    assert list(report["class_weights"]) == sorted(TRAIN)
    assert report["class_weights"]["sit"] > report["class_weights"]["run"]


def test_evaluation_rows_pass_through_unchanged() -> None:
    frame = manifest()
    out = resample(frame, "max", seed=2).manifest
    for split in ("val", "test"):
        kept = out[out["split"] == split].reset_index(drop=True)
        pd.testing.assert_frame_equal(kept, frame[frame["split"] == split].reset_index(drop=True))


def test_oversampling_keeps_every_row_and_undersampling_picks_distinct_rows() -> None:
    frame = manifest({"a": 3, "b": 20})
    out = resample(frame, 8, seed=0).manifest
    a = Counter(out.loc[out["label"].eq("a") & out["split"].eq("train"), "path"])
    assert set(a) == {f"/data/a/train_{i}.jpg" for i in range(3)}
    assert sorted(a.values()) == [2, 3, 3]  # two whole copies, then 2 distinct extra rows
    b = out.loc[out["label"].eq("b") & out["split"].eq("train"), "path"]
    assert len(b) == 8 and b.is_unique


def test_resample_is_seeded() -> None:
    frame = manifest()
    paths = resample(frame, "median", seed=5).manifest["path"].tolist()
    assert resample(frame, "median", seed=5).manifest["path"].tolist() == paths
    assert resample(frame, "median", seed=6).manifest["path"].tolist() != paths


def test_manifest_without_splits_balances_every_row(caplog: pytest.LogCaptureFixture) -> None:
    result = resample(manifest(split=False), "min")
    assert result.report["split"] is None
    assert result.manifest["label"].value_counts().to_dict() == dict.fromkeys(TRAIN, 10)
    assert "no splits" in caplog.text


def test_resample_errors_are_clear() -> None:
    frame = manifest()
    with pytest.raises(BalanceError, match="2 unlabelled row"):
        resample(conform(frame.assign(label=frame["label"].mask(frame.index < 2))), "min")
    with pytest.raises(BalanceError, match="no rows in split 'holdout'"):
        resample(frame, "min", split="holdout")
    with pytest.raises(BalanceError, match="positive integer"):
        resample(frame, 0)
    with pytest.raises(BalanceError, match="unknown weight scheme"):
        resample(frame, "min", scheme="nope")
    with pytest.raises(BalanceError, match="no rows to balance"):
        resample(frame.iloc[:0], "min")


def test_unlabelled_rows_outside_the_split_are_allowed() -> None:
    frame = manifest()
    val = frame["split"].eq("val")
    frame = conform(frame.assign(label=frame["label"].mask(val)))
    out = resample(frame, "min").manifest
    assert out.loc[out["split"].eq("val"), "label"].isna().all()


@pytest.mark.parametrize("text", ["average", "-3", "0", "2.5", ""])
def test_bad_target_text(text: str) -> None:
    with pytest.raises(BalanceError, match="min, max, median"):
        parse_target(text)


def test_parse_target_accepts_names_and_counts() -> None:
    assert parse_target("Median") == "median"
    assert parse_target(" 12 ") == 12


def test_html_page_is_self_contained_and_escaped() -> None:
    frame = manifest({"<b>run</b>": 4, "sit": 2})
    page = render_html(resample(frame, "max").report)
    assert page.count("<img") == 1 and "data:image/png;base64," in page
    assert "&lt;b&gt;run&lt;/b&gt;" in page and "<b>run</b>" not in page
    assert "<script" not in page and "http" not in page
