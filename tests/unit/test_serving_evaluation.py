"""The served model's evaluation (issue 16, the UI's Model page): ``/v1/model`` carries the
evaluation of the model that answers (metrics, confusion matrix), ``/v1/model/report`` its
HTML report, an evaluation of another model is refused, a reload swaps model and evaluation
together, and a registered version serves the evaluation registered with it."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_photo
from fastapi.testclient import TestClient

from clip_har.client import HARClient, NotFoundError
from clip_har.errors import EvaluationError
from clip_har.models.bundle import open_bundle
from clip_har.serving.app import create_app
from clip_har.serving.evaluation import load_evaluation
from clip_har.serving.settings import ServeSettings

ADMIN_KEY = "test-admin-key-evaluation"
LABELS = ("running", "sitting", "dancing")
PHOTOS_PER_LABEL = 2


def build_evaluation(bundle: Path, root: Path) -> Path:
    """A real ``clip-har evaluate`` output of ``bundle`` on generated labelled photos."""
    from clip_har.data.manifest import write_manifest
    from clip_har.data.sources import import_source
    from clip_har.evaluation.run import evaluate

    photos = root / "photos"
    for offset, label in enumerate(LABELS):
        (photos / label).mkdir(parents=True)
        for index in range(PHOTOS_PER_LABEL):
            make_photo(photos / label / f"{index}.jpg", seed=index + 10 * offset)
    write_manifest(import_source(str(photos)), root / "manifest")
    evaluate(str(bundle), root / "manifest", root / "eval", format="onnx", n_bootstrap=10)
    return root / "eval"


@pytest.fixture(scope="module")
def evaluation(tiny_onnx_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_evaluation(tiny_onnx_bundle, tmp_path_factory.mktemp("evaluation"))


@pytest.fixture(scope="module")
def other_model(tiny_onnx_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same classes and backbone, but another training strategy: another model."""
    other = Path(shutil.copytree(tiny_onnx_bundle, tmp_path_factory.mktemp("other") / "tip"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["lineage"]["strategy"] = "tip-adapter"
    (other / "manifest.json").write_text(json.dumps(manifest))
    return other


def _wait_loaded(client: TestClient, timeout: float = 120) -> str:
    """The readiness status once the first load finished (``ready`` or ``failed: ...``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get("/readyz").json().get("status"))
        if status == "ready" or status.startswith("failed"):
            return status
        time.sleep(0.05)
    raise AssertionError("the model did not finish loading")


def _service(tmp_path: Path, bundle: str, evaluation: Path | None = None) -> TestClient:
    settings = ServeSettings(
        bundle=bundle,
        evaluation=evaluation,
        database_url=f"sqlite:///{tmp_path / 'serving.db'}",
        admin_api_keys=[ADMIN_KEY],
        max_batch_size=2,
    )
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def served(
    tiny_onnx_bundle: Path, evaluation: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    with _service(tmp_path_factory.mktemp("served"), str(tiny_onnx_bundle), evaluation) as client:
        assert _wait_loaded(client) == "ready"
        yield client


def test_model_info_carries_the_evaluation_of_the_served_model(
    served: TestClient, evaluation: Path
) -> None:
    body = served.get("/v1/model").json()
    served_eval = body["evaluation"]
    classes = body["classes"]
    assert served_eval["class_names"] == classes  # the matrix's axes are the model's classes
    matrix = served_eval["confusion_matrix"]
    assert len(matrix) == len(classes) and all(len(row) == len(classes) for row in matrix)
    n_images = len(LABELS) * PHOTOS_PER_LABEL
    assert served_eval["n_images"] == n_images
    assert sum(map(sum, matrix)) == n_images
    for label in LABELS:  # each true class's row counts its photos
        assert sum(matrix[classes.index(label)]) == PHOTOS_PER_LABEL
    recorded = json.loads((evaluation / "metrics.json").read_text())
    assert served_eval["metrics"]["accuracy"] == recorded["accuracy"]
    assert served_eval["origin"] == str(evaluation)
    assert served_eval["has_report"] is True and served_eval["format"] == "onnx"


def test_report_route_serves_the_html_report_and_is_documented(
    served: TestClient, evaluation: Path
) -> None:
    answer = served.get("/v1/model/report")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.text == (evaluation / "report.html").read_text(encoding="utf-8")
    with HARClient("http://testserver", http=served) as client:
        assert client.model_report() == answer.text
        assert client.model_info().evaluation is not None
    schema = served.get("/openapi.json").json()
    assert "text/html" in schema["paths"]["/v1/model/report"]["get"]["responses"]["200"]["content"]
    assert "evaluation" in schema["components"]["schemas"]["ModelResponse"]["properties"]
    assert "confusion_matrix" in schema["components"]["schemas"]["ModelEvaluation"]["properties"]


def test_without_an_evaluation_the_model_has_none_and_the_report_is_404(
    tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    with _service(tmp_path, str(tiny_onnx_bundle)) as served:
        assert _wait_loaded(served) == "ready"
        assert served.get("/v1/model").json()["evaluation"] is None
        answer = served.get("/v1/model/report")
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "no_evaluation"
        assert "--evaluation" in answer.json()["error"]["message"]
        with (
            HARClient("http://testserver", http=served) as client,
            pytest.raises(NotFoundError) as raised,
        ):
            client.model_report()
        assert raised.value.code == "no_evaluation"


def test_an_evaluation_of_another_model_is_refused(
    other_model: Path, evaluation: Path, tmp_path: Path
) -> None:
    with pytest.raises(EvaluationError, match="evaluated another model"):
        load_evaluation(evaluation, open_bundle(other_model).manifest, str(evaluation))
    with _service(tmp_path, str(other_model), evaluation) as served:
        status = _wait_loaded(served)
    assert status.startswith("failed") and "evaluated another model" in status


def test_a_reload_swaps_model_and_evaluation_together(
    tiny_onnx_bundle: Path, evaluation: Path, tmp_path: Path
) -> None:
    """The --evaluation belongs to the configured bundle: a reload to another folder serves
    no evaluation (never one of another model), a reload back serves it again."""
    copy = Path(shutil.copytree(tiny_onnx_bundle, tmp_path / "copy"))
    admin = {"X-API-Key": ADMIN_KEY}
    with _service(tmp_path, str(tiny_onnx_bundle), evaluation) as served:
        assert _wait_loaded(served) == "ready"
        moved = served.post("/v1/admin/reload", json={"source": str(copy)}, headers=admin)
        assert moved.status_code == 200, moved.text
        assert served.get("/v1/model").json()["evaluation"] is None
        assert served.get("/v1/model/report").status_code == 404
        back = served.post(
            "/v1/admin/reload", json={"source": str(tiny_onnx_bundle)}, headers=admin
        )
        assert back.status_code == 200, back.text
        assert served.get("/v1/model").json()["evaluation"]["origin"] == str(evaluation)
        assert served.get("/v1/model/report").status_code == 200


def test_a_registered_version_serves_its_registered_evaluation(
    tiny_onnx_bundle: Path,
    evaluation: Path,
    tmp_path: Path,
    clip_har_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """models:/NAME/VERSION: the evaluation registered with the version is downloaded beside
    the cached bundle and served; a version registered without one serves none."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from clip_har.registry.register import register_bundle

    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    register_bundle(tiny_onnx_bundle, "har", client=client, evaluation=evaluation)
    register_bundle(tiny_onnx_bundle, "har", client=client)
    with _service(tmp_path, "models:/har/1") as served:
        assert _wait_loaded(served, timeout=300) == "ready"
        served_eval = served.get("/v1/model").json()["evaluation"]
        assert served_eval is not None and "models:/har/1" in served_eval["origin"]
        report = served.get("/v1/model/report")
        assert report.status_code == 200
        assert report.text == (evaluation / "report.html").read_text(encoding="utf-8")
    cached = list(clip_har_cache.glob("registry/*/har/1.evaluation/metrics.json"))
    assert len(cached) == 1  # next to the cached bundle, not inside it
    with _service(tmp_path, "models:/har/2") as served:
        assert _wait_loaded(served, timeout=300) == "ready"
        assert served.get("/v1/model").json()["evaluation"] is None
