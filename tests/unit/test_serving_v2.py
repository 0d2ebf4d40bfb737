"""The Open Inference Protocol (KServe v2 REST) as standard clients speak it: the codec of the
binary tensor data extension, the /v2 routes over ASGI, and tritonclient against real uvicorn."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port
from fastapi.testclient import TestClient
from PIL import Image

from clip_har.errors import V2FormatError
from clip_har.serving import v2_codec

# ----------------------------------------------------------------------------- helpers


def _jpeg(seed: int = 0, size: tuple[int, int] = (96, 72)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG")
    return buffer.getvalue()


def _json_body(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def _image_input(*images: bytes, name: str = "image") -> dict[str, Any]:
    return {
        "name": name,
        "datatype": "BYTES",
        "shape": [len(images)],
        "data": [base64.b64encode(image).decode() for image in images],
    }


# ----------------------------------------------------------------------------- the codec


def test_bytes_elements_round_trip_with_length_prefixes() -> None:
    elements = [b"", b"\x00\xffjpeg", "näme".encode()]
    raw = v2_codec.serialize_bytes(elements)
    assert raw[:4] == b"\x00\x00\x00\x00"  # 4-byte little-endian length of the empty element
    assert raw[4:8] == (6).to_bytes(4, "little")
    assert v2_codec.deserialize_bytes(raw) == elements


def test_bytes_serialization_matches_tritonclient() -> None:
    utils = pytest.importorskip("tritonclient.utils")
    elements = [b"first", b"", b"\x01\x02\x03"]
    theirs = utils.serialize_byte_tensor(np.array(elements, dtype=object)).item()
    assert v2_codec.serialize_bytes(elements) == theirs


def test_request_mixes_json_and_binary_inputs_in_order() -> None:
    head = {
        "id": "req-1",
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4.5]]},
            {
                "name": "b",
                "datatype": "INT32",
                "shape": [3],
                "parameters": {"binary_data_size": 12},
            },
            {
                "name": "c",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": 13},
            },
        ],
        "outputs": [{"name": "x", "parameters": {"binary_data": True}}, {"name": "y"}],
    }
    text = json.dumps(head).encode()
    tail = np.array([7, -8, 9], dtype="<i4").tobytes() + v2_codec.serialize_bytes([b"hi", b"you"])
    request = v2_codec.decode_request(text + tail, str(len(text)))

    assert request.id == "req-1"
    a, b, c = request.inputs
    assert a.data.dtype == np.float32 and a.data.tolist() == [[1, 2], [3, 4.5]] and not a.binary
    assert b.data.tolist() == [7, -8, 9] and b.binary
    assert c.data.tolist() == [b"hi", b"you"] and c.shape == (2,)
    assert [(o.name, o.binary) for o in request.outputs or []] == [("x", True), ("y", False)]
    assert request.binary_output is False


def test_encode_request_round_trips_through_decode_request() -> None:
    pixels = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    body, length = v2_codec.encode_request(
        [("pixels", "FP32", pixels.shape, pixels)], request_id="7", outputs={"labels": True}
    )
    assert length is not None
    decoded = v2_codec.decode_request(body, str(length))
    np.testing.assert_array_equal(decoded.inputs[0].data, pixels)
    assert decoded.outputs == [v2_codec.RequestedOutput("labels", True, {"binary_data": True})]

    body, length = v2_codec.encode_request([("image", "BYTES", [1], [b"abc"])], binary_inputs=False)
    assert length is None
    assert v2_codec.decode_request(body).inputs[0].data.tolist() == [b"abc"]


def test_response_binary_outputs_follow_the_json_and_tritonclient_reads_them() -> None:
    probs = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    outputs = [
        v2_codec.OutputTensor("probabilities", "FP32", probs.shape, probs, binary=True),
        v2_codec.OutputTensor("labels", "BYTES", (2,), ["run", "walk"], binary=False),
    ]
    body, length = v2_codec.encode_response(
        model_name="m", model_version="1", outputs=outputs, request_id="r"
    )
    assert length is not None and body[length:] == probs.tobytes()
    head = json.loads(body[:length])
    assert head["id"] == "r" and head["model_version"] == "1"
    assert head["outputs"][0]["parameters"] == {"binary_data_size": probs.nbytes}
    assert head["outputs"][1]["data"] == ["run", "walk"]
    decoded = v2_codec.decode_response(body, str(length))
    np.testing.assert_array_equal(decoded["probabilities"], probs)

    http = pytest.importorskip("tritonclient.http")
    result = http.InferResult.from_response_body(body, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probs)
    assert result.as_numpy("labels").tolist() == ["run", "walk"]


def test_all_json_response_has_no_header_length() -> None:
    body, length = v2_codec.encode_response(
        model_name="m",
        model_version=None,
        outputs=[v2_codec.OutputTensor("labels", "BYTES", (1,), [b"sit"], binary=False)],
    )
    assert length is None
    assert json.loads(body) == {
        "model_name": "m",
        "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [1], "data": ["sit"]}],
    }


def _binary(
    inputs: list[dict[str, Any]], tail: bytes, length: int | None = None
) -> tuple[bytes, str]:
    text = json.dumps({"inputs": inputs}).encode()
    return text + tail, str(len(text) if length is None else length)


_FP32_2 = {"name": "x", "datatype": "FP32", "shape": [2]}
MALFORMED: dict[str, tuple[bytes, str | None, str]] = {
    "not json": (b"\x89PNG...", None, "not UTF-8"),
    "json list": (b"[1, 2]", None, "JSON object"),
    "NaN literal": (_json_body([{**_FP32_2, "data": [1, float("nan")]}]), None, "NaN"),
    "no inputs": (b'{"inputs": []}', None, "non-empty list"),
    "bad datatype": (
        _json_body([{**_FP32_2, "datatype": "FLOAT", "data": [1, 2]}]),
        None,
        "datatype",
    ),
    "negative dim": (_json_body([{**_FP32_2, "shape": [-1], "data": [1]}]), None, "shape"),
    "count mismatch": (_json_body([{**_FP32_2, "data": [1, 2, 3]}]), None, "3 elements"),
    "string in FP32": (_json_body([{**_FP32_2, "data": [1, "2"]}]), None, "numbers"),
    "float in INT32": (
        _json_body([{**_FP32_2, "datatype": "INT32", "data": [1, 2.5]}]),
        None,
        "integers",
    ),
    "uint8 overflow": (
        _json_body([{**_FP32_2, "datatype": "UINT8", "data": [1, 300]}]),
        None,
        "fit",
    ),
    "bytes not string": (
        _json_body([{"name": "i", "datatype": "BYTES", "shape": [1], "data": [1]}]),
        None,
        "strings",
    ),
    "no data": (_json_body([_FP32_2]), None, "neither"),
    "duplicate input": (_json_body([{**_FP32_2, "data": [1, 2]}] * 2), None, "twice"),
    "binary without header": (
        _binary([{**_FP32_2, "parameters": {"binary_data_size": 8}}], b"\0" * 8)[0],
        None,
        "Inference-Header",
    ),
    "header past body": (b'{"inputs": []}', "999", "only 14 bytes"),
    "header not a number": (b"{}", "ten", "whole number"),
    "size past body": (
        *_binary([{**_FP32_2, "parameters": {"binary_data_size": 16}}], b"\0" * 8),
        "left in the body",
    ),
    "size vs shape": (
        *_binary([{**_FP32_2, "parameters": {"binary_data_size": 4}}], b"\0" * 4),
        "needs 8",
    ),
    "unclaimed bytes": (
        *_binary([{**_FP32_2, "parameters": {"binary_data_size": 8}}], b"\0" * 12),
        "no input claims",
    ),
    "data and size": (
        *_binary([{**_FP32_2, "data": [1, 2], "parameters": {"binary_data_size": 8}}], b"\0" * 8),
        "both",
    ),
    "bytes length past end": (
        *_binary(
            [
                {
                    "name": "i",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 6},
                }
            ],
            (100).to_bytes(4, "little") + b"ab",
        ),
        "runs past",
    ),
    "bytes count vs shape": (
        *_binary(
            [
                {
                    "name": "i",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": 6},
                }
            ],
            v2_codec.serialize_bytes([b"ab"]),
        ),
        "1 BYTES elements",
    ),
    "shared memory": (
        _json_body([{**_FP32_2, "data": [1, 2], "parameters": {"shared_memory_region": "r"}}]),
        None,
        "shared memory",
    ),
    "id not string": (_json_body([{**_FP32_2, "data": [1, 2]}], id=5), None, "'id'"),
    "binary_data_output not bool": (
        _json_body([{**_FP32_2, "data": [1, 2]}], parameters={"binary_data_output": "yes"}),
        None,
        "binary_data_output",
    ),
    "output without name": (
        _json_body([{**_FP32_2, "data": [1, 2]}], outputs=[{}]),
        None,
        "outputs[0]",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_raise_a_format_error_naming_the_problem(case: str) -> None:
    body, header, expected = MALFORMED[case]
    with pytest.raises(V2FormatError, match=re.escape(expected)):
        v2_codec.decode_request(body, header)


# ----------------------------------------------------------------------------- the routes (ASGI)

MAX_BATCH = 4


def _settings(bundle: Path, folder: Path, **overrides: Any) -> Any:
    from clip_har.serving.settings import ServeSettings

    values: dict[str, Any] = {
        "bundle": str(bundle),
        "database_url": f"sqlite:///{folder / 'serving.db'}",
        "max_batch_images": MAX_BATCH,
        "max_wait_ms": 1.0,
    }
    return ServeSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def client(
    tiny_onnx_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    from clip_har.serving.app import create_app

    folder = tmp_path_factory.mktemp("serving-v2")
    with TestClient(create_app(_settings(tiny_onnx_bundle, folder))) as test_client:
        _wait_ready(test_client)
        yield test_client


def _wait_ready(client: TestClient, headers: dict[str, str] | None = None) -> None:
    """Wait until the model is loaded and warm (it loads in the background)."""
    give_up = time.monotonic() + 120
    while client.get("/v2/health/ready", headers=headers).status_code != 200:
        assert time.monotonic() < give_up, "the model never became ready"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def model(client: TestClient) -> dict[str, Any]:
    """The served model's metadata, read through the v1 model route."""
    info: dict[str, Any] = client.get("/v1/model").json()
    return info


