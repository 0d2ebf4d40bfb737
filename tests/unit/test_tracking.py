"""Experiment tracking: MLflow (local SQLite) and W&B (offline) record the same run; lineage
tags; a failing backend warns once and the run goes on, or raises when tracking is strict."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

from clip_har.errors import ConfigError, TrackingError
from clip_har.tracking import (
    FanOutTracker,
    MLflowTracker,
    NullTracker,
    WandbTracker,
    create_tracker,
    flatten,
    run_tags,
    system_info,
)
from clip_har.tracking.wandb_backend import resolve_mode

UNREACHABLE = "http://127.0.0.1:9"
PARAMS = {"train": {"lr": 0.01, "epochs": 2, "head": "linear"}, "classes": ["run", "sit"]}
STEPS = [
    ({"train/loss": 1.5}, 0, None),
    ({"train/loss": 1.0}, 1, None),
    ({"train/loss": 0.7, "val/accuracy": 0.5}, 2, 0),
    ({"train/loss": 0.4}, 3, None),
    ({"train/loss": 0.25, "val/accuracy": 0.75}, 4, 1),
]


@pytest.fixture(autouse=True)
def tracking_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking server, W&B offline and quiet, every W&B folder inside ``tmp_path``."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite MLflow store for the module: creating its tables takes seconds."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def artifacts(tmp_path: Path) -> tuple[Path, Path]:
    """A bundle-like directory and a plot file."""
    bundle = tmp_path / "tiny-har"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"name": "tiny-har"}\n')
    (bundle / "head.safetensors").write_bytes(b"\0" * 64)
    plot = tmp_path / "confusion.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    return bundle, plot


def log_run(tracker: Any, tags: dict[str, str], bundle: Path, plot: Path) -> None:
    """What a trainer does: start, step and epoch metrics, bundle and plot artifacts."""
    with tracker:
        tracker.start("unit-run", params=PARAMS, tags=tags)
        for metrics, step, epoch in STEPS:
            tracker.log_metrics(metrics, step=step, epoch=epoch)
        tracker.log_artifact(bundle)
        tracker.log_artifact(plot, name="plots")


def expected_history() -> dict[str, list[tuple[int, float]]]:
    """Metric -> [(step, value)] as logged by :func:`log_run`."""
    history: dict[str, list[tuple[int, float]]] = {}
    for metrics, step, epoch in STEPS:
        logged = {**metrics, **({"epoch": float(epoch)} if epoch is not None else {})}
        for key, value in logged.items():
            history.setdefault(key, []).append((step, value))
    return history


def wandb_records(run_dir: Path) -> Iterator[Any]:
    """The protobuf records of an offline run's ``run-ID.wandb`` transaction log.

    The file is a LevelDB-style log: a 7-byte W&B header, then 32 KiB blocks of chunks,
    each ``crc32 (4) | length (2) | type (1)``; type 1 is a whole record, 2/3/4 are the
    first/middle/last pieces of one. Each record is a ``wandb_internal_pb2.Record``.
    """
    from wandb.proto.wandb_internal_pb2 import Record

    (log_file,) = run_dir.glob("run-*.wandb")
    data = log_file.read_bytes()
    assert data[:4] == b":W&B", f"{log_file} is not a W&B transaction log"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # the rest of a block is zero padding
            position += block - position % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            yield record


def wandb_history(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Metric -> [(step, value)] from the offline run's history records."""
    history: dict[str, list[tuple[int, float]]] = {}
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {
            i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item
        }
        step = int(items.pop("_step"))
        for key, value in items.items():
            if not key.startswith("_"):
                history.setdefault(key, []).append((step, float(value)))
    return history


def test_flatten_nests_with_dots_and_keeps_scalars() -> None:
    flat = flatten({"a": {"b": {"c": 1}, "d": True}, "e": [1, "x"], "f": Path("p"), "g": None})
    assert flat == {"a.b.c": 1, "a.d": True, "e": '[1, "x"]', "f": "p", "g": "None"}
    assert flatten({"lr": 0.1}, prefix="train.") == {"train.lr": 0.1}


def test_system_info_names_the_software_and_machine() -> None:
    info = system_info()
    assert info["python"] == platform.python_version()
    assert info["torch"].startswith("2.")
    assert int(info["cpu_count"]) == os.cpu_count()
    assert info["platform"]


