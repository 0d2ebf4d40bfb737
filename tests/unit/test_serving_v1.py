"""The friendly REST API (/v1) through the real app: every endpoint, every error path, auth
(issue 15, acceptance 1: hostile inputs answer 4xx JSON and the service goes on serving)."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_serving_inputs import png_bomb

from clip_har.serving.app import create_app
from clip_har.serving.settings import ServeSettings

API_KEY = "test-api-key-1"
ADMIN_KEY = "test-admin-key-1"


def jpeg(seed: int = 0, size: tuple[int, int] = (96, 72)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wait_ready(client: TestClient, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/v2/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError("the model did not become ready")


@pytest.fixture(scope="module")
def served(
    tiny_onnx_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, Path]]:
    folder = tmp_path_factory.mktemp("v1")
    settings = ServeSettings(
        bundle=str(tiny_onnx_bundle),
        database_url=f"sqlite:///{folder / 'serving.db'}",
        store_images=folder / "images",
        max_batch_size=4,
        max_wait_ms=2,
        max_batch_images=4,
        max_labels=5,
        max_label_length=20,
        max_templates=2,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client, folder / "images"


@pytest.fixture
def client(served: tuple[TestClient, Path]) -> TestClient:
    return served[0]


def assert_prediction(body: dict[str, Any], top_k: int) -> None:
    assert len(body["prediction_id"]) == 32
    assert body["top_k"][0]["label"] == body["label"]
    probabilities = [item["probability"] for item in body["top_k"]]
    assert len(probabilities) == top_k
    assert probabilities == sorted(probabilities, reverse=True)
    assert body["confidence"] == probabilities[0]
    assert 0.0 <= body["confidence"] <= 1.0
    assert set(body["model"]) == {"name", "version", "format"}
    assert body["model"]["format"] in {"onnx-int8", "onnx", "torch"}
    assert body["latency_ms"] > 0


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def good_predict(client: TestClient) -> None:
    response = client.post("/v1/predict", files={"file": ("ok.jpg", jpeg(), "image/jpeg")})
    assert response.status_code == 200, response.text


# --------------------------------------------------------------------------- happy paths


def test_predict_multipart(served: tuple[TestClient, Path]) -> None:
    client, images = served
    data = jpeg(1)
    response = client.post(
        "/v1/predict",
        files={"file": ("a.jpg", data, "image/jpeg")},
        headers={"X-Request-ID": "req-42"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-42"
    assert_prediction(response.json(), top_k=5)  # the default top_k
    digest = hashlib.sha256(data).hexdigest()
    assert list(images.rglob(f"{digest}*"))  # --store-images keeps the upload


def test_predict_json_base64_with_data_url_and_top_k(client: TestClient) -> None:
    body = {"image_base64": "data:image/jpeg;base64," + b64(jpeg(2)), "top_k": 3}
    response = client.post("/v1/predict", json=body)
    assert response.status_code == 200
    assert_prediction(response.json(), top_k=3)


def test_predict_top_k_from_query_and_form(client: TestClient) -> None:
    files = {"file": ("a.jpg", jpeg(), "image/jpeg")}
    assert_prediction(client.post("/v1/predict?top_k=2", files=files).json(), top_k=2)
    answer = client.post("/v1/predict?top_k=2", files=files, data={"top_k": "7"})
    assert_prediction(answer.json(), top_k=7)  # the body wins


@pytest.mark.parametrize("top_k", [0, 16, 1000])
def test_top_k_out_of_range_is_422_naming_the_range(client: TestClient, top_k: int) -> None:
    response = client.post("/v1/predict", json={"image_base64": b64(jpeg()), "top_k": top_k})
    error = assert_error(response, 422, "invalid_request")
    assert "top_k" in error["message"]
    if top_k > 0:
        assert "between 1 and 15" in error["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/predict", {"image_base64": b64(jpeg())}),
        ("/v1/predict/batch", {"images_base64": [b64(jpeg())]}),
        ("/v1/classify", {"image_base64": b64(jpeg()), "labels": ["a", "b", "c"]}),
    ],
)
def test_json_top_k_null_means_the_default_not_a_500(
    client: TestClient, path: str, body: dict[str, Any]
) -> None:
    """Regression (schemathesis): ``"top_k": null`` crashed validation with a 500."""
    answer = client.post(path, json={**body, "top_k": None})
    assert answer.status_code == 200, answer.text
    first = answer.json()["predictions"][0] if path.endswith("batch") else answer.json()
    assert len(first["top_k"]) == (3 if path == "/v1/classify" else 5)  # the default, clamped
    # with the query's top_k, a null body top_k gives way to it
    answer = client.post(f"{path}?top_k=1", json={**body, "top_k": None})
    assert answer.status_code == 200, answer.text
    first = answer.json()["predictions"][0] if path.endswith("batch") else answer.json()
    assert len(first["top_k"]) == 1
    # an empty image with a null top_k is the image's 400, not a 500
    empty = {**body, "top_k": None}
    if "image_base64" in empty:
        empty["image_base64"] = ""
        assert_error(client.post(f"{path}?top_k=1", json=empty), 400, "empty_image")


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/predict/batch", "/v1/classify"])
def test_malformed_json_body_is_a_documented_400(client: TestClient, path: str) -> None:
    response = client.post(path, content=b"\xff\x1a{", headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json")
    spec = client.get("/openapi.json").json()
    assert "400" in spec["paths"][path]["post"]["responses"]


def test_openapi_documents_top_k_as_a_positive_integer_or_null(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]
    as_json = schemas["content"]["application/json"]["schema"]["properties"]["top_k"]
    assert {"type": "integer", "minimum": 1} in [
        {k: v for k, v in option.items() if k in ("type", "minimum")} for option in as_json["anyOf"]
    ]
    assert {"type": "null"} in as_json["anyOf"]
    as_form = schemas["content"]["multipart/form-data"]["schema"]["properties"]["top_k"]
    assert as_form["type"] == "integer" and as_form["minimum"] == 1


def test_predictions_are_logged_before_the_answer(client: TestClient) -> None:
    prediction = client.post("/v1/predict", json={"image_base64": b64(jpeg(3))}).json()
    feedback = client.post(
        "/v1/feedback",
        json={"prediction_id": prediction["prediction_id"], "correct": True},
    )
    assert feedback.status_code == 201, feedback.text


def test_batch_multipart_keeps_order_and_per_image_errors(client: TestClient) -> None:
    files = [
        ("files", ("a.jpg", jpeg(1), "image/jpeg")),
        ("files", ("empty.jpg", b"", "image/jpeg")),
        ("files", ("notes.txt", b"just some text", "text/plain")),
        ("files", ("b.jpg", jpeg(2), "image/jpeg")),
    ]
    response = client.post("/v1/predict/batch", files=files, data={"top_k": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    items = body["predictions"]
    assert [item["index"] for item in items] == [0, 1, 2, 3]
    assert [item["filename"] for item in items] == ["a.jpg", "empty.jpg", "notes.txt", "b.jpg"]
    assert items[1]["error"]["code"] == "empty_image"
    assert items[2]["error"]["code"] == "unsupported_media_type"
    for item in (items[0], items[3]):
        assert len(item["top_k"]) == 2 and item["label"] == item["top_k"][0]["label"]
    assert items[0]["prediction_id"] != items[3]["prediction_id"]
    assert set(body["model"]) == {"name", "version", "format"} and body["latency_ms"] > 0


def test_batch_json_with_a_bad_base64_item(client: TestClient) -> None:
    response = client.post(
        "/v1/predict/batch", json={"images_base64": [b64(jpeg()), "%%%", b64(jpeg(5))]}
    )
    assert response.status_code == 200
    items = response.json()["predictions"]
    assert "filename" not in items[0]
    assert items[1]["error"]["code"] == "invalid_base64"
    assert "label" in items[0] and "label" in items[2]


def test_batch_over_the_image_limit_is_413(client: TestClient) -> None:
    response = client.post("/v1/predict/batch", json={"images_base64": [b64(jpeg())] * 5})
    assert_error(response, 413, "too_many_images")
    files = [("files", (f"{i}.jpg", jpeg(), "image/jpeg")) for i in range(5)]
    assert_error(client.post("/v1/predict/batch", files=files), 413, "too_many_images")


def test_classify_multipart_and_json(client: TestClient) -> None:
    response = client.post(
        "/v1/classify",
        files={"file": ("a.jpg", jpeg(), "image/jpeg")},
        data={"labels": "cooking, running ,dancing", "templates": "a photo of someone {}."},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_prediction(body, top_k=3)  # default top_k clamped to the 3 labels
    assert {item["label"] for item in body["top_k"]} == {"cooking", "running", "dancing"}

    response = client.post(
        "/v1/classify",
        json={"image_base64": b64(jpeg()), "labels": ["sleeping", "eating"], "top_k": 1},
    )
    assert response.status_code == 200, response.text
    assert response.json()["label"] in {"sleeping", "eating"}


@pytest.mark.parametrize(
    ("labels", "templates", "needle"),
    [
        ([], None, "labels"),
        (["a", "b", "c", "d", "e", "f"], None, "limit is 5"),
        (["running", " Running "], None, "duplicate"),
        (["x" * 21], None, "limit is 20"),
        (["  "], None, "empty"),
        (["a", "b"], ["no slot here"], "{}"),
        (["a", "b"], ["{} and {}"], "{}"),
        (["a", "b"], ["a {name} {}"], "brace"),
        (["a", "b"], ["{}", "a {}", "b {}"], "limit is 2"),
    ],
)
def test_classify_rejects_bad_labels_and_templates(
    client: TestClient, labels: list[str], templates: list[str] | None, needle: str
) -> None:
    body: dict[str, Any] = {"image_base64": b64(jpeg()), "labels": labels}
    if templates is not None:
        body["templates"] = templates
    error = assert_error(client.post("/v1/classify", json=body), 422, "invalid_request")
    assert needle in error["message"]


def test_classify_top_k_over_the_label_count_is_422(client: TestClient) -> None:
    body = {"image_base64": b64(jpeg()), "labels": ["a", "b"], "top_k": 3}
    error = assert_error(client.post("/v1/classify", json=body), 422, "invalid_request")
    assert "between 1 and 2" in error["message"]


def test_labels_and_model(client: TestClient) -> None:
    labels = client.get("/v1/labels").json()
    assert len(labels["labels"]) == 15 and set(labels["model"]) == {"name", "version", "format"}
    model = client.get("/v1/model").json()
    assert model["classes"] == labels["labels"]
    assert model["ready"] is True
    assert model["format"] == labels["model"]["format"]
    assert model["open_vocabulary"] is True
    assert model["registry"] is None  # served from a folder
    assert "manifest" in model and "parity" in model and "metrics" in model


def test_openapi_documents_both_request_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/classify"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}
        responses = spec["paths"][path]["post"]["responses"]
        assert {"200", "400", "413", "415", "422"} <= set(responses)


# --------------------------------------------------------------------------- hostile inputs


def _truncated_jpeg() -> bytes:
    data = jpeg(size=(256, 256))
    return data[: len(data) // 2]


HOSTILE: dict[str, tuple[dict[str, Any], int, str]] = {
    "zero-byte file": ({"files": {"file": ("a.jpg", b"", "image/jpeg")}}, 400, "empty_image"),
    "truncated JPEG": (
        {"files": {"file": ("a.jpg", _truncated_jpeg(), "image/jpeg")}},
        400,
        "invalid_image",
    ),
    "text file": (
        {"files": {"file": ("a.jpg", b"hello\nworld\n", "image/jpeg")}},
        415,
        "unsupported_media_type",
    ),
    "wrong content type": (
        {"content": b"raw bytes", "headers": {"content-type": "application/octet-stream"}},
        415,
        "unsupported_media_type",
    ),
    "no content type": ({"content": b"raw bytes"}, 415, "unsupported_media_type"),
    "invalid base64": ({"json": {"image_base64": "!!!not base64"}}, 400, "invalid_base64"),
    "malformed JSON": (
        {"content": b'{"image_base64": ', "headers": {"content-type": "application/json"}},
        400,
        "invalid_json",
    ),
    "JSON array": ({"json": [1, 2]}, 422, "invalid_request"),
    "unknown JSON field": (
        {"json": {"image_base64": "AAAA", "extra": 1}},
        422,
        "invalid_request",
    ),
    "missing file": (
        {"data": {"top_k": "1"}, "files": {"other": ("x", b"1")}},
        422,
        "invalid_request",
    ),
    "text instead of a file": ({"files": {"file": (None, "abc")}}, 422, "invalid_request"),
    "two files": (
        {"files": [("file", ("a.jpg", jpeg(), "image/jpeg"))] * 2},
        422,
        "invalid_request",
    ),
    "URL field (JSON)": (
        {"json": {"url": "http://169.254.169.254/latest/meta-data"}},
        400,
        "urls_not_supported",
    ),
    "URL in image_base64": (
        {"json": {"image_base64": "https://example.com/a.jpg"}},
        400,
        "urls_not_supported",
    ),
    "URL form field": (
        {
            "files": {"file": ("a.jpg", jpeg(), "image/jpeg")},
            "data": {"image_url": "http://example.com/a.jpg"},
        },
        400,
        "urls_not_supported",
    ),
    "form top_k not a number": (
        {"files": {"file": ("a.jpg", jpeg(), "image/jpeg")}, "data": {"top_k": "many"}},
        422,
        "invalid_request",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_input_gets_4xx_json_and_the_service_goes_on(client: TestClient, case: str) -> None:
    request, status, code = HOSTILE[case]
    assert_error(client.post("/v1/predict", **request), status, code)
    good_predict(client)


def test_png_bomb_is_413_and_the_service_goes_on(client: TestClient) -> None:
    response = client.post("/v1/predict", files={"file": ("bomb.png", png_bomb(), "image/png")})
    error = assert_error(response, 413, "image_too_large")
    assert "900.0 megapixels" in error["message"]
    good_predict(client)


def test_50_mb_upload_is_413_and_the_service_goes_on(client: TestClient) -> None:
    big = b"\xff\xd8\xff" + b"\0" * (50 * 2**20)
    response = client.post("/v1/predict", files={"file": ("big.jpg", big, "image/jpeg")})
    assert_error(response, 413, "payload_too_large")
    good_predict(client)


def test_errors_of_other_routes_are_json_with_request_id(client: TestClient) -> None:
    assert_error(client.get("/v1/nowhere"), 404, "not_found")
    assert_error(client.get("/v1/predict"), 405, "method_not_allowed")
    assert_error(client.post("/v1/predict?top_k=abc", json={}), 422, "invalid_request")
    response = client.post("/v1/predict", content=b"", headers={"X-Request-ID": "given.id-7"})
    assert assert_error(response, 415, "unsupported_media_type")["request_id"] == "given.id-7"


# --------------------------------------------------------------------------- auth


def auth_app(tmp_path: Path, **extra: Any) -> TestClient:
    """An app with keys and no model: auth is decided before the model is needed."""
    settings = ServeSettings(database_url=f"sqlite:///{tmp_path / 'auth.db'}", **extra)
    return TestClient(create_app(settings))


def test_without_keys_the_api_is_open(tmp_path: Path) -> None:
    with auth_app(tmp_path) as client:
        assert_error(client.get("/v1/labels"), 503, "not_ready")  # past auth, no model


def test_api_keys_guard_v1_with_json_401(tmp_path: Path) -> None:
    with auth_app(tmp_path, api_keys=[API_KEY, "second-key"], admin_api_keys=[ADMIN_KEY]) as client:
        missing = client.get("/v1/labels")
        assert_error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(client.get("/v1/labels", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
        bad_scheme = {"Authorization": f"Basic {API_KEY}"}
        assert_error(client.get("/v1/labels", headers=bad_scheme), 401, "unauthorized")
        for headers in (
            {"Authorization": f"Bearer {API_KEY}"},
            {"Authorization": "bearer second-key"},
            {"X-API-Key": API_KEY},
            {"X-API-Key": ADMIN_KEY},  # an admin key opens the API too
        ):
            assert_error(client.get("/v1/labels", headers=headers), 503, "not_ready")
        # a 401 never echoes the key
        assert "wrong" not in client.get("/v1/labels", headers={"X-API-Key": "wrong"}).text
        # health and metrics are open by default
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_admin_routes_need_an_admin_key(tmp_path: Path) -> None:
    with auth_app(tmp_path, api_keys=[API_KEY], admin_api_keys=[ADMIN_KEY]) as client:
        reload = "/v1/admin/reload"
        assert_error(client.post(reload, json={}), 401, "unauthorized")
        assert_error(
            client.post(reload, json={}, headers={"X-API-Key": "nope"}), 401, "unauthorized"
        )
        assert_error(client.post(reload, json={}, headers={"X-API-Key": API_KEY}), 403, "forbidden")
        passed = client.post(reload, json={}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert passed.status_code not in (401, 403)


def test_admin_routes_are_disabled_without_admin_keys(tmp_path: Path) -> None:
    with auth_app(tmp_path, api_keys=[API_KEY]) as client:
        response = client.post("/v1/admin/reload", json={}, headers={"X-API-Key": API_KEY})
        assert_error(response, 403, "admin_disabled")


def test_keys_file_and_protected_health_and_metrics(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("\nfile-key-1\n  file-key-2  \n")
    with auth_app(
        tmp_path, api_keys_file=keys, protect_health=True, protect_metrics=True
    ) as client:
        assert_error(client.get("/v1/labels"), 401, "unauthorized")
        assert_error(
            client.get("/v1/labels", headers={"X-API-Key": "file-key-2"}), 503, "not_ready"
        )
        assert client.get("/v2/health/live").status_code == 401
        assert client.get("/v2/health/live", headers={"X-API-Key": "file-key-1"}).status_code == 200
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "file-key-1"}).status_code == 200