def _infer_path(model: dict[str, Any]) -> str:
    return f"/v2/models/{model['name']}/infer"


def _error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    message: str = body["error"]
    return message


def test_server_metadata_announces_the_binary_extension(client: TestClient) -> None:
    body = client.get("/v2").json()
    assert body["name"] == "clip-har" and isinstance(body["version"], str)
    assert "binary_tensor_data" in body["extensions"]


def test_model_metadata_describes_inputs_and_outputs(
    client: TestClient, model: dict[str, Any]
) -> None:
    name, version = model["name"], model["version"]
    body = client.get(f"/v2/models/{name}").json()
    assert body == client.get(f"/v2/models/{name}/versions/{version}").json()
    assert body["name"] == name and body["versions"] == [version]
    height, width = model["image_size"]
    assert {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, height, width]} in body["inputs"]
    assert {"name": "image", "datatype": "BYTES", "shape": [-1]} in body["inputs"]
    assert body["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model["classes"])]},
        {"name": "labels", "datatype": "BYTES", "shape": [-1]},
    ]


def test_unknown_model_or_version_is_404_with_the_protocol_error(
    client: TestClient, model: dict[str, Any]
) -> None:
    name = model["name"]
    assert "nope" in _error(client.get("/v2/models/nope"), 404)
    _error(client.get(f"/v2/models/{name}/versions/999999"), 404)
    _error(client.get("/v2/models/nope/ready"), 404)
    _error(client.get(f"/v2/models/{name}/versions/999999/ready"), 404)
    _error(client.post("/v2/models/nope/infer", content=_json_body([_image_input(_jpeg())])), 404)
    response = client.post(
        f"/v2/models/{name}/versions/999999/infer", content=_json_body([_image_input(_jpeg())])
    )
    _error(response, 404)


