"""``clip-har evaluate`` and ``evaluate compare`` as a user runs them, on real photos."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_photo, run_cli

from clip_har.data.manifest import conform, read_manifest, write_manifest
from clip_har.models.bundle import open_bundle

pytestmark = pytest.mark.integration


def cli(cwd: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env={"CLIP_HAR_CACHE": str(cache)})


@pytest.fixture(scope="module")
def sample_split(
    har_sample_dir: Path, clip_har_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The 155 sample photos, split, plus a test row whose file was truncated after import."""
    root = tmp_path_factory.mktemp("eval")
    assert (
        cli(root, clip_har_cache, "data", "import", str(har_sample_dir), "-o", "imp").returncode
        == 0
    )
    done = cli(root, clip_har_cache, "data", "split", "imp", "-o", "split", "--seed", "1")
    assert done.returncode == 0, done.stderr
    frame = read_manifest(root / "split")
    broken = root / "broken.jpg"
    shutil.copy(frame["path"].iloc[0], broken)
    broken.write_bytes(broken.read_bytes()[:200])
    extra = frame.iloc[:1].assign(path=str(broken), split="test")
    write_manifest(pd.concat([frame, extra], ignore_index=True), root / "split")
    for prompts in ("actions", "minimal"):
        made = cli(
            root, clip_har_cache, "bundle", "create", "--model", "tiny", "--prompts", prompts,
            "-o", f"zs-{prompts}",
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    return root


def test_evaluate_writes_every_output_and_counts_unreadable_images(
    sample_split: Path, clip_har_cache: Path
) -> None:
    root = sample_split
    done = cli(
        root, clip_har_cache, "evaluate", "-b", "zs-actions", "-d", "split", "-o", "eval-a",
        "--tracking", "none",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = root / "eval-a"
    for name in ("metrics.json", "predictions.csv", "report.html", "report.md"):
        assert (out / name).is_file(), name
    assert {p.name for p in out.glob("*.png")} >= {"confusion_matrix.png", "examples.png"}
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")
    test_rows = int((read_manifest(root / "split")["split"] == "test").sum())
    assert len(predictions) == test_rows and metrics["unreadable"] == 1
    assert metrics["n_evaluated"] == test_rows - 1
    assert predictions["error"].notna().sum() == 1
    assert metrics["accuracy_ci_low"] <= metrics["accuracy"] <= metrics["accuracy_ci_high"]
    assert "accuracy [95% CI]" in done.stdout


def test_compare_identical_and_different_models(
    sample_split: Path, clip_har_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = sample_split
    store = f"sqlite:///{root / 'mlruns.db'}"
    for name in ("a", "b"):
        prompts = "actions" if name == "a" else "minimal"
        done = run_cli(
            "evaluate", "-b", f"zs-{prompts}", "-d", "split", "-o", f"eval-{name}",
            "--tracking", "mlflow", cwd=root,
            env={"CLIP_HAR_CACHE": str(clip_har_cache), "MLFLOW_TRACKING_URI": store},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    same = cli(root, clip_har_cache, "evaluate", "compare", "eval-a", "eval-a", "-o", "cmp-same")
    assert same.returncode == 0, same.stderr
    (row,) = json.loads((root / "cmp-same" / "compare.json").read_text())["comparisons"]
    assert row["p_value"] == 1.0 and row["accuracy"]["delta"] == 0.0
    assert row["accuracy"]["delta_ci"] == [0.0, 0.0]

    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    runs = mlflow.search_runs(experiment_names=["clip-har"], output_format="list")
    assert all("accuracy" in run.data.metrics for run in runs) and len(runs) == 2
    first, second = sorted(runs, key=lambda run: run.info.start_time)
    other = run_cli(
        "evaluate", "compare", first.info.run_id, second.info.run_id, "-o", "cmp", cwd=root,
        env={"MLFLOW_TRACKING_URI": store},
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    (row,) = json.loads((root / "cmp" / "compare.json").read_text())["comparisons"]
    assert 0.0 <= row["p_value"] <= 1.0 and row["n"] > 0
    low, high = row["f1_macro"]["delta_ci"]
    assert low <= row["f1_macro"]["delta"] <= high
    assert (root / "cmp" / "compare_delta.png").is_file() and "McNemar" in other.stdout


def test_unavailable_sources_and_formats_are_clear_errors(
    sample_split: Path, clip_har_cache: Path
) -> None:
    root = sample_split
    base = ("evaluate", "-d", "split", "-o", "x", "--tracking", "none")
    registry = cli(root, clip_har_cache, *base, "-b", "models:/har@prod")
    assert registry.returncode == 1 and "model registry" in registry.stderr
    onnx = cli(root, clip_har_cache, *base, "-b", "zs-actions", "--format", "onnx")
    assert onnx.returncode == 1 and "no 'onnx' export" in onnx.stderr
    split = cli(root, clip_har_cache, *base, "-b", "zs-actions", "--split", "holdout")
    assert split.returncode == 1 and "no rows in split 'holdout'" in split.stderr
    missing = cli(root, clip_har_cache, "evaluate", "compare", "eval-a", "nowhere", "-o", "c")
    assert missing.returncode == 1 and "not an evaluation folder" in missing.stderr


def test_predict_and_evaluate_accept_and_reject_the_same_images(
    tiny_bundle: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    """Both take the image guards from the settings: a 20x20 photo is too small for both
    by default (data.min_image_side 32), and usable by both when params.yaml lowers it."""
    sizes = {"small.png": (20, 20), "wide.png": (96, 64), "tall.jpg": (48, 80)}
    paths = [
        make_photo(tmp_path / name, size, seed=i) for i, (name, size) in enumerate(sizes.items())
    ]
    label = open_bundle(tiny_bundle).class_names[0]
    write_manifest(
        conform(pd.DataFrame({"path": map(str, paths), "label": label})), tmp_path / "data"
    )
    for min_side, small_usable in ((None, False), (16, True)):
        params = tmp_path / f"params-{min_side}.yaml"
        params.write_text(f"data:\n  min_image_side: {min_side}\n" if min_side else "{}\n")
        common = ("--params", str(params))
        predicted = cli(
            tmp_path, clip_har_cache, *common, "predict", *map(str, paths), "-b", str(tiny_bundle),
            "--print", "json", "--skip-errors",
        )  # fmt: skip
        assert predicted.returncode == 0, predicted.stderr
        predict_errors = {
            Path(row["path"]).name: row["error"] for row in json.loads(predicted.stdout)
        }
        out = tmp_path / f"eval-{min_side}"
        evaluated = cli(
            tmp_path, clip_har_cache, *common, "evaluate", "-b", str(tiny_bundle), "-d", "data",
            "--split", "all", "-o", str(out), "--bootstrap", "0", "--tracking", "none",
        )  # fmt: skip
        assert evaluated.returncode == 0, evaluated.stderr
        rows = pd.read_csv(out / "predictions.csv")
        evaluate_errors = {
            Path(path).name: None if pd.isna(error) else error
            for path, error in zip(rows["path"], rows["error"], strict=True)
        }
        assert evaluate_errors == predict_errors
        assert (predict_errors["small.png"] is None) == small_usable
        if not small_usable:
            assert "minimum side is 32 px" in str(predict_errors["small.png"])
        assert predict_errors["wide.png"] is None and predict_errors["tall.jpg"] is None