def git(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        **{
            f"GIT_{w}_{f}": v
            for w in ("AUTHOR", "COMMITTER")
            for f, v in (("NAME", "t"), ("EMAIL", "t@e.x"))
        },
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_run_tags_carry_git_commit_dirty_flag_data_version_and_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git("init", "--quiet", cwd=tmp_path)
    (tmp_path / "params.yaml").write_text("lr: 0.1\n")
    git("add", "params.yaml", cwd=tmp_path)
    git("commit", "--quiet", "-m", "params", cwd=tmp_path)
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    monkeypatch.chdir(tmp_path)

    tags = run_tags(backbone_fingerprint="tiny@1234", data_version="0123abcd")
    assert tags == {
        "git_commit": git("rev-parse", "HEAD", cwd=tmp_path),
        "git_dirty": "false",
        "data_version": "0123abcd",
        "backbone_fingerprint": "tiny@1234",
        "torch_version": system_info()["torch"],
        "host": platform.node(),
    }
    (tmp_path / "params.yaml").write_text("lr: 0.2\n")
    assert run_tags(backbone_fingerprint=None, data_version=None)["git_dirty"] == "true"


def test_run_tags_leave_out_what_cannot_be_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    tags = run_tags(backbone_fingerprint=None, data_version=None)
    assert set(tags) == {"torch_version", "host"}  # not a git repository
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no git at all
    assert set(run_tags(backbone_fingerprint="f", data_version="v")) == {
        "torch_version",
        "host",
        "backbone_fingerprint",
        "data_version",
    }


@pytest.mark.timeout(120)
def test_mlflow_and_wandb_record_the_same_run(
    tmp_path: Path, store: Path, artifacts: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, plot = artifacts
    tags = run_tags(backbone_fingerprint="tiny@1234", data_version="0123abcd")
    tracker = create_tracker(["mlflow", "wandb"], experiment="acceptance", root=store)
    assert isinstance(tracker, FanOutTracker)
    log_run(tracker, tags, bundle, plot)
    assert len(tracker.active) == 2, "a backend failed"
    mlflow_tracker, wandb_tracker = tracker.trackers
    assert isinstance(mlflow_tracker, MLflowTracker)
    assert isinstance(wandb_tracker, WandbTracker)
    assert tracker.run_id == mlflow_tracker.run_id

    # MLflow: search_runs shows params, metrics, tags; the artifact store holds the files.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracker.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["acceptance"], output_format="list")
    (run,) = runs
    assert run.info.run_id == mlflow_tracker.run_id
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "unit-run"
    params = run.data.params
    assert params["train.lr"] == "0.01" and params["train.head"] == "linear"
    assert params["classes"] == '["run", "sit"]'
    assert params["system.python"] == platform.python_version()
    assert "system.cpu_count" in params and "system.torch" in params
    assert {k: run.data.tags[k] for k in tags} == tags
    assert run.data.metrics == {"train/loss": 0.25, "val/accuracy": 0.75, "epoch": 1.0}
    client = MlflowClient(mlflow_tracker.tracking_uri)
    history = expected_history()
    for key, points in history.items():
        logged = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in logged] == points, key
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert listed == {"tiny-har", "plots"}
    bundle_files = {a.path for a in client.list_artifacts(run.info.run_id, "tiny-har")}
    assert bundle_files == {"tiny-har/manifest.json", "tiny-har/head.safetensors"}
    local = Path(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "dl"))
    )
    assert (local / "plots" / "confusion.png").read_bytes() == plot.read_bytes()
    assert str(store / "mlartifacts") in run.info.artifact_uri

    # W&B: the offline run directory holds the same metrics, params, tags and artifacts.
    run_dir = wandb_tracker.run_dir
    assert run_dir is not None and run_dir.name.startswith("offline-run-")
    assert run_dir.is_relative_to(Path(os.environ["WANDB_DIR"]))
    assert wandb_history(run_dir) == history
    records = list(wandb_records(run_dir))
    (start,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert start.run_id == wandb_tracker.run_id and start.display_name == "unit-run"
    config = {u.key: json.loads(u.value_json) for u in start.config.update}
    assert config["train.lr"] == 0.01 and config["system.python"] == platform.python_version()
    assert {k: config[f"tag.{k}"] for k in tags} == tags
    logged = {
        r.artifact.name: r.artifact for r in records if r.WhichOneof("record_type") == "artifact"
    }
    assert {p.path for p in logged["tiny-har"].manifest.contents} == {
        "manifest.json",
        "head.safetensors",
    }
    assert [p.path for p in logged["plots"].manifest.contents] == ["confusion.png"]
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0


def test_a_run_that_raises_is_marked_failed(store: Path) -> None:
    tracker = MLflowTracker("failures", root=store)
    with pytest.raises(RuntimeError, match="diverged"), tracker:
        tracker.start("crash", params={}, tags={})
        tracker.log_metrics({"loss": float("nan")}, step=0)
        raise RuntimeError("diverged")
    assert tracker.run_id is not None
    assert MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).info.status == "FAILED"
    tracker.finish()  # idempotent: the run stays FAILED
    assert MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).info.status == "FAILED"


def test_unreachable_server_warns_once_and_the_run_goes_on(
    store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", UNREACHABLE)
    healthy = MLflowTracker("survivor", tracking_uri=f"sqlite:///{store / 'mlruns.db'}", root=store)
    tracker = FanOutTracker([MLflowTracker("lost", root=store), healthy])
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="clip_har.tracking"), tracker:
        tracker.start("goes-on", params=PARAMS, tags={})
        for metrics, step, epoch in STEPS:
            tracker.log_metrics(metrics, step=step, epoch=epoch)
    assert time.monotonic() - began < 15
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("clip_har")
    ]
    assert len(warnings) == 1 and UNREACHABLE in warnings[0] and "goes on" in warnings[0]
    assert tracker.active == [healthy]
    assert tracker.run_id == healthy.run_id is not None
    run = MlflowClient(healthy.tracking_uri).get_run(healthy.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["train/loss"] == 0.25


def test_unreachable_server_raises_when_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", UNREACHABLE)
    tracker = create_tracker(["mlflow"], experiment="strict", strict=True)
    began = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable"), tracker:
        tracker.start("strict", params={}, tags={})
    assert time.monotonic() - began < 15


def test_create_tracker_by_name() -> None:
    assert isinstance(create_tracker([], experiment="x"), NullTracker)
    assert isinstance(create_tracker(["none"], experiment="x"), NullTracker)
    with pytest.raises(ConfigError, match="comet"):
        create_tracker(["mlflow", "comet"], experiment="x")
    duplicate = create_tracker(["wandb", "wandb"], experiment="x")
    assert isinstance(duplicate, FanOutTracker) and len(duplicate.trackers) == 1


def test_wandb_goes_online_only_when_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert resolve_mode(None) == "offline"
    assert resolve_mode("disabled") == "disabled"
    (tmp_path / "netrc").write_text(
        "machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n"
    )
    assert resolve_mode(None) == "online"  # after `wandb login`
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode(None) is None  # W&B itself reads WANDB_MODE
