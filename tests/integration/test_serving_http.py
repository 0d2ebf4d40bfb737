"""``clip-har serve`` as a real process on 127.0.0.1, spoken to over HTTP as users do: /v1
predict (multipart and base64 JSON), batch with a bad image, open-vocabulary classify, feedback,
the Open Inference Protocol with a BYTES tensor (binary extension) and an FP32 tensor, /metrics
parsed by Prometheus' own parser, and auth on and off.

One server per module (auth off) plus one with API keys, to keep CI time low. Readiness before
and after warm-up (503 while loading, then 200) is covered by
``test_serving_lifecycle.py::test_readiness_is_503_while_loading_then_200``; the ASGI tests cover
every error path in depth, so here each error is checked for what a client over the wire relies
on: a JSON body of the documented shape and an ``X-Request-ID`` header.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import free_port, make_photo
from feedback_server import ServeProcess
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "k1"
ADMIN_KEY = "a1"
HEADER_LENGTH = "Inference-Header-Content-Length"
TIMEOUT = 60.0  # per request: a loaded CI machine is slow, but never this slow


@dataclass(frozen=True)
class Live:
    """A running server, an HTTP client for it and the model it serves (from /v1/model)."""

    url: str
    client: httpx.Client
    model: dict[str, Any]
    photos: list[bytes]


def _start(bundle: Path, folder: Path, env: dict[str, str]) -> ServeProcess:
    folder.mkdir(parents=True, exist_ok=True)
    env = {"CLIP_HAR_SERVE_DATABASE_URL": f"sqlite:///{folder / 'serving.db'}", **env}
    server = ServeProcess(bundle, free_port(), folder / "serve.log", env)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


def _photos(folder: Path) -> list[bytes]:
    """Three generated photos: a JPEG, a PNG and a JPEG of another size."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [("a.jpg", (120, 90)), ("b.png", (64, 200)), ("c.jpg", (300, 300))]
    return [
        make_photo(folder / name, size, seed=i).read_bytes() for i, (name, size) in enumerate(names)
    ]


