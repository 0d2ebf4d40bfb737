"""Torch-free serving: an ONNX bundle predicts (and takes open-vocabulary labels through its
exported text encoder) without importing torch or transformers, and the package installed
with the ``[serve]`` extra alone — what the container image holds — serves it over HTTP."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, make_photo, stop_process_group

from clip_har.models.bundle import open_bundle

ROOT = Path(__file__).resolve().parents[2]
# what the [serve] install must not contain (mlflow-skinny, for models:/ URIs, is fine)
TRAINING_STACK = ("torch", "transformers", "dvc", "wandb", "mlflow", "datasets", "kornia", "peft")
READY_TIMEOUT_S = 120

# run in a fresh interpreter: the test process itself has torch loaded by other tests
IMPORT_CHECK = """
import json, sys
from pathlib import Path
from clip_har.inference.predictor import Predictor

bundle, photo, format = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
predictor = Predictor.from_bundle(bundle, format=format)
closed = next(predictor.predict_files([photo])).prediction
opened = next(predictor.with_labels(["a", "b"]).predict_files([photo])).prediction
heavy = sorted(
    name for name in ("torch", "transformers", "safetensors.torch") if name in sys.modules
)
print(json.dumps({"closed": closed.label, "opened": opened.label, "heavy": heavy}))
"""


@pytest.mark.integration
@pytest.mark.parametrize("format", ["onnx", "onnx-int8"])
def test_onnx_bundle_predicts_and_takes_new_labels_without_torch(
    tiny_onnx_bundle: Path, tmp_path: Path, format: str
) -> None:
    photo = make_photo(tmp_path / "photo.jpg")
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, str(tiny_onnx_bundle), str(photo), format],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], f"serving {format} imported {report['heavy']}"
    assert report["closed"] in open_bundle(tiny_onnx_bundle).class_names
    assert report["opened"] in {"a", "b"}


@pytest.mark.integration
def test_version_and_help_of_a_light_command_load_no_torch() -> None:
    """`clip-har --version` and `clip-har formats --help` import no torch: commands load lazily."""
    code = (
        "import sys\n"
        "from clip_har.cli.main import app\n"
        "for args in (['--version'], ['formats', '--help']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding this checkout installed (non-editable) with ``[serve]`` only."""
    where = tmp_path_factory.mktemp("serve-venv") / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    python = where / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(ROOT / "requirements" / "constraints.txt"),
            f"{ROOT}[serve]",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-4000:]
    yield where


def _installed(python: Path) -> set[str]:
    listing = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {entry["name"].lower() for entry in json.loads(listing.stdout)}


def _multipart(field: str, path: Path) -> tuple[bytes, str]:
    """A multipart/form-data body holding ``path`` as the file field ``field``."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    body.write(f"--{boundary}\r\n".encode())
    body.write(
        f'Content-Disposition: form-data; name="{field}"; filename="{path.name}"\r\n'.encode()
    )
    body.write(b"Content-Type: image/jpeg\r\n\r\n")
    body.write(path.read_bytes())
    body.write(f"\r\n--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def _wait_ready(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited before it was ready"
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"the server was not ready within {READY_TIMEOUT_S} s")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_serve_extra_alone_serves_an_onnx_bundle(
    serve_venv: Path, tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    python = serve_venv / "bin" / "python"
    installed = _installed(python)
    assert "clip-har" in installed
    assert not installed & set(TRAINING_STACK), (
        f"[serve] installed {installed & set(TRAINING_STACK)}"
    )

    # a command that needs torch says which extra to install, without a traceback
    train = subprocess.run(
        [str(serve_venv / "bin" / "clip-har"), "train", "embed", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert train.returncode == 1, train.stdout + train.stderr
    assert "pip install 'clip-har[train]'" in train.stderr
    assert "Traceback" not in train.stderr

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [
            *(str(serve_venv / "bin" / "clip-har"), "serve", "--bundle", str(tiny_onnx_bundle)),
            *("--format", "onnx", "--host", "127.0.0.1", "--port", str(port)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("CLIP_HAR_")},
        start_new_session=True,
    )
    try:
        _wait_ready(base, server)
        body, content_type = _multipart("file", make_photo(tmp_path / "photo.jpg"))
        request = urllib.request.Request(
            f"{base}/v1/predict", data=body, headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            answer = json.loads(response.read())
    finally:
        stop_process_group(server)
        log.close()
    classes = set(open_bundle(tiny_onnx_bundle).class_names)
    assert answer["label"] in classes, answer
    assert {entry["label"] for entry in answer["top_k"]} <= classes, answer
