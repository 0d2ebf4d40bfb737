"""``clip-har train`` as a user runs it: cached features, a bundle, and an MLflow run in
the default local SQLite store; an unreachable tracking server does not stop training."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import make_photo, run_cli

from clip_har.data.manifest import write_manifest
from clip_har.data.sources import import_source
from clip_har.data.splits import split_manifest
from clip_har.models.bundle import open_bundle

pytestmark = pytest.mark.integration


@pytest.fixture
def split_dir(tmp_path: Path) -> Path:
    for c, label in enumerate(("running", "eating", "texting")):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(6):
            make_photo(tmp_path / "photos" / label / f"{i}.png", size=(64, 48 + c), seed=10 * c + i)
    manifest = import_source(str(tmp_path / "photos"), workers=1)
    split = split_manifest(manifest, (0.5, 0.5, 0.0), seed=0, near_distance=0)
    return write_manifest(split.manifest, tmp_path / "split").parent


def train(
    cwd: Path, cache: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``clip-har train`` on the tiny preset, with MLflow's default local store in ``cwd``."""
    base = {"CLIP_HAR_CACHE": str(cache), "MLFLOW_TRACKING_URI": "", "WANDB_MODE": "offline"}
    return run_cli(
        "train", "--model", "tiny", "--prompts", "minimal", *args, cwd=cwd, env=base | (env or {})
    )


def test_train_writes_a_bundle_and_an_mlflow_run(
    split_dir: Path, clip_har_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = train(
        tmp_path,
        clip_har_cache,
        "-d",
        str(split_dir),
        "-o",
        "bundle",
        "-s",
        "linear-probe",
        "--tracking",
        "mlflow",
    )
    assert done.returncode == 0, done.stderr
    assert "trained val accuracy" in done.stdout
    bundle = open_bundle(tmp_path / "bundle")
    assert bundle.manifest.head.type == "linear"
    run_id = bundle.manifest.lineage.run_id
    assert run_id and (tmp_path / "mlruns.db").is_file()

    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["clip-har"], output_format="list")
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.data.params["train.strategy"] == "linear-probe"
    assert run.data.metrics["val_accuracy"] == pytest.approx(
        bundle.manifest.metrics["val_accuracy"]
    )
    assert run.data.tags["backbone_fingerprint"] == bundle.manifest.backbone.fingerprint
    artifacts = mlflow.MlflowClient().list_artifacts(run_id, "bundle")
    assert {Path(a.path).name for a in artifacts} >= {"manifest.json", "head.safetensors"}


def test_unreachable_tracking_server_does_not_stop_training(
    split_dir: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    args = ("-d", str(split_dir), "-o", "bundle", "-s", "tip-adapter", "--tracking", "mlflow")
    unreachable = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    done = train(tmp_path, clip_har_cache, *args, env=unreachable)
    assert done.returncode == 0, done.stderr
    assert "training goes on without mlflow" in done.stderr
    assert open_bundle(tmp_path / "bundle").manifest.head.type == "tip_adapter"

    strict = train(tmp_path, clip_har_cache, *args, "--force", "--strict-tracking", env=unreachable)
    assert strict.returncode == 1 and "mlflow" in strict.stderr.lower()


def test_bad_strategy_and_missing_splits_are_clear_errors(
    split_dir: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    bad = train(tmp_path, clip_har_cache, "-d", str(split_dir), "-o", "b", "-s", "magic")
    assert bad.returncode == 1 and "unknown strategy 'magic'" in bad.stderr
    unsplit = import_source(str(split_dir.parent / "photos"), workers=1)
    write_manifest(unsplit, tmp_path / "unsplit")
    missing = train(tmp_path, clip_har_cache, "-d", str(tmp_path / "unsplit"), "-o", "b")
    assert missing.returncode == 1 and "run `clip-har data split` first" in missing.stderr
