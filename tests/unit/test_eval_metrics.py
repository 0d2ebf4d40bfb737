"""Evaluation metrics: agreement with scikit-learn, calibration, bootstrap intervals, edge cases."""

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from clip_har.errors import ClipHarError, EvaluationError
from clip_har.evaluation.metrics import (
    EvalArrays,
    bootstrap_indices,
    compute_metrics,
    replicate_scores,
    summary,
)

NAMES = ["clap", "jump", "run", "sit", "wave", "yoga"]
# (true, predicted, images): "sit" is predicted but never present, "wave" neither present
# nor predicted; "yoga" is present and never predicted.
CONFUSION = [
    (0, 0, 5),
    (0, 1, 1),
    (0, 3, 2),
    (1, 1, 4),
    (1, 2, 2),
    (2, 2, 6),
    (2, 0, 1),
    (2, 3, 1),
    (5, 2, 2),
    (5, 0, 1),
]


def probabilities(y_pred: np.ndarray, n_classes: int, seed: int = 0) -> np.ndarray:
    """Random, tie-free probability rows whose argmax is ``y_pred``."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(n_classes), size=len(y_pred))
    top = probs.argmax(axis=1)
    rows = np.arange(len(y_pred))
    probs[rows, top], probs[rows, y_pred] = probs[rows, y_pred], probs[rows, top]
    return probs


def hand_built() -> EvalArrays:
    y_true = np.concatenate([np.full(n, t) for t, _, n in CONFUSION])
    y_pred = np.concatenate([np.full(n, p) for _, p, n in CONFUSION])
    return EvalArrays(y_true, probabilities(y_pred, len(NAMES)), NAMES)


def test_metrics_equal_scikit_learn_with_missing_and_absent_classes() -> None:
    arrays = hand_built()
    y, probs, labels = arrays.y_true, arrays.probs, np.arange(len(NAMES))
    y_pred = probs.argmax(axis=1)
    metrics = compute_metrics(arrays, n_bootstrap=200)

    assert metrics["n_evaluated"] == len(y) == 25
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, y_pred))
    with pytest.warns(UserWarning, match="not in y_true"):
        assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, y_pred))
    for k in (1, 3, 5):
        expected = top_k_accuracy_score(y, probs, k=k, labels=labels)
        assert metrics["top_k_accuracy"][str(k)] == pytest.approx(expected)
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y, y_pred, labels=labels, average=average, zero_division=0
        )
        assert [metrics[average][key] for key in ("precision", "recall", "f1")] == pytest.approx(
            [p, r, f]
        )
    p, r, f, s = precision_recall_fscore_support(y, y_pred, labels=labels, zero_division=0)
    for i, name in enumerate(NAMES):
        row = metrics["per_class"][name]
        assert [row["precision"], row["recall"], row["f1"]] == pytest.approx([p[i], r[i], f[i]])
        assert row["support"] == s[i]

    expected_counts = np.zeros((6, 6), dtype=int)
    for t, pred, n in CONFUSION:
        expected_counts[t, pred] = n
    assert metrics["confusion_matrix"] == expected_counts.tolist()
    assert metrics["confusion_matrix"] == confusion_matrix(y, y_pred, labels=labels).tolist()

    defined = [0, 1, 2, 5]
    for i in defined:
        positive = y == i
        row = metrics["per_class"][NAMES[i]]
        assert row["roc_auc"] == pytest.approx(roc_auc_score(positive, probs[:, i]))
        assert row["average_precision"] == pytest.approx(
            average_precision_score(positive, probs[:, i])
        )
    assert metrics["roc_auc_macro"] == pytest.approx(
        np.mean([roc_auc_score(y == i, probs[:, i]) for i in defined])
    )
    assert metrics["average_precision_macro"] == pytest.approx(
        np.mean([average_precision_score(y == i, probs[:, i]) for i in defined])
    )
    assert metrics["per_class"]["sit"]["roc_auc"] is None
    assert metrics["per_class"]["wave"]["average_precision"] is None

    assert metrics["classes_without_support"] == ["sit", "wave"]
    assert metrics["predicted_but_absent"] == ["sit"]
    assert metrics["auc_undefined_for"] == ["sit", "wave"]
    assert metrics["class_names"] == NAMES


def test_normalized_confusion_rows_sum_to_one_or_stay_zero() -> None:
    metrics = compute_metrics(hand_built(), n_bootstrap=0)
    normalized = np.array(metrics["confusion_matrix_normalized"])
    assert not np.isnan(normalized).any()
    np.testing.assert_allclose(normalized.sum(axis=1), [1, 1, 1, 0, 0, 1])
    assert normalized[0].tolist() == pytest.approx([5 / 8, 1 / 8, 0, 2 / 8, 0, 0])


def test_result_is_strict_json_and_summary_is_flat() -> None:
    metrics = compute_metrics(hand_built(), n_bootstrap=100)
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
    flat = summary(metrics)
    assert set(flat) == {
        "n_evaluated",
        "accuracy",
        "accuracy_ci_low",
        "accuracy_ci_high",
        "balanced_accuracy",
        "top_k_accuracy_1",
        "top_k_accuracy_3",
        "top_k_accuracy_5",
        "f1_macro",
        "f1_macro_ci_low",
        "f1_macro_ci_high",
        "precision_macro",
        "recall_macro",
        "f1_weighted",
        "precision_weighted",
        "recall_weighted",
        "roc_auc_macro",
        "average_precision_macro",
        "ece",
    }
    assert all(isinstance(value, int | float) for value in flat.values())
    assert flat["f1_macro"] == metrics["macro"]["f1"]
    assert [flat["accuracy_ci_low"], flat["accuracy_ci_high"]] == metrics["accuracy_ci"]


def test_ece_and_reliability_on_a_hand_computed_example() -> None:
    # top-1 confidence / correct: .91 yes, .93 no (bin 13), .71 yes (bin 10),
    # .62 no (bin 9), .83 yes (bin 12) -> ECE = (2*|.5-.92| + .29 + .62 + .17) / 5
    probs = np.array([[0.91, 0.09], [0.07, 0.93], [0.71, 0.29], [0.38, 0.62], [0.17, 0.83]])
    y_true = np.array([0, 0, 0, 0, 1])
    metrics = compute_metrics(EvalArrays(y_true, probs, ["a", "b"]), n_bootstrap=0)
    assert metrics["ece"] == pytest.approx(0.384)
    reliability = metrics["reliability"]
    assert reliability["edges"] == pytest.approx(np.linspace(0, 1, 16).tolist())
    expected_count = [0] * 15
    expected_count[9], expected_count[10], expected_count[12], expected_count[13] = 1, 1, 1, 2
    assert reliability["count"] == expected_count
    assert reliability["confidence"][13] == pytest.approx(0.92)
    assert reliability["accuracy"][13] == pytest.approx(0.5)
    assert reliability["accuracy"][9] == 0.0
    assert reliability["confidence"][0] is None
    assert reliability["accuracy"][14] is None


def test_bootstrap_intervals_contain_the_estimate_and_follow_the_seed() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 4, 300))
    arrays = EvalArrays(y_true, probabilities(y_pred, 4), list("abcd"))
    first = compute_metrics(arrays, seed=7)
    again = compute_metrics(arrays, seed=7)
    other = compute_metrics(arrays, seed=8)
    for key, point in (("accuracy_ci", first["accuracy"]), ("f1_macro_ci", first["macro"]["f1"])):
        low, high = first[key]
        assert low < point < high
        assert high - low < 0.2
        assert again[key] == first[key]
        assert other[key] != first[key]


def test_replicate_scores_equal_scikit_learn_per_replicate() -> None:
    arrays = hand_built()
    y, y_pred = arrays.y_true, arrays.y_pred
    indices = next(bootstrap_indices(len(y), 40, seed=1))
    accuracy, f1 = replicate_scores(y, y_pred, len(NAMES), indices)
    labels = np.arange(len(NAMES))
    for row, rows in enumerate(indices):
        assert accuracy[row] == pytest.approx(accuracy_score(y[rows], y_pred[rows]))
        expected = f1_score(y[rows], y_pred[rows], labels=labels, average="macro", zero_division=0)
        assert f1[row] == pytest.approx(expected)


def test_bootstrap_indices_are_chunked_but_fixed_by_the_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import clip_har.evaluation.metrics as metrics

    monkeypatch.setattr(metrics, "BOOTSTRAP_CELLS", 30)
    chunks = list(bootstrap_indices(10, 7, seed=2))
    assert [chunk.shape for chunk in chunks] == [(3, 10), (3, 10), (1, 10)]
    again = np.concatenate(list(bootstrap_indices(10, 7, seed=2)))
    np.testing.assert_array_equal(np.concatenate(chunks), again)


def test_no_bootstrap_gives_null_intervals_left_out_of_the_summary() -> None:
    metrics = compute_metrics(hand_built(), n_bootstrap=0)
    assert metrics["accuracy_ci"] is None
    assert metrics["f1_macro_ci"] is None
    assert "accuracy_ci_low" not in summary(metrics)


def test_top_k_is_capped_at_the_class_count_and_ties_rank_like_argmax() -> None:
    probs = np.array([[0.4, 0.4, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]])
    arrays = EvalArrays(np.array([1, 0, 0]), probs, list("abcd"))
    metrics = compute_metrics(arrays, top_k=(1, 3, 5), n_bootstrap=0)
    assert metrics["top_k_accuracy"] == pytest.approx({"1": 1 / 3, "3": 2 / 3, "4": 1.0})
    assert metrics["top_k_accuracy"]["1"] == metrics["accuracy"]


def test_a_single_class_in_the_labels_leaves_every_auc_undefined() -> None:
    probs = probabilities(np.array([0, 0, 1, 2]), 3)
    metrics = compute_metrics(EvalArrays(np.zeros(4, dtype=int), probs, list("abc")))
    assert metrics["auc_undefined_for"] == ["a", "b", "c"]
    assert metrics["roc_auc_macro"] is None
    assert metrics["average_precision_macro"] is None
    assert "roc_auc_macro" not in summary(metrics)
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("y_true", "probs", "names", "message"),
    [
        (np.zeros(0, dtype=int), np.zeros((0, 2)), ["a", "b"], "N=0"),
        (np.array([0, 1]), np.full((3, 2), 0.5), ["a", "b"], "3 rows of probs for 2 labels"),
        (np.array([0, 1]), np.full((2, 2), 0.5), ["a", "b", "c"], "2 columns"),
        (np.array([[0, 1]]), np.full((2, 2), 0.5), ["a", "b"], "1-D"),
        (np.array([0, 1]), np.full(2, 0.5), ["a", "b"], "2-D"),
        (np.array([0, 2]), np.full((2, 2), 0.5), ["a", "b"], "outside 0..1"),
        (np.array([0.0, 1.0]), np.full((2, 2), 0.5), ["a", "b"], "integer"),
        (np.array([0, 1]), np.array([[2.0, -1.0], [0.0, 3.0]]), ["a", "b"], "softmax"),
        (np.array([0, 1]), np.array([[np.nan, 1.0], [0.0, 1.0]]), ["a", "b"], "NaN"),
        (np.array([0, 1]), np.full((2, 2), 0.5), ["a", "a"], "unique"),
        (np.zeros(2, dtype=int), np.zeros((2, 0)), [], "class list is empty"),
    ],
)
def test_invalid_inputs_raise_evaluation_error(
    y_true: np.ndarray, probs: np.ndarray, names: list[str], message: str
) -> None:
    with pytest.raises(EvaluationError, match=message):
        EvalArrays(y_true, probs, names)


def test_invalid_settings_raise_evaluation_error() -> None:
    arrays = hand_built()
    assert issubclass(EvaluationError, ClipHarError)
    with pytest.raises(EvaluationError, match="n_bootstrap"):
        compute_metrics(arrays, n_bootstrap=-1)
    with pytest.raises(EvaluationError, match="top-k"):
        compute_metrics(arrays, top_k=(0,))
    with pytest.raises(EvaluationError, match="bins"):
        compute_metrics(arrays, bins=0)
