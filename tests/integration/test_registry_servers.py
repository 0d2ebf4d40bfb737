"""Acceptance 3 of issue 14: the whole registry lifecycle against real servers on loopback.

``clip-har mlflow serve`` is the tracking and registry server; a training is tracked there,
evaluated, exported, registered and promoted to ``@production``; ``clip-har predict
--bundle models:/NAME@production`` predicts what the bundle itself predicts; and
``mlflow models serve`` on the alias labels a real photo over HTTP. Both servers are
stopped (their whole process groups) whatever happens.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, HAR_DATA, free_port, make_photo, run_cli, stop_process_group

from clip_har.models.bundle import open_bundle

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

NAME = "har-servers"
STARTUP_S = 120  # a loaded CI machine takes tens of seconds to start either server
CLASSES = ("running", "eating", "texting")


def wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Poll ``url`` until it answers 200; fail with the log if the process dies or is slow."""
    deadline = time.monotonic() + STARTUP_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"server exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} not up in {STARTUP_S}s:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``clip-har mlflow serve`` on a free loopback port with stores in ``tmp_path``."""
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    command = [
        *(CLI, "mlflow", "serve", "--host", "127.0.0.1", "--port", str(port)),
        *("--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"),
        *("--artifacts-destination", str(tmp_path / "server-artifacts")),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, f"{url}/health", log)
        assert f"export MLFLOW_TRACKING_URI={url}" in log.read_text()
        yield url, process
    finally:
        stop_process_group(process)


def a_real_photo(tmp_path: Path) -> Path:
    """The first photo of shared/data/har/sample when present, else a generated one."""
    images = HAR_DATA / "sample" / "images"
    found = sorted(images.iterdir()) if images.is_dir() else []
    return found[0] if found else make_photo(tmp_path / "photo.jpg", (160, 120), seed=99)


def test_train_register_promote_and_serve_through_real_mlflow_servers(
    server: tuple[str, subprocess.Popen[bytes]], clip_har_cache: Path, tmp_path: Path
) -> None:
    url, tracking_server = server
    env = {"MLFLOW_TRACKING_URI": url, "CLIP_HAR_CACHE": str(clip_har_cache)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = run_cli(*args, env=env, cwd=tmp_path, timeout=240)
        assert done.returncode == 0, f"clip-har {' '.join(args)}:\n{done.stderr}"
        return done

    # a small labelled photo set, through the CLI
    for c, label in enumerate(CLASSES):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(6):
            make_photo(tmp_path / "photos" / label / f"{i}.png", (96, 80 + c), seed=10 * c + i)
    cli("data", "import", "photos", "-o", "raw")
    cli("data", "validate", "raw", "-o", "valid")
    cli(
        "data", "split", "valid", "-o", "split", "--ratios", "0.5,0.25,0.25", "--near-distance", "0"
    )

    # train tracked on the server, evaluate, export, register, promote
    cli(
        *("train", "--model", "tiny", "--prompts", "minimal", "-d", "split", "-o", "bundle"),
        *("-s", "linear-probe", "--epochs", "3", "--tracking", "mlflow"),
    )
    run_id = open_bundle(tmp_path / "bundle").manifest.lineage.run_id
    assert run_id is not None
    cli("evaluate", "-b", "bundle", "-d", "split", "-o", "evaluation", "--bootstrap", "20")
    cli("export", "bundle", "--formats", "onnx")
    cli("registry", "register", "bundle", "--name", NAME, "--evaluation", "evaluation")
    cli("registry", "promote", NAME, "1", "--alias", "production", "--reason", "first model")

    from mlflow import MlflowClient

    client = MlflowClient(url)
    production = client.get_model_version_by_alias(NAME, "production")
    assert production.version == "1" and production.run_id
    assert client.get_run(run_id).info.experiment_id  # the training run lives on the server

    # predict through the registry: the same labels as the bundle folder itself
    photo = a_real_photo(tmp_path)
    photos = [str(photo), str(tmp_path / "photos")]

    def predict(bundle: str) -> list[str]:
        done = run_cli("predict", *photos, "-b", bundle, "--print", "json", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return [row["label"] for row in json.loads(done.stdout)]

    local = predict("bundle")
    assert predict(f"models:/{NAME}@production") == local

    # MLflow's own model server on the alias labels a real photo
    port = free_port()
    log = tmp_path / "models-serve.log"
    command = [
        *(sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@production"),
        *("--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)),
    ]
    with log.open("wb") as out:
        model_server = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            # it runs `uvicorn` by name: the environment's bin folder is on PATH, as when activated
            env={
                **os.environ,
                **env,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            },
            start_new_session=True,
        )
    try:
        wait_until_up(model_server, f"http://127.0.0.1:{port}/ping", log)
        body = {"dataframe_records": [{"image": base64.b64encode(photo.read_bytes()).decode()}]}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            predictions = json.loads(answer.read())["predictions"]
    finally:
        stop_process_group(model_server)
    classes = open_bundle(tmp_path / "bundle").class_names
    assert len(predictions) == 1 and predictions[0]["label"] in classes
    assert predictions[0]["label"] == local[0]
    assert len(predictions[0]["probabilities"]) == len(classes)

    # Ctrl-C on `clip-har mlflow serve` stops the server it runs and exits 130
    os.killpg(tracking_server.pid, signal.SIGINT)
    assert tracking_server.wait(timeout=60) == 130
    with pytest.raises((urllib.error.URLError, OSError)):
        urllib.request.urlopen(f"{url}/health", timeout=2)