V2_OPERATIONS = [
    ("get", "/v2"),
    ("get", "/v2/models/{model_name}"),
    ("get", "/v2/models/{model_name}/versions/{model_version}"),
    ("get", "/v2/models/{model_name}/ready"),
    ("get", "/v2/models/{model_name}/versions/{model_version}/ready"),
    ("post", "/v2/models/{model_name}/infer"),
    ("post", "/v2/models/{model_name}/versions/{model_version}/infer"),
]


def test_openapi_documents_the_v2_errors_in_the_protocol_shape(client: TestClient) -> None:
    """Regression (schemathesis): /v2 documented only 200 and FastAPI's 422, which it never
    answers; its errors are ``{"error": str}`` with 400/401/404/413/415/503/504."""
    spec = client.get("/openapi.json").json()
    error_ref = "#/components/schemas/V2ErrorBody"
    assert spec["components"]["schemas"]["V2ErrorBody"]["required"] == ["error"]
    expected = {
        "/v2": {"401"},
        "/v2/models/{model_name}": {"401", "404", "503"},
        "/v2/models/{model_name}/ready": {"400", "401", "404", "503"},
        "/v2/models/{model_name}/infer": {"400", "401", "404", "413", "415", "503", "504"},
    }
    for method, path in V2_OPERATIONS:
        responses = spec["paths"][path][method]["responses"]
        assert "422" not in responses, path
        unversioned = path.replace("/versions/{model_version}", "")
        assert expected[unversioned] | {"200", "default"} == set(responses), path
        for status in expected[unversioned] - {"400"} | {"default"}:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": error_ref}, (path, status)
    ready = spec["paths"]["/v2/models/{model_name}/ready"]["get"]["responses"]
    assert ready["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ModelReadiness")
    infer = spec["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert infer["responses"]["400"]["content"]["application/json"]["schema"] == {"$ref": error_ref}
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    assert set(infer["responses"]["200"]["content"]) == {
        "application/json",
        "application/octet-stream",
    }


def test_unversioned_v2_paths_take_no_version_parameter(client: TestClient) -> None:
    """Regression: stacked decorators published ``?model_version=`` on unversioned paths."""
    spec = client.get("/openapi.json").json()
    for method, path in V2_OPERATIONS:
        names = {p["name"] for p in spec["paths"][path][method].get("parameters", [])}
        wanted = {"model_name", "model_version"} & set(re.findall(r"{(\w+)}", path))
        assert names == wanted, path


def test_unversioned_paths_ignore_a_model_version_query(
    client: TestClient, model: dict[str, Any]
) -> None:
    name = model["name"]
    assert client.get(f"/v2/models/{name}?model_version=999999").status_code == 200
    assert client.get(f"/v2/models/{name}/ready?model_version=999999").status_code == 200
    response = client.post(
        f"/v2/models/{name}/infer?model_version=999999",
        content=_json_body([_image_input(_jpeg())]),
    )
    assert response.status_code == 200, response.text


def test_malformed_json_infer_body_is_400_in_the_protocol_shape(
    client: TestClient, model: dict[str, Any]
) -> None:
    response = client.post(
        _infer_path(model), content=b"\xff\x1a{", headers={"Content-Type": "application/json"}
    )
    _error(response, 400)


def test_model_ready_is_200_for_the_loaded_model(client: TestClient, model: dict[str, Any]) -> None:
    name, version = model["name"], model["version"]
    assert client.get(f"/v2/models/{name}/ready").status_code == 200
    assert client.get(f"/v2/models/{name}/versions/{version}/ready").status_code == 200


def test_infer_json_bytes_tensor_of_base64_images(
    client: TestClient, model: dict[str, Any]
) -> None:
    body = _json_body([_image_input(_jpeg(1), _jpeg(2))], id="abc-1")
    response = client.post(_infer_path(model), content=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    result = response.json()
    assert result["model_name"] == model["name"] and result["model_version"] == model["version"]
    assert result["id"] == "abc-1"
    outputs = {output["name"]: output for output in result["outputs"]}
    probs = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    assert outputs["probabilities"]["datatype"] == "FP32"
    assert probs.shape == (2, len(model["classes"]))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    labels = outputs["labels"]
    assert labels["datatype"] == "BYTES" and labels["shape"] == [2]
    assert labels["data"] == [model["classes"][i] for i in probs.argmax(axis=1)]


def test_fp32_pixels_give_the_same_probabilities_as_images_and_v1(
    client: TestClient, model: dict[str, Any], tiny_onnx_bundle: Path
) -> None:
    from clip_har.imaging import Preprocessor, load_image
    from clip_har.models.bundle import read_manifest

    image = _jpeg(3)
    pixels = Preprocessor(read_manifest(tiny_onnx_bundle).preprocessing).batch([load_image(image)])
    body, length = v2_codec.encode_request([("pixels", "FP32", pixels.shape, pixels)])
    response = client.post(
        _infer_path(model), content=body, headers={v2_codec.HEADER_LENGTH: str(length)}
    )
    assert response.status_code == 200, response.text
    from_pixels = v2_codec.decode_response(
        response.content, response.headers.get(v2_codec.HEADER_LENGTH)
    )

    response = client.post(_infer_path(model), content=_json_body([_image_input(image)]))
    from_image = v2_codec.decode_response(response.content)
    np.testing.assert_allclose(from_pixels["probabilities"], from_image["probabilities"], atol=1e-5)
    assert from_pixels["labels"].tolist() == from_image["labels"].tolist()

    classes = model["classes"]
    v1 = client.post(
        "/v1/predict",
        json={"image_base64": base64.b64encode(image).decode(), "top_k": len(classes)},
    ).json()
    v1_probs = {item["label"]: item["probability"] for item in v1["top_k"]}
    expected = np.array([v1_probs[label] for label in classes])
    np.testing.assert_allclose(from_pixels["probabilities"][0], expected, atol=1e-5)


def test_binary_request_and_binary_response(client: TestClient, model: dict[str, Any]) -> None:
    images = [_jpeg(4), _jpeg(5), _jpeg(6)]
    body, length = v2_codec.encode_request(
        [("image", "BYTES", [3, 1], images)],
        request_id="bin",
        outputs={"probabilities": True, "labels": True},
    )
    response = client.post(
        _infer_path(model),
        content=body,
        headers={v2_codec.HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header = response.headers[v2_codec.HEADER_LENGTH]
    head = json.loads(response.content[: int(header)])
    assert all("data" not in output for output in head["outputs"])
    outputs = v2_codec.decode_response(response.content, header)
    assert outputs["probabilities"].shape == (3, len(model["classes"]))
    assert outputs["probabilities"].dtype == np.float32
    assert [label.decode() for label in outputs["labels"]] == [
        model["classes"][i] for i in outputs["probabilities"].argmax(axis=1)
    ]


def test_requested_outputs_are_the_only_outputs(client: TestClient, model: dict[str, Any]) -> None:
    body = _json_body([_image_input(_jpeg())], outputs=[{"name": "labels"}])
    result = client.post(_infer_path(model), content=body).json()
    assert [output["name"] for output in result["outputs"]] == ["labels"]

    # binary_data_output makes every output binary unless an output says otherwise
    body = _json_body(
        [_image_input(_jpeg())],
        parameters={"binary_data_output": True},
        outputs=[
            {"name": "probabilities"},
            {"name": "labels", "parameters": {"binary_data": False}},
        ],
    )
    response = client.post(_infer_path(model), content=body)
    head = json.loads(response.content[: int(response.headers[v2_codec.HEADER_LENGTH])])
    probabilities, labels = head["outputs"]
    assert "binary_data_size" in probabilities["parameters"] and "data" in labels

    body = _json_body([_image_input(_jpeg())], outputs=[{"name": "logits"}])
    assert "logits" in _error(client.post(_infer_path(model), content=body), 400)


def test_classification_extension_gives_top_classes_as_strings(
    client: TestClient, model: dict[str, Any]
) -> None:
    body = _json_body(
        [_image_input(_jpeg())],
        outputs=[{"name": "probabilities", "parameters": {"classification": 3}}],
    )
    output = client.post(_infer_path(model), content=body).json()["outputs"][0]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 3]
    values = [entry.split(":", 2) for entry in output["data"]]
    assert [model["classes"][int(index)] for _, index, _ in values] == [
        label for *_, label in values
    ]
    assert [float(p) for p, _, _ in values] == sorted(
        (float(p) for p, _, _ in values), reverse=True
    )


def test_gzip_compressed_request_is_inflated(client: TestClient, model: dict[str, Any]) -> None:
    body = gzip.compress(_json_body([_image_input(_jpeg())]))
    response = client.post(_infer_path(model), content=body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text


def test_prediction_ids_are_logged_and_accept_feedback(
    client: TestClient, model: dict[str, Any]
) -> None:
    result = client.post(_infer_path(model), content=_json_body([_image_input(_jpeg())])).json()
    (prediction_id,) = result["parameters"]["prediction_ids"].split(",")
    feedback = client.post("/v1/feedback", json={"prediction_id": prediction_id, "correct": True})
    assert feedback.status_code == 201, feedback.text


def _bad_requests(model: dict[str, Any]) -> dict[str, tuple[bytes, dict[str, str], int]]:
    height, width = model["image_size"]
    nan_pixels = np.full((1, 3, height, width), np.nan, dtype=np.float32)
    nan_body, nan_length = v2_codec.encode_request(
        [("pixels", "FP32", nan_pixels.shape, nan_pixels)]
    )
    small = np.zeros((1, 3, height + 1, width), dtype=np.float32)
    small_body, small_length = v2_codec.encode_request([("pixels", "FP32", small.shape, small)])
    binary_head = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
        ]
    }
    head = json.dumps(binary_head).encode()
    good = _image_input(_jpeg())
    return {
        "not json": (b"garbage", {}, 400),
        "header length past body": (head + b"\0" * 8, {v2_codec.HEADER_LENGTH: "99999"}, 400),
        "sizes not adding up": (head + b"\0" * 12, {v2_codec.HEADER_LENGTH: str(len(head))}, 400),
        "element count vs shape": (_json_body([{**good, "shape": [2]}]), {}, 400),
        "bad datatype": (_json_body([{**good, "datatype": "STRING"}]), {}, 400),
        "INT32 input": (
            _json_body([{"name": "i", "datatype": "INT32", "shape": [1], "data": [1]}]),
            {},
            400,
        ),
        "two inputs": (_json_body([good, {**good, "name": "other"}]), {}, 400),
        "BYTES shape [N,2]": (
            _json_body([{**good, "shape": [1, 2], "data": good["data"] * 2}]),
            {},
            400,
        ),
        "wrong pixel size": (small_body, {v2_codec.HEADER_LENGTH: str(small_length)}, 400),
        "NaN pixels": (nan_body, {v2_codec.HEADER_LENGTH: str(nan_length)}, 400),
        "invalid base64": (_json_body([{**good, "data": ["%%%not base64%%%"]}]), {}, 400),
        "not an image": (
            _json_body([{**good, "data": [base64.b64encode(b"hello text").decode()]}]),
            {},
            415,
        ),
        "empty image": (_json_body([{**good, "data": [""]}]), {}, 400),
        "too many images": (_json_body([_image_input(*[_jpeg()] * (MAX_BATCH + 1))]), {}, 400),
        "empty batch": (_json_body([{**good, "shape": [0], "data": []}]), {}, 400),
        "unknown encoding": (b"{}", {"Content-Encoding": "br"}, 415),
        "broken gzip": (b"\x1f\x8bnot gzip", {"Content-Encoding": "gzip"}, 400),
        "gzip bomb past the upload cap": (
            gzip.compress(b" " * (21 * 2**20)),
            {"Content-Encoding": "gzip"},
            413,
        ),
    }


def test_every_malformed_request_is_a_4xx_protocol_error_and_serving_goes_on(
    client: TestClient, model: dict[str, Any]
) -> None:
    for case, (body, headers, status) in _bad_requests(model).items():
        response = client.post(_infer_path(model), content=body, headers=headers)
        assert response.status_code == status, (case, response.text)
        _error(response, status)
    response = client.post(_infer_path(model), content=_json_body([_image_input(_jpeg())]))
    assert response.status_code == 200, response.text


def test_v2_routes_need_the_api_key_when_keys_are_set(
    tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    from clip_har.serving.app import create_app

    settings = _settings(tiny_onnx_bundle, tmp_path, api_keys="s3cret")
    with TestClient(create_app(settings)) as keyed:
        _wait_ready(keyed)
        name = keyed.get("/v1/model", headers={"X-API-Key": "s3cret"}).json()["name"]
        body = _json_body([_image_input(_jpeg())])
        assert "API key" in _error(keyed.post(f"/v2/models/{name}/infer", content=body), 401)
        _error(keyed.get(f"/v2/models/{name}"), 401)
        ok = keyed.post(
            f"/v2/models/{name}/infer", content=body, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200, ok.text


# ------------------------------------------------------------ tritonclient, real uvicorn


@pytest.fixture
def live_server(tiny_onnx_bundle: Path, tmp_path: Path) -> Iterator[str]:
    """``host:port`` of the app under real uvicorn on 127.0.0.1, in a background thread."""
    import uvicorn

    from clip_har.serving.app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(_settings(tiny_onnx_bundle, tmp_path)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    give_up = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > give_up:
            server.should_exit = True
            pytest.fail("uvicorn did not start within 60 s")
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.mark.integration
def test_tritonclient_speaks_to_the_server_unchanged(live_server: str) -> None:
    http = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(url=live_server, network_timeout=60.0)
    try:
        assert client.is_server_live()
        give_up = time.monotonic() + 60
        while not client.is_server_ready():
            assert time.monotonic() < give_up, "never ready"
            time.sleep(0.1)
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        metadata = client.get_model_metadata(_model_name(live_server))
        name, version = metadata["name"], metadata["versions"][0]
        assert client.is_model_ready(name) and client.is_model_ready(name, version)
        assert not client.is_model_ready("no-such-model")
        classes = metadata["outputs"][0]["shape"][1]

        images = np.array([_jpeg(7), _jpeg(8)], dtype=object)
        image = http.InferInput("image", [2], "BYTES")
        image.set_data_from_numpy(images, binary_data=True)
        for binary_out in (True, False):
            outputs = [
                http.InferRequestedOutput("probabilities", binary_data=binary_out),
                http.InferRequestedOutput("labels", binary_data=binary_out),
            ]
            result = client.infer(name, [image], outputs=outputs, request_id="t1")
            probs = result.as_numpy("probabilities")
            assert probs.shape == (2, classes) and probs.dtype == np.float32
            labels = [
                label.decode() if isinstance(label, bytes) else label
                for label in result.as_numpy("labels")
            ]
            assert len(labels) == 2 and all(isinstance(label, str) and label for label in labels)
            assert result.get_response()["id"] == "t1"
            assert result.get_response()["model_version"] == version

        # no outputs named: tritonclient asks for everything in binary
        result = client.infer(name, [image], model_version=version)
        assert result.as_numpy("probabilities").shape == (2, classes)

        # FP32 pixels, as a client with its own preprocessing sends them
        height, width = metadata["inputs"][1]["shape"][2:]
        pixels = http.InferInput("pixels", [1, 3, height, width], "FP32")
        pixels.set_data_from_numpy(np.zeros((1, 3, height, width), dtype=np.float32))
        assert client.infer(name, [pixels]).as_numpy("probabilities").shape == (1, classes)

        with pytest.raises(InferenceServerException, match="unknown output"):
            client.infer(name, [image], outputs=[http.InferRequestedOutput("logits")])
        with pytest.raises(InferenceServerException, match="no-such-model"):
            client.get_model_metadata("no-such-model")
    finally:
        client.close()


def _model_name(server: str) -> str:
    import httpx

    name: str = httpx.get(f"http://{server}/v1/model", timeout=30).json()["name"]
    return name
