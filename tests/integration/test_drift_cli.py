"""``clip-har monitor reference`` and ``monitor drift`` through the service's real prediction
log (issue 17, acceptance 5).

A reference is built from the train split of generated photos with the tiny bundle; the
real service (``create_app`` with ``--store-images``, writing its SQLite log) then answers
(a) a same-distribution stream: every reference photo twice, which stays under every
threshold (exit 0), and (b) an image distribution shift: the same photos strongly blurred,
which the embedding domain classifier tells apart (exit 1). The tiny model's random head
answers one class for nearly every image, so a class shift is tested on synthetic windows
in tests/unit/test_drift.py. The recorded scores are
then exported by the running server as ``clip_har_drift_score{metric=...}`` and in
``/v1/stats/predictions``. Assertions use the thresholds and verdicts, never exact values.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import make_photo, wait_ready
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter
from typer.testing import CliRunner, Result

from clip_har.cli.main import app
from clip_har.data.manifest import read_manifest
from clip_har.serving.app import create_app
from clip_har.serving.settings import ServeSettings
from clip_har.serving.store import PredictionStore, sqlite_file_url

pytestmark = pytest.mark.integration

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
METRICS = {"class_psi", "confidence_ks", "embedding_auc"}


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.stdout + result.stderr
    return result


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An empty working folder: no params.yaml, so the thresholds are the defaults."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLIP_HAR_PARAMS", raising=False)
    for name in ("CLIP_HAR_SERVE_DATABASE_URL", "DATABASE_URL", "CLIP_HAR_SERVE_STORE_IMAGES"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 generated photos (three labels), imported and split train/val/test."""
    root = tmp_path_factory.mktemp("drift-data")
    photos = root / "photos"
    for offset, label in enumerate(("running", "sitting", "eating")):
        (photos / label).mkdir(parents=True)
        for index in range(10):
            size = (96 + 7 * index, 80 + 9 * offset)
            make_photo(photos / label / f"{index}.png", size, seed=100 + 10 * offset + index)
    ok(invoke("data", "import", photos, "-o", root / "manifest"))
    ok(invoke("data", "split", root / "manifest", "-o", root / "split", "--ratios",
              "0.5,0.25,0.25", "--near-distance", "0"))  # fmt: skip
    return root / "split"


def _predict(client: TestClient, path: Path) -> dict[str, Any]:
    answer = client.post("/v1/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _gauge(text: str, name: str, metric: str) -> float:
    found = re.search(rf'^{name}\{{metric="{metric}"\}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name}{{metric={metric!r}}} not exported:\n{text[-3000:]}"
    return float(found[1])


def test_same_stream_passes_and_blurred_stream_drifts_through_the_service_log(
    tiny_bundle: Path, split: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    ok(invoke("monitor", "reference", tiny_bundle, split, "--split", "train", "-o", reference))
    profile = json.loads((reference / "profile.json").read_text())
    manifest = read_manifest(split)
    photos = [Path(p) for p in manifest[manifest["split"] == "train"]["path"]]
    assert profile["images"] == len(photos) and profile["data"]["split"] == "train"
    assert sum(profile["class_counts"].values()) == len(photos)
    blurred = []
    for photo in photos:  # an image distribution shift: a strong blur
        blurred.append(tmp_path / f"blurred-{photo.parent.name}-{photo.name}")
        Image.open(photo).filter(ImageFilter.GaussianBlur(30)).save(blurred[-1])

    database, images = tmp_path / "serving.db", tmp_path / "served-images"
    settings = ServeSettings(
        bundle=str(tiny_bundle), database_url=sqlite_file_url(database), store_images=images
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        # (a) the same distribution: every reference photo, twice
        for photo in photos * 2:
            _predict(client, photo)
        drift = ["monitor", "drift", "-r", reference, "--database", database, "--images", images,
                 "--min-predictions", str(2 * len(photos)), "--json"]  # fmt: skip
        same = invoke(*drift, "--since", "1h", "-o", tmp_path / "same.html")
        assert same.exit_code == 0, same.stdout + same.stderr
        verdict = json.loads(same.stdout)
        assert verdict["drift"] is False and verdict["window"]["predictions"] == 2 * len(photos)
        assert {score["metric"] for score in verdict["scores"]} == METRICS
        assert all(score["value"] <= score["threshold"] for score in verdict["scores"])
        assert "data:image/png;base64," in (tmp_path / "same.html").read_text()

        # (b) the same photos strongly blurred: only this stream is in the window
        start = datetime.now(timezone.utc)
        for photo in blurred * 2:
            _predict(client, photo)
        shifted = invoke(*drift, "--since", start.isoformat(), "-o", tmp_path / "shifted.html")
        assert shifted.exit_code == 1, shifted.stdout + shifted.stderr
        result = json.loads(shifted.stdout)
        scores = {score["metric"]: score for score in result["scores"]}
        assert result["drift"] is True and result["window"]["predictions"] == 2 * len(photos)
        assert scores["embedding_auc"]["drifted"] is True
        assert scores["embedding_auc"]["value"] > scores["embedding_auc"]["threshold"]
        assert "drift:" in shifted.stderr and "embedding_auc" in shifted.stderr

        # the running server exports the latest (blurred stream's) scores
        text = client.get("/metrics").text
        stats = client.get("/v1/stats/predictions", params={"hours": 1}).json()

    for metric in METRICS:
        assert _gauge(text, "clip_har_drift_score", metric) == pytest.approx(
            scores[metric]["value"]
        )
        assert _gauge(text, "clip_har_drift_threshold", metric) == scores[metric]["threshold"]
    assert _gauge(text, "clip_har_drift_detected", "embedding_auc") == 1.0
    assert stats["drift"]["embedding_auc"]["drifted"] is True
    assert stats["drift"]["embedding_auc"]["reference_id"] == profile["id"]
    assert stats["drift"]["class_psi"]["value"] == pytest.approx(scores["class_psi"]["value"])


def test_too_few_predictions_is_no_verdict_and_records_nothing(
    tiny_bundle: Path, split: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    ok(invoke("monitor", "reference", tiny_bundle, split, "--split", "val", "-o", reference))
    database = tmp_path / "serving.db"
    PredictionStore(sqlite_file_url(database)).close()  # a service's log, still empty
    result = invoke("monitor", "drift", "-r", reference, "--database", database, "-o",
                    tmp_path / "report.html")  # fmt: skip
    assert result.exit_code == 1, result.stdout + result.stderr
    flat = " ".join(result.stderr.split())
    assert "0 predictions" in flat and "min_predictions" in flat
    assert not (tmp_path / "report.html").exists()
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM drift_scores").fetchone() == (0,)
    connection.close()
