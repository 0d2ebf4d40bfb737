"""``clip-har train`` as a user runs it: cached features, a bundle, and an MLflow run in
the default local SQLite store; an unreachable tracking server does not stop training."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, make_photo, run_cli

from clip_har.data.manifest import read_manifest, write_manifest
from clip_har.data.sources import import_source
from clip_har.data.splits import split_manifest
from clip_har.models.bundle import open_bundle
from clip_har.training.strategies import STRATEGIES

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
    assert bad.returncode == 2 and "'magic' is not one of" in bad.stderr  # a usage error
    assert all(name in bad.stderr for name in STRATEGIES)  # the registry names them all
    (tmp_path / "params.yaml").write_text("train:\n  strategy: wizardry\n")
    from_params = train(tmp_path, clip_har_cache, "-d", str(split_dir), "-o", "b")
    assert from_params.returncode == 1 and "train.strategy" in from_params.stderr
    (tmp_path / "params.yaml").unlink()
    spread = train(tmp_path, clip_har_cache, "-d", str(split_dir), "-o", "b", "--distributed", "x")
    assert spread.returncode == 2 and "train.distributed" in spread.stderr
    assert "Traceback" not in bad.stderr + from_params.stderr + spread.stderr
    unsplit = import_source(str(split_dir.parent / "photos"), workers=1)
    write_manifest(unsplit, tmp_path / "unsplit")
    missing = train(tmp_path, clip_har_cache, "-d", str(tmp_path / "unsplit"), "-o", "b")
    assert missing.returncode == 1 and "run `clip-har data split` first" in missing.stderr


def test_training_on_unreadable_train_images_is_a_clear_error(
    split_dir: Path, tmp_path: Path
) -> None:
    """Every train photo truncated after the split: one message naming the split, no bug.
    A fresh cache, so no feature cached by another test stands in for the broken files."""
    manifest = read_manifest(split_dir)
    for path in manifest.loc[manifest["split"] == "train", "path"]:
        Path(path).write_bytes(b"\x89PNG\r\n")
    cache = tmp_path / "cache"
    result = train(tmp_path, cache, "-d", str(split_dir), "-o", "b", "-s", "linear-probe")
    assert result.returncode == 1, result.stderr
    assert "no train image could be read" in result.stderr
    assert "Traceback" not in result.stderr and "bug" not in result.stderr
    assert not (tmp_path / "b").exists()


def test_checkpoints_and_resume_through_the_cli(
    split_dir: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    args = ("-d", str(split_dir), "-s", "zs-init-linear", "--epochs", "2", "--tracking", "none")
    first = train(tmp_path, clip_har_cache, *args, "-o", "a", "--checkpoint-dir", "ckpt")
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file()
    again = train(
        tmp_path, clip_har_cache, *args, "-o", "b", "--checkpoint-dir", "ckpt", "--resume"
    )
    assert again.returncode == 0, again.stderr
    metrics = [open_bundle(tmp_path / name).manifest.metrics for name in ("a", "b")]
    assert metrics[0]["val_accuracy"] == metrics[1]["val_accuracy"]
    no_dir = train(tmp_path, clip_har_cache, *args, "-o", "c", "--resume")
    assert no_dir.returncode == 2 and "--resume needs --checkpoint-dir" in no_dir.stderr  # usage


def test_end_to_end_training_shows_epoch_loss_accuracy_and_time_left_on_a_terminal(
    split_dir: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    """``train -s partial`` used to show a stale ``embedding 30/30`` bar for the whole fit."""
    terminal = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "TERM": "xterm", "COLUMNS": "160"}
    args = ("-d", str(split_dir), "-o", "b", "-s", "partial", "--blocks", "1", "--epochs", "2")
    done = train(tmp_path, clip_har_cache, *args, "--batch-size", "4", env=terminal)
    assert done.returncode == 0, done.stderr
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", done.stderr)
    assert re.search(
        r"epoch 2/2 · loss \d+\.\d{3} · val acc \d\.\d{3} .* ETA \d+:\d\d:\d\d", screen
    )
    assert "embedding" in screen and "epoch" not in done.stdout  # progress: stderr only


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "distributed"),
    [("lora", "ddp"), ("partial", "fsdp"), ("zs-init-linear", "ddp")],
)
def test_torchrun_trains_and_rank_0_writes_the_bundle(
    split_dir: Path, clip_har_cache: Path, tmp_path: Path, strategy: str, distributed: str
) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()), "-m", "clip_har.cli", "train",
        "-d", str(split_dir), "-o", str(tmp_path / distributed), "-s", strategy,
        "--blocks", "1", "--epochs", "2", "--batch-size", "4", "--distributed", distributed,
        "--tracking", "none",
        "--model", "tiny", "--prompts", "minimal",
    ]  # fmt: skip
    env = {**os.environ, "CLIP_HAR_CACHE": str(clip_har_cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    bundle = open_bundle(tmp_path / distributed)
    if STRATEGIES[strategy].end_to_end:
        assert bundle.manifest.encoder is not None and bundle.manifest.encoder.method == strategy
    assert done.stdout.count("trained val accuracy") == 1  # rank 0 alone reports
    assert bundle.load_classifier() is not None


def test_outputs_of_one_train_run_never_overlap(
    split_dir: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    """Checkpoints inside the bundle would be lost when the bundle is published (and a
    bundle inside the checkpoints emptied by the next fresh run): refused before any work."""
    base = ("-d", str(split_dir), "-s", "partial", "--epochs", "1")
    inside = train(tmp_path, clip_har_cache, *base, "-o", "bq", "--checkpoint-dir", "bq/ck")
    assert inside.returncode == 2, inside.stderr
    assert "--checkpoint-dir bq/ck is inside --output bq" in inside.stderr
    holding = train(tmp_path, clip_har_cache, *base, "-o", "ck/b", "--checkpoint-dir", "ck")
    assert holding.returncode == 2 and "--output ck/b is inside --checkpoint-dir" in holding.stderr
    metrics = train(tmp_path, clip_har_cache, *base, "-o", "b", "--metrics", "b/m.json")
    assert metrics.returncode == 2 and "--metrics b/m.json is inside --output b" in metrics.stderr
    assert not any((tmp_path / name).exists() for name in ("bq", "ck", "b"))


def test_resume_without_a_checkpoint_fails_instead_of_starting_over(
    split_dir: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    args = ("-d", str(split_dir), "-o", "b", "-s", "partial", "--epochs", "1", "--resume")
    missing = train(tmp_path, clip_har_cache, *args, "--checkpoint-dir", "nock")
    assert missing.returncode == 1, missing.stderr
    assert "--checkpoint-dir nock does not exist" in missing.stderr
    assert "drop --resume to start a fresh run" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = train(tmp_path, clip_har_cache, *args, "--checkpoint-dir", "empty")
    assert empty.returncode == 1 and "--checkpoint-dir empty holds no checkpoint" in empty.stderr
    assert "Traceback" not in missing.stderr + empty.stderr
    assert not (tmp_path / "b").exists()


def test_training_a_random_weights_preset_says_so(
    split_dir: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    done = train(tmp_path, clip_har_cache, "-d", str(split_dir), "-o", "b", "-s", "linear-probe")
    assert done.returncode == 0, done.stderr
    assert "tiny (RANDOM WEIGHTS)" in done.stdout


def test_the_first_mlflow_run_logs_no_database_setup(
    split_dir: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    """MLflow creates its local SQLite store on the first run; its INFO lines (and
    alembic's migrations) stay off stderr at the default verbosity."""
    args = ("-d", str(split_dir), "-o", "b", "-s", "linear-probe", "--tracking", "mlflow")
    done = train(tmp_path, clip_har_cache, *args, env={"MLFLOW_LOGGING_LEVEL": ""})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mlruns.db").is_file()  # the store was created by this run
    for noise in ("INFO", "MLflow database tables", "alembic", "Context impl"):
        assert noise not in done.stderr