@pytest.fixture(scope="module")
def live(tiny_onnx_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The ONNX bundle served with auth off (no API key, no admin key)."""
    folder = tmp_path_factory.mktemp("serve-open")
    server = _start(tiny_onnx_bundle, folder, {})
    try:
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            model = client.get("/v1/model").json()
            yield Live(server.url, client, model, _photos(folder / "photos"))
    finally:
        server.stop()
    assert "Traceback" not in server.tail(), server.tail()


@pytest.fixture(scope="module")
def guarded(tiny_onnx_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The ONNX bundle served with an API key and an admin key, from the environment."""
    folder = tmp_path_factory.mktemp("serve-keys")
    env = {"CLIP_HAR_SERVE_API_KEYS": API_KEY, "CLIP_HAR_SERVE_ADMIN_API_KEYS": ADMIN_KEY}
    server = _start(tiny_onnx_bundle, folder, env)
    try:
        assert server.process is not None
        assert API_KEY not in Path(f"/proc/{server.process.pid}/cmdline").read_text()
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            model = client.get("/v1/model", headers=_bearer(API_KEY)).json()
            yield Live(server.url, client, model, _photos(folder / "photos"))
    finally:
        server.stop()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _assert_v1_error(answer: httpx.Response, status: int, code: str | None = None) -> None:
    """A /v1 error: ``status``, ``{"error": {"code", "message", "request_id"}}`` and the
    request id in the body equal to the ``X-Request-ID`` header."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert set(error) == {"code", "message", "request_id"}
    assert error["message"]
    assert error["request_id"] == answer.headers["x-request-id"]
    if code is not None:
        assert error["code"] == code, error


def _assert_v2_error(answer: httpx.Response, status: int) -> None:
    """A /v2 error: the protocol's ``{"error": "<message>"}`` and an ``X-Request-ID``."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert answer.headers["x-request-id"]


def _assert_prediction(body: dict[str, Any], model: dict[str, Any], top_k: int) -> None:
    """A prediction answer: an id, the top-k best first, and the model that answered."""
    assert len(body["prediction_id"]) == 32
    int(body["prediction_id"], 16)
    probabilities = [item["probability"] for item in body["top_k"]]
    assert len(probabilities) == top_k
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert body["label"] == body["top_k"][0]["label"]
    assert body["confidence"] == probabilities[0]
    assert body["model"] == {
        "name": model["name"],
        "version": model["version"],
        "format": model["format"],
    }
    assert body["latency_ms"] >= 0


# ---------------------------------------------------------------------------- /v1


def test_model_is_served_from_onnx_with_its_text_encoder(live: Live) -> None:
    model = live.model
    assert model["ready"] is True
    assert model["format"] in ("onnx", "onnx-int8")
    assert model["open_vocabulary"] is True
    assert len(model["classes"]) == 15
    labels = live.client.get("/v1/labels").json()
    assert labels["labels"] == model["classes"]


def test_predict_multipart_and_base64_json_agree(live: Live) -> None:
    photo = live.photos[0]
    upload = live.client.post(
        "/v1/predict", files={"file": ("a.jpg", photo, "image/jpeg")}, data={"top_k": "3"}
    )
    assert upload.status_code == 200, upload.text
    _assert_prediction(upload.json(), live.model, top_k=3)
    assert upload.headers["x-request-id"]

    as_json = live.client.post("/v1/predict", json={"image_base64": _b64(photo), "top_k": 3})
    assert as_json.status_code == 200, as_json.text
    _assert_prediction(as_json.json(), live.model, top_k=3)
    # the same image gives the same answer either way (a new prediction id each time)
    assert as_json.json()["prediction_id"] != upload.json()["prediction_id"]
    for mine, theirs in zip(upload.json()["top_k"], as_json.json()["top_k"], strict=True):
        assert mine["probability"] == pytest.approx(theirs["probability"], abs=1e-3)

    default = live.client.post("/v1/predict", json={"image_base64": _b64(photo)})
    assert default.status_code == 200, default.text
    _assert_prediction(default.json(), live.model, top_k=5)  # the server's default_top_k


def test_predict_a_real_har_photo(live: Live, har_sample_dir: Path) -> None:
    with (har_sample_dir / "labels.csv").open(newline="") as handle:
        row = next(csv.DictReader(handle))
    photo = har_sample_dir / "images" / row["filename"]
    answer = live.client.post(
        "/v1/predict?top_k=15", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    _assert_prediction(body, live.model, top_k=15)
    assert {item["label"] for item in body["top_k"]} == set(live.model["classes"])
    assert sum(item["probability"] for item in body["top_k"]) == pytest.approx(1.0, abs=1e-3)


def test_batch_answers_every_good_image_despite_a_bad_one(live: Live) -> None:
    good_a, good_b, _ = live.photos
    files = [
        ("files", ("a.jpg", good_a, "image/jpeg")),
        ("files", ("notes.jpg", b"this is not an image\n", "image/jpeg")),
        ("files", ("b.png", good_b, "image/png")),
    ]
    answer = live.client.post("/v1/predict/batch", files=files, data={"top_k": "2"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    items = body["predictions"]
    assert [item["index"] for item in items] == [0, 1, 2]
    assert [item.get("filename") for item in items] == ["a.jpg", "notes.jpg", "b.png"]
    assert items[1]["error"]["code"] == "unsupported_media_type"
    assert "prediction_id" not in items[1]
    for item in (items[0], items[2]):
        assert "error" not in item
        assert len(item["top_k"]) == 2
        assert item["label"] == item["top_k"][0]["label"]
    assert items[0]["prediction_id"] != items[2]["prediction_id"]
    assert body["model"]["version"] == live.model["version"]

    # JSON: an invalid base64 element fails alone too
    answer = live.client.post(
        "/v1/predict/batch", json={"images_base64": [_b64(good_a), "@@not base64@@"]}
    )
    assert answer.status_code == 200, answer.text
    first, second = answer.json()["predictions"]
    assert "prediction_id" in first and "error" not in first
    assert second["error"]["code"] and "prediction_id" not in second


def test_classify_scores_only_the_given_labels(live: Live) -> None:
    labels = ["riding a horse", "playing the violin", "swimming"]
    photo = live.photos[2]
    answer = live.client.post(
        "/v1/classify",
        files={"file": ("c.jpg", photo, "image/jpeg")},
        data={"labels": ",".join(labels), "templates": "a photo of a person {}."},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    _assert_prediction(body, live.model, top_k=3)
    assert {item["label"] for item in body["top_k"]} == set(labels)
    assert sum(item["probability"] for item in body["top_k"]) == pytest.approx(1.0, abs=1e-3)

    as_json = live.client.post(
        "/v1/classify", json={"image_base64": _b64(photo), "labels": labels, "top_k": 1}
    )
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["label"] in labels
    assert len(as_json.json()["top_k"]) == 1


def test_feedback_on_a_prediction_shows_in_the_stats(live: Live) -> None:
    before = live.client.get("/v1/feedback/stats")
    assert before.status_code == 200, before.text
    predicted = live.client.post(
        "/v1/predict", files={"file": ("b.png", live.photos[1], "image/png")}
    ).json()
    right = next(label for label in live.model["classes"] if label != predicted["label"])
    answer = live.client.post(
        "/v1/feedback",
        json={"prediction_id": predicted["prediction_id"], "correct": False, "label": right},
    )
    assert answer.status_code == 201, answer.text
    stored = answer.json()
    assert stored["prediction_id"] == predicted["prediction_id"]
    assert stored["correct"] is False and stored["label"] == right
    assert stored["feedback_id"] and stored["created_at"]

    after = live.client.get("/v1/feedback/stats").json()
    assert after["total"] == before.json()["total"] + 1
    assert after["incorrect"] == before.json()["incorrect"] + 1
    assert after["predictions"] >= before.json()["predictions"] + 1
    assert after["by_label"][predicted["label"]]["incorrect"] >= 1
    versions = {(m["model_name"], m["model_version"]) for m in after["by_model"]}
    assert (live.model["name"], live.model["version"]) in versions

    unknown = live.client.post("/v1/feedback", json={"prediction_id": "0" * 32, "correct": True})
    _assert_v1_error(unknown, 404, "unknown_prediction")


# ---------------------------------------------------------------------------- /v2


def _v2_binary_bytes_request(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """An inference request whose BYTES input travels as binary tensor data (as tritonclient
    sends it): JSON header, then each element as a 4-byte little-endian length + its bytes."""
    blob = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header = json.dumps(
        {
            "id": "req-1",
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [len(images)],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "probabilities"}, {"name": "labels"}],
        }
    ).encode()
    headers = {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}
    return header + blob, headers


def _binary_outputs(answer: httpx.Response) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The JSON part of a response and the raw binary data of each binary output."""
    length = int(answer.headers[HEADER_LENGTH])
    document = json.loads(answer.content[:length])
    rest = answer.content[length:]
    raw: dict[str, bytes] = {}
    for output in document["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            raw[output["name"]], rest = rest[:size], rest[size:]
    assert rest == b""
    return document, raw


def test_v2_infer_with_a_binary_bytes_tensor_of_images(live: Live) -> None:
    model = live.model
    name, classes = model["name"], model["classes"]
    body, headers = _v2_binary_bytes_request(live.photos)
    answer = live.client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    result = answer.json()  # JSON outputs: none was asked for in binary
    assert result["model_name"] == name
    assert result["model_version"] == model["version"]
    assert result["id"] == "req-1"
    outputs = {output["name"]: output for output in result["outputs"]}
    probs = outputs["probabilities"]
    assert probs["datatype"] == "FP32" and probs["shape"] == [3, len(classes)]
    rows = np.asarray(probs["data"], dtype=np.float64).reshape(3, len(classes))
    assert np.allclose(rows.sum(axis=1), 1.0, atol=1e-3)
    labels = outputs["labels"]
    assert labels["datatype"] == "BYTES" and labels["shape"] == [3]
    assert labels["data"] == [classes[int(i)] for i in rows.argmax(axis=1)]

    # the same image over /v1 has the same top label probability
    v1 = live.client.post(
        "/v1/predict", json={"image_base64": _b64(live.photos[0]), "top_k": 1}
    ).json()
    assert rows[0].max() == pytest.approx(v1["confidence"], abs=1e-3)

    # the versioned path answers too
    versioned = live.client.post(
        f"/v2/models/{name}/versions/{model['version']}/infer", content=body, headers=headers
    )
    assert versioned.status_code == 200, versioned.text


def test_v2_infer_with_an_fp32_pixel_tensor_and_binary_output(live: Live) -> None:
    name = live.model["name"]
    metadata = live.client.get(f"/v2/models/{name}").json()
    pixels = next(tensor for tensor in metadata["inputs"] if tensor["datatype"] == "FP32")
    _, channels, height, width = pixels["shape"]
    data = np.random.default_rng(0).normal(size=(2, channels, height, width)).astype(np.float32)
    request = {
        "inputs": [
            {
                "name": pixels["name"],
                "datatype": "FP32",
                "shape": list(data.shape),
                "data": data.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    answer = live.client.post(f"/v2/models/{name}/infer", json=request)
    assert answer.status_code == 200, answer.text
    document, raw = _binary_outputs(answer)
    (output,) = document["outputs"]
    n_classes = len(live.model["classes"])
    assert output["name"] == "probabilities"
    assert output["datatype"] == "FP32" and output["shape"] == [2, n_classes]
    probs = np.frombuffer(raw["probabilities"], dtype="<f4").reshape(2, n_classes)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)

    wrong_shape = {**request["inputs"][0], "shape": [1, channels, height + 1, width]}
    bad = live.client.post(f"/v2/models/{name}/infer", json={"inputs": [wrong_shape]})
    _assert_v2_error(bad, 400)
    missing = live.client.post("/v2/models/no-such-model/infer", json=request)
    _assert_v2_error(missing, 404)


# ---------------------------------------------------------------------------- /metrics


def _families(live: Live) -> dict[str, Any]:
    answer = live.client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(answer.text)}


def test_metrics_parse_and_carry_the_model_name_and_version(live: Live) -> None:
    name, version = live.model["name"], live.model["version"]
    answer = live.client.post(
        "/v1/predict", files={"file": ("a.jpg", live.photos[0], "image/jpeg")}
    )
    assert answer.status_code == 200, answer.text
    label = answer.json()["label"]
    families = _families(live)

    duration = families["clip_har_request_duration_seconds"]
    assert duration.type == "histogram"
    predict_series = [
        sample
        for sample in duration.samples
        if sample.labels.get("route") == "/v1/predict"
        and sample.labels.get("method") == "POST"
        and sample.labels.get("status") == "200"
    ]
    assert predict_series
    assert {(s.labels["model"], s.labels["version"]) for s in predict_series} == {(name, version)}
    buckets = [s for s in predict_series if s.name.endswith("_bucket")]
    counts = [s.value for s in sorted(buckets, key=lambda s: float(s.labels["le"]))]
    assert counts == sorted(counts)  # cumulative buckets
    (count,) = [s.value for s in predict_series if s.name.endswith("_count")]
    assert counts[-1] == count >= 1
    assert math.isinf(float(max(buckets, key=lambda s: float(s.labels["le"])).labels["le"]))

    predictions = families["clip_har_predictions"]
    assert predictions.type == "counter"
    by_label = {
        s.labels["label"]: s.value
        for s in predictions.samples
        if s.name == "clip_har_predictions_total"
        and s.labels["model"] == name
        and s.labels["version"] == version
    }
    assert by_label.get(label, 0) >= 1
    assert set(by_label) <= {*live.model["classes"], "open_vocabulary"}

    for histogram in ("clip_har_queue_wait_seconds", "clip_har_inference_seconds"):
        family = families[histogram]
        assert family.type == "histogram"
        assert any(s.labels.get("model") == name for s in family.samples)
    (info,) = families["clip_har_model_info"].samples
    assert (info.labels["model"], info.labels["version"], info.value) == (name, version, 1.0)


# ---------------------------------------------------------------------------- errors, auth off


def test_every_error_is_json_with_the_request_id_and_serving_goes_on(live: Live) -> None:
    client = live.client
    _assert_v1_error(
        client.post("/v1/predict", content=b"hello", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    _assert_v1_error(client.post("/v1/predict", json={"image_base64": "@@@"}), 400)
    _assert_v1_error(client.post("/v1/predict", files={"other": ("x", b"x")}), 422)
    _assert_v1_error(client.post("/v1/predict", files={"file": ("e.jpg", b"", "image/jpeg")}), 400)
    _assert_v1_error(client.get("/v1/no-such-route"), 404)
    _assert_v1_error(client.get("/v1/predict"), 405)
    _assert_v2_error(client.post(f"/v2/models/{live.model['name']}/infer", content=b"{"), 400)

    mine = client.post(
        "/v1/predict", json={"image_base64": ""}, headers={"X-Request-ID": "client-id-42"}
    )
    assert mine.status_code == 400
    assert mine.headers["x-request-id"] == "client-id-42"
    assert mine.json()["error"]["request_id"] == "client-id-42"

    assert client.get("/readyz").status_code == 200
    ok = client.post("/v1/predict", json={"image_base64": _b64(live.photos[0])})
    assert ok.status_code == 200, ok.text


def test_auth_off_opens_everything_but_disables_admin_routes(live: Live) -> None:
    for path in ("/v1/labels", "/v1/model", "/v1/feedback/stats", "/metrics", "/readyz"):
        answer = live.client.get(path)
        assert answer.status_code == 200, (path, answer.text)
        assert answer.headers["x-request-id"]
    reload = live.client.post("/v1/admin/reload", json={})
    _assert_v1_error(reload, 403, "admin_disabled")
    # a key is not needed, and one sent anyway is ignored
    assert live.client.get("/v1/labels", headers=_bearer("anything")).status_code == 200


# ---------------------------------------------------------------------------- auth on


def test_api_routes_need_a_valid_key(guarded: Live) -> None:
    client, photo = guarded.client, guarded.photos[0]
    name = guarded.model["name"]
    image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(photo)]}
    v2_request = {"inputs": [image]}
    for key_headers in ({}, _bearer("wrong"), {"X-API-Key": "wrong"}, _bearer(ADMIN_KEY + "x")):
        refused = client.post(
            "/v1/predict", json={"image_base64": _b64(photo)}, headers=key_headers
        )
        _assert_v1_error(refused, 401, "unauthorized")
        assert refused.headers["www-authenticate"] == "Bearer"
        _assert_v1_error(client.get("/v1/labels", headers=key_headers), 401, "unauthorized")
        _assert_v1_error(client.get("/v1/feedback/stats", headers=key_headers), 401)
        v2 = client.post(f"/v2/models/{name}/infer", json=v2_request, headers=key_headers)
        _assert_v2_error(v2, 401)

    for key_headers in (_bearer(API_KEY), {"X-API-Key": API_KEY}, _bearer(ADMIN_KEY)):
        answer = client.post("/v1/predict", json={"image_base64": _b64(photo)}, headers=key_headers)
        assert answer.status_code == 200, answer.text
        _assert_prediction(answer.json(), guarded.model, top_k=5)
        v2 = client.post(f"/v2/models/{name}/infer", json=v2_request, headers=key_headers)
        assert v2.status_code == 200, v2.text


def test_admin_reload_needs_the_admin_key(guarded: Live) -> None:
    client = guarded.client
    _assert_v1_error(client.post("/v1/admin/reload", json={}), 401, "unauthorized")
    _assert_v1_error(
        client.post("/v1/admin/reload", json={}, headers=_bearer("wrong")), 401, "unauthorized"
    )
    _assert_v1_error(
        client.post("/v1/admin/reload", json={}, headers=_bearer(API_KEY)), 403, "forbidden"
    )
    reloaded = client.post("/v1/admin/reload", json={}, headers={"X-API-Key": ADMIN_KEY})
    assert reloaded.status_code == 200, reloaded.text
    body = reloaded.json()
    assert body["model"]["version"] == guarded.model["version"]
    assert body["previous"]["version"] == guarded.model["version"]
    assert client.get("/readyz").status_code == 200


def test_health_and_metrics_stay_open_with_keys_by_default(guarded: Live) -> None:
    for path in ("/readyz", "/livez", "/v2/health/ready", "/v2/health/live", "/metrics"):
        answer = guarded.client.get(path)
        assert answer.status_code == 200, (path, answer.text)
