"""The served model over ASGI: readiness means loaded and warm, reload swaps atomically and a
failed reload keeps the old model serving, draining turns readiness off, and the admin route
needs an admin key."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import clip_har.serving.models as serving_models
from clip_har.serving.app import create_app
from clip_har.serving.settings import ServeSettings

ADMIN_KEY = "admin-key-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _jpeg(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((96, 72), Image.Resampling.BICUBIC).save(buffer, "JPEG")
    return buffer.getvalue()


def renamed_copy(bundle: Path, target: Path, name: str) -> Path:
    """A copy of ``bundle`` under another manifest name (so another content version)."""
    shutil.copytree(bundle, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["name"] = name
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def _settings(tmp_path: Path, bundle: Path | None, **extra: Any) -> ServeSettings:
    values: dict[str, Any] = {
        "bundle": str(bundle) if bundle is not None else None,
        "database_url": f"sqlite:///{tmp_path / 'serving.db'}",
        "max_batch_size": 4,
        "max_wait_ms": 2,
        "admin_api_keys": [ADMIN_KEY],
    }
    values.update(extra)
    return ServeSettings(**values)


def _wait_ready(client: TestClient, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.get("/v2/health/ready")
        if answer.status_code == 200:
            body: dict[str, Any] = answer.json()
            return body
        assert answer.status_code == 503
        if answer.json()["status"].startswith("failed"):
            raise AssertionError(answer.json())
        time.sleep(0.05)
    raise AssertionError("the model did not become ready")


@pytest.fixture
def client(tiny_onnx_bundle: Path, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tmp_path, tiny_onnx_bundle))) as served:
        _wait_ready(served)
        yield served


def _predict(client: TestClient) -> dict[str, Any]:
    answer = client.post("/v1/predict", files={"file": ("a.jpg", _jpeg(), "image/jpeg")})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_readiness_is_503_until_the_model_is_loaded_and_warm(
    tiny_onnx_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    warmed: list[bool] = []
    real_warm_up = serving_models.ServedModel.warm_up

    def gated_warm_up(self: serving_models.ServedModel) -> None:
        assert gate.wait(60)  # the warm-up waits until the test has seen readiness fail
        real_warm_up(self)
        warmed.append(True)

    monkeypatch.setattr(serving_models.ServedModel, "warm_up", gated_warm_up)
    with TestClient(create_app(_settings(tmp_path, tiny_onnx_bundle))) as served:
        live = served.get("/v2/health/live")
        assert live.status_code == 200
        for path in ("/v2/health/ready", "/readyz"):
            answer = served.get(path)
            assert answer.status_code == 503
            assert answer.json()["status"] == "loading"
            assert answer.headers["retry-after"]
        refused = served.post("/v1/predict", files={"file": ("a.jpg", _jpeg(), "image/jpeg")})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "not_ready"
        gate.set()
        body = _wait_ready(served)
        assert warmed == [True]
        assert body["ready"] is True and body["status"] == "ready"
        assert served.get("/livez").status_code == 200
        assert served.get("/readyz").status_code == 200


def test_the_default_format_is_the_best_passing_export(client: TestClient) -> None:
    model = client.get("/v1/model").json()
    assert model["format"] == "onnx-int8"
    assert model["open_vocabulary"] is True
    assert len(model["version"]) == serving_models.SHORT_HASH


def test_a_failed_first_load_is_live_but_not_ready_and_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bundle"
    with TestClient(create_app(_settings(tmp_path, missing))) as served:
        deadline = time.monotonic() + 30
        while (status := served.get("/v2/health/ready").json()["status"]) == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert status.startswith("failed: ")
        assert "no-such-bundle" in status
        assert served.get("/v2/health/live").status_code == 200


def test_reload_swaps_to_the_new_bundle(
    client: TestClient, tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    before = client.get("/v1/model").json()
    other = renamed_copy(tiny_onnx_bundle, tmp_path / "other", "tiny-har-v2")
    answer = client.post("/v1/admin/reload", json={"source": str(other)}, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["previous"]["version"] == before["version"]
    assert body["model"]["name"] == "tiny-har-v2"
    assert body["model"]["version"] != before["version"]
    assert client.get("/v1/model").json()["version"] == body["model"]["version"]
    assert _predict(client)["model"]["version"] == body["model"]["version"]
    assert client.get("/v2/health/ready").status_code == 200


def test_a_failed_reload_keeps_the_old_model_serving(client: TestClient, tmp_path: Path) -> None:
    before = client.get("/v1/model").json()["version"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    for source in (str(broken), str(tmp_path / "missing")):
        answer = client.post("/v1/admin/reload", json={"source": source}, headers=ADMIN)
        assert answer.status_code == 422
        error = answer.json()["error"]
        assert error["code"] == "reload_failed"
        assert source in error["message"]
    assert client.get("/v2/health/ready").status_code == 200
    assert _predict(client)["model"]["version"] == before


def test_reload_without_a_source_reloads_the_current_one(client: TestClient) -> None:
    before = client.get("/v1/model").json()
    answer = client.post("/v1/admin/reload", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"]["version"] == before["version"]
    assert answer.json()["model"]["loaded_at"] >= before["loaded_at"]


def test_reload_needs_an_admin_key(tiny_onnx_bundle: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path, tiny_onnx_bundle, admin_api_keys=[], api_keys=["user-key"])
    with TestClient(create_app(settings)) as served:
        assert served.post("/v1/admin/reload").status_code == 403  # no admin key configured
    with TestClient(create_app(_settings(tmp_path, tiny_onnx_bundle))) as served:
        assert served.post("/v1/admin/reload").status_code == 401
        wrong = served.post("/v1/admin/reload", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "unauthorized"


def test_draining_turns_readiness_off_but_liveness_stays(client: TestClient) -> None:
    client.app.state.models.begin_drain()  # type: ignore[attr-defined]
    answer = client.get("/v2/health/ready")
    assert answer.status_code == 503
    assert answer.json()["status"] == "draining"
    assert client.get("/v2/health/live").status_code == 200
    # a request already on its way is still answered: draining refuses no accepted work
    assert _predict(client)["label"]


def test_index_points_at_the_docs(client: TestClient) -> None:
    body = client.get("/").json()
    assert body["docs"] == "/docs"
    schema = client.get("/openapi.json").json()
    assert schema["info"]["title"]
    paths = schema["paths"]
    for path in ("/v2/health/live", "/v2/health/ready", "/v1/admin/reload", "/metrics"):
        assert path in paths


def test_open_vocabulary_scores_the_given_labels(client: TestClient) -> None:
    models = client.app.state.models  # type: ignore[attr-defined]

    async def classify() -> np.ndarray:
        async with models.use() as model:
            pixels = model.preprocess([Image.open(io.BytesIO(_jpeg()))])
            result: np.ndarray = await model.classify(
                pixels,
                ["dancing", "cycling", "sleeping"],
                ["a photo of {}."],
                deadline=time.monotonic() + 30,
            )
            return result

    assert client.portal is not None  # the app's own event loop
    probs = client.portal.call(classify)
    assert probs.shape == (1, 3)
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
