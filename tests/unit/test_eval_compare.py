"""Paired model comparison: McNemar's test and paired-bootstrap deltas; `evaluate compare`."""

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, chi2
from typer.testing import CliRunner

from clip_har.cli.common import EXIT_USAGE
from clip_har.cli.main import app
from clip_har.errors import EvaluationError
from clip_har.evaluation.compare import compare_predictions, mcnemar
from clip_har.evaluation.compare_runs import compare_evaluations, source_rows
from clip_har.evaluation.metrics import EvalArrays, compute_metrics
from clip_har.evaluation.provenance import EvaluationSource

NAMES = ["clap", "run", "sit"]

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def confident(y_pred: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """Probability rows with 0.8 on the predicted class."""
    probs = np.full((len(y_pred), n_classes), 0.2 / (n_classes - 1))
    probs[np.arange(len(y_pred)), y_pred] = 0.8
    return probs


def paired(b01: int, b10: int, both: int = 30, neither: int = 10) -> tuple[EvalArrays, EvalArrays]:
    """Two models on the same images with exactly ``b01``/``b10`` discordant pairs."""
    n = b01 + b10 + both + neither
    y_true = np.arange(n) % 3
    wrong = (y_true + 1) % 3
    right_a = np.r_[np.ones(b01), np.zeros(b10), np.ones(both), np.zeros(neither)].astype(bool)
    right_b = np.r_[np.zeros(b01), np.ones(b10), np.ones(both), np.zeros(neither)].astype(bool)
    a = EvalArrays(y_true, confident(np.where(right_a, y_true, wrong)), NAMES)
    b = EvalArrays(y_true, confident(np.where(right_b, y_true, wrong)), NAMES)
    return a, b


def test_identical_models_have_p_one_and_zero_delta() -> None:
    a, _ = paired(4, 6)
    result = compare_predictions(a, a)
    assert (result["b01"], result["b10"], result["n"]) == (0, 0, 50)
    assert result["p_value"] == 1.0
    for metric in ("accuracy", "f1_macro"):
        assert result[metric]["delta"] == 0.0
        assert result[metric]["delta_ci"] == [0.0, 0.0]
        assert result[metric]["a"] == result[metric]["b"]


def test_few_discordant_pairs_use_the_exact_binomial_test() -> None:
    a, b = paired(3, 9)
    result = compare_predictions(a, b, n_bootstrap=200)
    assert (result["b01"], result["b10"], result["method"]) == (3, 9, "exact")
    assert result["statistic"] is None
    assert result["p_value"] == pytest.approx(binomtest(3, 12, 0.5).pvalue)


def test_many_discordant_pairs_use_chi_square_with_continuity_correction() -> None:
    a, b = paired(10, 30)
    result = compare_predictions(a, b, n_bootstrap=200)
    assert (result["b01"], result["b10"], result["method"]) == (10, 30, "chi2")
    statistic = (abs(10 - 30) - 1) ** 2 / 40
    assert result["statistic"] == pytest.approx(statistic)
    assert result["p_value"] == pytest.approx(chi2.sf(statistic, df=1))


def test_the_method_switches_at_twenty_five_discordant_pairs() -> None:
    assert mcnemar(12, 12)["method"] == "exact"
    assert mcnemar(12, 13)["method"] == "chi2"
    assert mcnemar(0, 0) == {"method": "exact", "statistic": None, "p_value": 1.0}


def test_deltas_match_per_model_metrics_and_the_paired_bootstrap_is_seeded() -> None:
    a, b = paired(5, 20, both=60, neither=15)
    result = compare_predictions(a, b, seed=4)
    metrics_a = compute_metrics(a, n_bootstrap=0)
    metrics_b = compute_metrics(b, n_bootstrap=0)
    assert result["accuracy"]["a"] == pytest.approx(metrics_a["accuracy"])
    assert result["accuracy"]["b"] == pytest.approx(metrics_b["accuracy"])
    assert result["f1_macro"]["b"] == pytest.approx(metrics_b["macro"]["f1"])
    assert result["accuracy"]["delta"] == pytest.approx(0.15)
    for metric in ("accuracy", "f1_macro"):
        low, high = result[metric]["delta_ci"]
        assert 0.0 < low < result[metric]["delta"] < high
    assert compare_predictions(a, b, seed=4) == result
    reseeded = compare_predictions(a, b, seed=5)
    assert reseeded["accuracy"]["delta_ci"] != result["accuracy"]["delta_ci"]
    assert compare_predictions(a, b, n_bootstrap=0)["accuracy"]["delta_ci"] is None


def test_mismatched_prediction_sets_raise_evaluation_error() -> None:
    a, b = paired(3, 9)
    shifted = EvalArrays(np.roll(b.y_true, 1), b.probs, NAMES)
    with pytest.raises(EvaluationError, match="differ at"):
        compare_predictions(a, shifted)
    shorter = EvalArrays(b.y_true[:-1], b.probs[:-1], NAMES)
    with pytest.raises(EvaluationError, match="cover 52 and 51 images"):
        compare_predictions(a, shorter)
    renamed = EvalArrays(b.y_true, b.probs, ["clap", "sit", "run"])
    with pytest.raises(EvaluationError, match="class lists"):
        compare_predictions(a, renamed)
    with pytest.raises(EvaluationError, match="n_bootstrap"):
        compare_predictions(a, b, n_bootstrap=-5)


def _evaluation_folder(folder: Path, predicted: list[str], source: dict[str, Any] | None) -> str:
    """An evaluation folder as `clip-har evaluate` writes it (``source`` None: as it wrote it
    before sources were recorded)."""
    folder.mkdir()
    labels = ["clap", "run", "sit", "run"]
    pd.DataFrame(
        {"path": [f"img{i}.jpg" for i in range(4)], "label": labels, "predicted": predicted}
    ).to_csv(folder / "predictions.csv", index=False)
    details: dict[str, Any] = {"class_names": NAMES, "meta": {"images": 4}}
    if source is not None:
        details["source"] = source
    (folder / "metrics_full.json").write_text(json.dumps(details))
    return str(folder)


def test_compare_names_each_source_and_loads_evaluations_made_before_sources(
    tmp_path: Path,
) -> None:
    source = EvaluationSource(
        bundle="zs", backbone="tiny", random_weights=True, strategy="zero-shot",
        data="data", data_sha256="cd" * 32, split=None, format="torch",
    )  # fmt: skip
    new = _evaluation_folder(tmp_path / "new", ["clap", "run", "run", "sit"], source.to_json())
    old = _evaluation_folder(tmp_path / "old", ["clap", "run", "sit", "run"], None)
    report = compare_evaluations([new, old], tmp_path / "cmp", n_bootstrap=10)
    assert report["sources"] == [
        {"name": new, "source": source.to_json()},
        {"name": old, "source": None},
    ]
    assert report["warnings"] == [source.warning]
    assert source_rows(report["sources"]) == [
        (new, "tiny (RANDOM WEIGHTS)", "zero-shot", "data", "all rows", "cd" * 32),
        (old, *["not recorded"] * 5),
    ]
    for name in ("compare.md", "compare.html"):
        text = (tmp_path / "cmp" / name).read_text(encoding="utf-8")
        for expected in ("tiny (RANDOM WEIGHTS)", "meaningless", "zero-shot", "not recorded"):
            assert expected in text, (name, expected)


def test_compare_warns_when_the_evaluations_measured_different_data(tmp_path: Path) -> None:
    test_split = EvaluationSource(
        bundle="zs", backbone="tiny", random_weights=False, strategy="zero-shot",
        data="split", data_sha256="ab" * 32, split="test", format="torch",
    )  # fmt: skip
    all_rows = replace(test_split, data="all", data_sha256="cd" * 32, split=None)
    base = _evaluation_folder(tmp_path / "ev", ["clap", "run", "sit", "run"], test_split.to_json())
    same = _evaluation_folder(
        tmp_path / "same", ["clap", "run", "run", "sit"], test_split.to_json()
    )
    other = _evaluation_folder(tmp_path / "all", ["clap", "run", "run", "sit"], all_rows.to_json())
    assert compare_evaluations([base, same], tmp_path / "ok", n_bootstrap=0)["warnings"] == []

    report = compare_evaluations([base, other], tmp_path / "cmp", n_bootstrap=0)
    [warning] = report["warnings"]
    assert other in warning and "different data" in warning and "4 images" in warning
    assert "abababababab vs cdcdcdcdcdcd" in warning and "split test vs all rows" in warning
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["warnings"] == [warning]
    for name in ("compare.md", "compare.html"):
        assert "different data" in (tmp_path / "cmp" / name).read_text(encoding="utf-8"), name

    result = runner.invoke(app, ["evaluate", "compare", base, other, "-o", str(tmp_path / "c2")])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "different data" in result.stderr


def test_compare_with_one_evaluation_is_a_usage_error(tmp_path: Path) -> None:
    only = _evaluation_folder(tmp_path / "ev", ["clap", "run", "sit", "run"], None)
    result = runner.invoke(app, ["evaluate", "compare", only, "-o", str(tmp_path / "cmp")])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "at least two evaluations" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "cmp").exists()
