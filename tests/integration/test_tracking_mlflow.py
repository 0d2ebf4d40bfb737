"""A real ``mlflow server`` on loopback: a run logged through the tracker is searchable there."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from conftest import free_port, stop_process_group
from mlflow import MlflowClient

from clip_har.tracking import FanOutTracker, MLflowTracker, create_tracker, run_tags

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STARTUP_TIMEOUT_S = 60


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """``mlflow server`` with a SQLite store and proxied artifacts; yields its URL."""
    url = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path / "server.log"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        url.rsplit(":", 1)[1],
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        "--artifacts-destination",
        str(tmp_path / "art"),
    ]
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited ({server.returncode}):\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server not up in {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()}"
                )
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(server)


def test_a_run_logged_through_the_tracker_is_searchable_on_the_server(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    plot = tmp_path / "curve.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    tags = run_tags(backbone_fingerprint="tiny@1234", data_version=None)
    tracker = create_tracker(["mlflow"], experiment="server", strict=True, root=tmp_path)
    assert isinstance(tracker, FanOutTracker)
    (backend,) = tracker.trackers
    assert isinstance(backend, MLflowTracker) and backend.tracking_uri == mlflow_server
    with tracker:
        tracker.start("served", params={"train": {"lr": 0.1}}, tags=tags)
        for step in range(3):
            tracker.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step, epoch=step)
        tracker.log_artifact(plot, name="plots")

    (run,) = mlflow.search_runs(experiment_names=["server"], output_format="list")
    assert run.info.run_id == tracker.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.1"
    assert run.data.metrics == {"train/loss": 1.0 / 3, "epoch": 2.0}
    assert run.data.tags["backbone_fingerprint"] == "tiny@1234"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    client = MlflowClient(mlflow_server)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/curve.png"]
    stored = tmp_path / "art" / run.info.experiment_id / run.info.run_id / "artifacts"
    assert (stored / "plots" / "curve.png").read_bytes() == plot.read_bytes()
