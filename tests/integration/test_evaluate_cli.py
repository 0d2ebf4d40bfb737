"""``clip-har evaluate`` and ``evaluate compare`` as a user runs them, on real photos."""

from __future__ import annotations

import hashlib
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
    # wide enough that rich never wraps a table cell of a temporary path
    return run_cli(*args, cwd=cwd, env={"CLIP_HAR_CACHE": str(cache), "COLUMNS": "400"})


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
            "--tracking", "mlflow", "--force", cwd=root,  # eval-a exists: tracked this time
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
    nowhere = f"sqlite:///{root / 'no-such-store.db'}"  # a store nobody made: not created
    registry = run_cli(
        *base,
        "-b",
        "models:/har@prod",
        cwd=root,
        env={"CLIP_HAR_CACHE": str(clip_har_cache), "MLFLOW_TRACKING_URI": nowhere},
    )
    assert registry.returncode == 1 and "no model registry" in registry.stderr
    assert not (root / "no-such-store.db").exists()
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


@pytest.fixture
def unsplit_data(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A manifest of six generated photos, labelled, with no split column values."""
    classes = open_bundle(tiny_bundle).class_names
    paths = [make_photo(tmp_path / f"p{i}.jpg", (96, 72), seed=i) for i in range(6)]
    labels = [classes[i % 3] for i in range(len(paths))]
    frame = pd.DataFrame({"path": list(map(str, paths)), "label": labels})
    write_manifest(conform(frame), tmp_path / "data")
    return tmp_path / "data"


def test_evaluation_without_splits_is_titled_all_rows(
    tiny_bundle: Path, unsplit_data: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    """Defect 6: a manifest without splits is evaluated whole and every output says "all
    rows", never "(test)"; naming a split it does not have is a usage error."""
    common = ("evaluate", "-b", str(tiny_bundle), "-d", str(unsplit_data), "--tracking", "none")
    done = cli(tmp_path, clip_har_cache, *common, "-o", "out", "--bootstrap", "0")
    assert done.returncode == 0, done.stderr
    assert "(all rows)" in done.stdout and "(test)" not in done.stdout
    out = tmp_path / "out"
    assert len(pd.read_csv(out / "predictions.csv")) == 6
    source = json.loads((out / "metrics.json").read_text())["source"]
    assert source["split"] is None and source["rows"] == "all rows"
    for report in ("report.md", "report.html"):
        text = (out / report).read_text(encoding="utf-8")
        assert "(all rows)" in text and "(test)" not in text, report

    refused = cli(tmp_path, clip_har_cache, *common, "-o", "refused", "--split", "test")
    assert refused.returncode == 2, refused.stderr
    assert "has no split column" in refused.stderr and "clip-har data split" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()


def test_reports_name_backbone_strategy_data_and_random_weights(
    tiny_bundle: Path, unsplit_data: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    """Defect 9: the evaluate table, both reports, metrics.json and every compare output
    name the backbone (flagged RANDOM WEIGHTS for the tiny preset), the strategy and the data
    (manifest and its sha256); an evaluation made before they were recorded still compares."""
    digest = hashlib.sha256((unsplit_data / "manifest.parquet").read_bytes()).hexdigest()
    common = ("evaluate", "-b", str(tiny_bundle), "-d", str(unsplit_data), "--tracking", "none")
    done = cli(tmp_path, clip_har_cache, *common, "-o", "new", "--bootstrap", "0")
    assert done.returncode == 0, done.stderr
    for expected in ("tiny (RANDOM WEIGHTS)", "zero-shot", str(unsplit_data), digest):
        assert expected in done.stdout, expected
    assert "meaningless" in done.stderr  # the warning, next to the table
    new = tmp_path / "new"
    source = json.loads((new / "metrics.json").read_text())["source"]
    assert source["backbone"] == "tiny" and source["random_weights"] is True
    assert source["strategy"] == "zero-shot" and source["data_sha256"] == digest
    assert source["data"] == str(unsplit_data) and source["bundle"] == str(tiny_bundle)
    for report in ("report.md", "report.html"):
        text = (new / report).read_text(encoding="utf-8")
        for expected in ("tiny (RANDOM WEIGHTS)", "meaningless", "zero-shot", digest):
            assert expected in text, (report, expected)

    old = tmp_path / "old"  # as clip-har wrote it before sources were recorded
    shutil.copytree(new, old)
    details = json.loads((old / "metrics_full.json").read_text())
    del details["source"]
    (old / "metrics_full.json").write_text(json.dumps(details))
    compared = cli(tmp_path, clip_har_cache, "evaluate", "compare", "new", "old", "-o", "cmp")
    assert compared.returncode == 0, compared.stderr
    assert "tiny (RANDOM WEIGHTS)" in compared.stdout and "not recorded" in compared.stdout
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [entry["name"] for entry in report["sources"]] == ["new", "old"]
    assert report["sources"][0]["source"]["random_weights"] is True
    assert report["sources"][1]["source"] is None
    assert any("RANDOM WEIGHTS" in note for note in report["warnings"])
    for name in ("compare.md", "compare.html"):
        text = (tmp_path / "cmp" / name).read_text(encoding="utf-8")
        for expected in ("tiny (RANDOM WEIGHTS)", "zero-shot", digest, "not recorded"):
            assert expected in text, (name, expected)
