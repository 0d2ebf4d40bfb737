"""Acceptance 5 of issue 15: user feedback goes back into the data.

A real ``clip-har serve --store-images DIR`` predicts a photo; feedback corrects the label
to another class; ``clip-har feedback export`` writes labels.csv + images/;
``clip-har data import`` and ``clip-har data validate`` then give a manifest holding that
very photo (by content hash) with the corrected label.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
from conftest import free_port, make_photo, run_cli
from feedback_server import ServeProcess

from clip_har.data.manifest import read_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def test_corrected_prediction_comes_back_as_labelled_data(
    tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    database, images = tmp_path / "serving.db", tmp_path / "uploads"
    photo = make_photo(tmp_path / "photo.png", (160, 120), seed=7).read_bytes()
    server = ServeProcess(
        tiny_onnx_bundle,
        free_port(),
        tmp_path / "serve.log",
        {"CLIP_HAR_SERVE_DATABASE_URL": f"sqlite:///{database}"},
        *("--store-images", str(images)),
    )
    try:
        server.start()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            answer = client.post("/v1/predict", files={"file": ("photo.png", photo, "image/png")})
            assert answer.status_code == 200, answer.text
            predicted = answer.json()
            classes = client.get("/v1/labels").json()["labels"]
            corrected = next(label for label in classes if label != predicted["label"])
            feedback = client.post(
                "/v1/feedback",
                json={
                    "prediction_id": predicted["prediction_id"],
                    "correct": False,
                    "label": corrected,
                },
            )
            assert feedback.status_code == 201, feedback.text
    finally:
        server.stop()

    exported, imported, validated = tmp_path / "ex", tmp_path / "imported", tmp_path / "valid"
    result = run_cli(
        *("feedback", "export", "-o", str(exported), "--database", str(database)),
        *("--images", str(images), "--json"),
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["labels"], summary["missing_images"]) == (
        1,
        {corrected: 1},
        0,
    )
    again = run_cli(
        *("feedback", "export", "-o", str(exported), "--database", str(database)),
        *("--images", str(images)),
    )
    assert again.returncode == 1 and "--force" in again.stderr  # never overwritten silently

    result = run_cli("data", "import", str(exported), "-o", str(imported))
    assert result.returncode == 0, result.stderr
    result = run_cli("data", "validate", str(imported), "-o", str(validated))
    assert result.returncode == 0, result.stderr

    manifest = read_manifest(validated)
    sha = hashlib.sha256(photo).hexdigest()
    rows = manifest[manifest["sha256"] == sha]
    assert list(rows["label"]) == [corrected]
