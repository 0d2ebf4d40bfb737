"""The Open Inference Protocol (KServe v2 REST, as Triton speaks it): server and model
metadata, model readiness and inference, with the binary tensor data extension.

Inputs (exactly one per request, any name): a ``BYTES`` tensor ``[N]`` or ``[N, 1]`` of encoded
images (raw bytes as binary tensor data; base64 text when sent as JSON), or an ``FP32`` tensor
``[N, 3, H, W]`` of pixels preprocessed as the model's ``image_size`` says. Outputs:
``probabilities`` ``FP32 [N, C]`` and ``labels`` ``BYTES [N]`` (the top-1 class of each image).
Errors are the protocol's ``{"error": "<message>"}`` (see :mod:`clip_har.serving.errors`).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from clip_har.errors import ApiError, V2FormatError
from clip_har.serving import v2_codec
from clip_har.serving.auth import require_api_key
from clip_har.serving.images import decode_base64, decode_images
from clip_har.serving.models import ModelInfo, ServedModel
from clip_har.serving.settings import ServeSettings
from clip_har.serving.state import Services, services
from clip_har.serving.store import PredictionRecord
from clip_har.version import __version__

logger = logging.getLogger(__name__)

ROUTE = "v2/infer"
SERVER_NAME = "clip-har"
EXTENSIONS = ("binary_tensor_data", "classification")
PROBABILITIES = "probabilities"
LABELS = "labels"
OUTPUT_NAMES = (PROBABILITIES, LABELS)
# the protocol's platform names, by bundle format
_PLATFORMS = {"onnx": "onnx_onnxv1", "onnx-int8": "onnx_onnxv1", "tensorrt": "tensorrt_plan"}

router = APIRouter(tags=["v2 (Open Inference Protocol)"], dependencies=[Depends(require_api_key)])


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def _model_not_found(name: str, version: str | None, info: ModelInfo) -> ApiError:
    asked = name if version is None else f"{name} version {version}"
    served = f"this server serves {info.name!r} version {info.version!r}"
    return ApiError(404, "model_not_found", f"unknown model {asked!r}: {served}")


def _check_model(info: ModelInfo | None, name: str, version: str | None) -> ModelInfo:
    """``info`` when it is the model (and version) the path names; else 404 (503 while no
    model is loaded yet)."""
    if info is None:
        raise ApiError(503, "not_ready", "no model is loaded yet", {"Retry-After": "5"})
    if info.name != name or (version is not None and version != info.version):
        raise _model_not_found(name, version, info)
    return info


# ----------------------------------------------------------------------------- documented shapes


class V2ErrorBody(BaseModel):
    """Every /v2 error answer: the protocol's ``{"error": "<message>"}``."""

    error: str = Field(description="What went wrong, in words.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a variable dimension (the batch).")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata] = Field(description="The accepted inputs; a request sends one.")
    outputs: list[TensorMetadata]


class ModelReadiness(BaseModel):
    name: str
    ready: bool


_V2_ERROR_DESCRIPTIONS = {
    400: "Invalid request (bad tensor, shape, datatype, image or body)",
    401: "Missing or invalid API key",
    404: "The server does not serve this model or version",
    413: "Request body, decompressed body or image over a limit",
    415: "Unsupported Content-Encoding or image type",
    503: "Model not ready, queue full or draining (see Retry-After)",
    504: "Deadline passed before the model ran",
}


def v2_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a /v2 route: these statuses, and ``default`` (any other status,
    e.g. 405 or 500), all with the protocol's :class:`V2ErrorBody` body. Documenting ``default``
    also keeps FastAPI from documenting its 422 validation shape, which /v2 never answers
    (the path parameters are plain strings and the routes read their bodies themselves)."""
    responses: dict[int | str, dict[str, Any]] = {
        status: {"model": V2ErrorBody, "description": _V2_ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }
    responses["default"] = {"model": V2ErrorBody, "description": "Any other error"}
    return responses


# ----------------------------------------------------------------------------- metadata


@router.get(
    "/v2",
    summary="Server metadata",
    response_model=ServerMetadata,
    responses=v2_error_responses(401),
)
async def server_metadata() -> dict[str, Any]:
    """The server's name, version and protocol extensions."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def model_metadata(info: ModelInfo) -> dict[str, Any]:
    """The protocol's model metadata: the two input forms (a request sends one) and outputs."""
    height, width = info.image_size
    return {
        "name": info.name,
        "versions": [info.version],
        "platform": _PLATFORMS.get(info.format, f"clip_har_{info.format}"),
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, height, width]},
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(info.classes)]},
            {"name": LABELS, "datatype": "BYTES", "shape": [-1]},
        ],
    }


_METADATA_DOC: dict[str, Any] = {
    "summary": "Model metadata",
    "response_model": ModelMetadata,
    "responses": v2_error_responses(401, 404, 503),
}


@router.get("/v2/models/{model_name}", **_METADATA_DOC)
async def get_model_metadata(model_name: str, svc: Services = Depends(services)) -> dict[str, Any]:
    """Name, versions, platform, inputs and outputs of the served model."""
    return model_metadata(_check_model(svc.models.info, model_name, None))


@router.get("/v2/models/{model_name}/versions/{model_version}", **_METADATA_DOC)
async def get_model_version_metadata(
    model_name: str, model_version: str, svc: Services = Depends(services)
) -> dict[str, Any]:
    """Name, versions, platform, inputs and outputs of the served model, if it is this version."""
    return model_metadata(_check_model(svc.models.info, model_name, model_version))


def _readiness(svc: Services, model_name: str, model_version: str | None) -> JSONResponse:
    info = svc.models.info
    if info is None and svc.settings.model_name in (None, model_name):
        # nothing loaded yet: the name may well be right, it is just not ready
        return JSONResponse({"name": model_name, "ready": False}, status_code=400)
    info = _check_model(info, model_name, model_version)
    ready = bool(svc.models.ready)
    return JSONResponse({"name": info.name, "ready": ready}, status_code=200 if ready else 400)


_READY_DOC: dict[str, Any] = {
    "summary": "Model readiness",
    "response_model": ModelReadiness,
    "responses": {
        400: {
            "model": ModelReadiness,
            "description": "Not ready: loading, warming up, failed or draining (as Triton answers)",
        },
        **v2_error_responses(401, 404, 503),
    },
}


@router.get("/v2/models/{model_name}/ready", **_READY_DOC)
async def model_ready(model_name: str, svc: Services = Depends(services)) -> JSONResponse:
    """200 when the model is loaded, warm and not draining; 400 when it is not (as Triton
    answers); 404 for a model this server does not serve."""
    return _readiness(svc, model_name, None)


@router.get("/v2/models/{model_name}/versions/{model_version}/ready", **_READY_DOC)
async def model_version_ready(
    model_name: str, model_version: str, svc: Services = Depends(services)
) -> JSONResponse:
    """As the unversioned readiness, and 404 for a version this server does not serve."""
    return _readiness(svc, model_name, model_version)


# ----------------------------------------------------------------------------- inference


class InferParameters(BaseModel):
    """Per-tensor parameters of the binary tensor data extension (others are ignored)."""

    binary_data_size: int | None = Field(
        None, description="Bytes of this tensor in the binary data after the JSON header."
    )


class InferInput(BaseModel):
    name: str
    datatype: str = Field(description="BYTES (encoded images) or FP32 (pixels [N,3,H,W]).")
    shape: list[int]
    data: list[Any] | None = Field(
        None, description="The elements (BYTES as base64 text); absent for binary data."
    )
    parameters: InferParameters | None = None


class InferRequestedOutput(BaseModel):
    name: str = Field(description="probabilities or labels.")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data (bool); classification (int, probabilities only)."
    )


class InferenceRequest(BaseModel):
    """The JSON (head) of an inference request: exactly one input."""

    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="binary_data_output (bool).")
    inputs: list[InferInput]
    outputs: list[InferRequestedOutput] | None = None


class InferOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: InferParameters | None = None


class InferenceResponse(BaseModel):
    """The JSON (head) of an inference answer; ``parameters.prediction_ids`` names the logged
    predictions (comma-separated, for POST /v1/feedback)."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferOutput]


_BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}
_INFER_DOC: dict[str, Any] = {
    "summary": "Inference",
    "response_model": None,
    "responses": {
        200: {
            "model": InferenceResponse,
            "description": "JSON, or (binary outputs) JSON followed by the binary tensor data, "
            "its length in Inference-Header-Content-Length",
            "content": {v2_codec.BINARY_CONTENT_TYPE: _BINARY_BODY},
        },
        **v2_error_responses(400, 401, 404, 413, 415, 503, 504),
    },
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                v2_codec.JSON_CONTENT_TYPE: {"schema": InferenceRequest.model_json_schema()},
                v2_codec.BINARY_CONTENT_TYPE: _BINARY_BODY,
            },
        }
    },
}


async def _read_body(request: Request, settings: ServeSettings) -> bytes:
    """The request body, inflated when the client compressed it (as tritonclient can), never
    past ``settings.max_upload_bytes``."""
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ApiError(415, "unsupported_media_type", f"unsupported Content-Encoding {encoding!r}")
    # gzip: header + deflate stream; "deflate" in HTTP is a zlib stream
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    limit = settings.max_upload_bytes
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _bad(f"the {encoding} body cannot be decompressed: {exc}") from None
    if len(inflated) > limit:
        raise ApiError(
            413, "payload_too_large", f"the decompressed body is larger than {limit} bytes"
        )
    if not inflater.eof:
        raise _bad(f"the {encoding} body is truncated")
    return inflated


@dataclass(frozen=True)
class _Wanted:
    """An output to answer: its name, binary or JSON, and the classification count (Triton's
    classification extension: the top ``classes`` as ``"prob:index:label"`` strings)."""

    name: str
    binary: bool
    classes: int | None = None


def _wanted_outputs(request: v2_codec.InferenceRequest) -> list[_Wanted]:
    if request.outputs is None:
        return [_Wanted(name, request.binary_output) for name in OUTPUT_NAMES]
    wanted = []
    for output in request.outputs:
        if output.name not in OUTPUT_NAMES:
            raise _bad(f"unknown output {output.name!r}; the outputs are {', '.join(OUTPUT_NAMES)}")
        binary = output.parameters.get("binary_data", request.binary_output)
        count = output.parameters.get("classification")
        if count is not None:
            if output.name != PROBABILITIES:
                raise _bad(f"output {output.name!r}: classification applies to {PROBABILITIES!r}")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise _bad("parameter 'classification' must be a positive integer")
        wanted.append(_Wanted(output.name, bool(binary), count))
    return wanted


def _single_input(
    request: v2_codec.InferenceRequest, settings: ServeSettings
) -> v2_codec.InputTensor:
    if len(request.inputs) != 1:
        raise _bad(
            f"send exactly one input (a BYTES tensor of images or an FP32 pixel tensor), "
            f"got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    if tensor.datatype not in ("BYTES", "FP32"):
        raise _bad(
            f"input {tensor.name!r}: datatype {tensor.datatype} is not accepted; send BYTES "
            "(encoded images) or FP32 (preprocessed pixels [N,3,H,W])"
        )
    count = tensor.shape[0] if tensor.shape else 0
    if count < 1:
        raise _bad(f"input {tensor.name!r}: the batch dimension must be at least 1")
    if count > settings.max_batch_images:
        raise _bad(
            f"input {tensor.name!r}: {count} images, more than the "
            f"{settings.max_batch_images} a request may hold"
        )
    return tensor


def _image_bytes(tensor: v2_codec.InputTensor) -> list[bytes]:
    if tensor.shape not in ((tensor.shape[0],), (tensor.shape[0], 1)):
        raise _bad(f"input {tensor.name!r}: a BYTES image tensor has shape [N] or [N,1]")
    elements: list[bytes] = tensor.data.ravel().tolist()
    if tensor.binary:
        return elements
    # JSON strings carry the images base64-encoded (raw bytes are not valid JSON text)
    return [
        decode_base64(element.decode("utf-8"), f"{tensor.name}[{index}]")
        for index, element in enumerate(elements)
    ]


def _pixels(tensor: v2_codec.InputTensor, info: ModelInfo) -> np.ndarray:
    height, width = info.image_size
    if len(tensor.shape) != 4 or tensor.shape[1:] != (3, height, width):
        raise _bad(
            f"input {tensor.name!r}: an FP32 pixel tensor has shape [N,3,{height},{width}] for "
            f"this model, got {list(tensor.shape)}"
        )
    pixels = np.ascontiguousarray(tensor.data, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise _bad(f"input {tensor.name!r}: pixels must be finite (no NaN or infinity)")
    return pixels


def _classification(probs: np.ndarray, classes: Sequence[str], count: int) -> list[str]:
    top = np.argsort(-probs, axis=1, kind="stable")[:, : min(count, probs.shape[1])]
    return [
        f"{probs[row, col]:.6f}:{col}:{classes[col]}"
        for row in range(probs.shape[0])
        for col in top[row]
    ]


def _outputs(
    wanted: Sequence[_Wanted], probs: np.ndarray, labels: list[str], classes: Sequence[str]
) -> list[v2_codec.OutputTensor]:
    outputs = []
    for item in wanted:
        if item.name == LABELS:
            outputs.append(
                v2_codec.OutputTensor(LABELS, "BYTES", (len(labels),), labels, item.binary)
            )
        elif item.classes is not None:
            width = min(item.classes, probs.shape[1])
            strings = _classification(probs, classes, item.classes)
            outputs.append(
                v2_codec.OutputTensor(
                    PROBABILITIES, "BYTES", (probs.shape[0], width), strings, item.binary
                )
            )
        else:
            outputs.append(
                v2_codec.OutputTensor(PROBABILITIES, "FP32", probs.shape, probs, item.binary)
            )
    return outputs


async def _infer(
    model: ServedModel, tensor: v2_codec.InputTensor, settings: ServeSettings, deadline: float
) -> tuple[np.ndarray, list[bytes] | None]:
    """Probabilities ``[N, C]`` for the input, and the image bytes when images were sent."""
    if tensor.datatype == "FP32":
        return await model.predict(_pixels(tensor, model.info), deadline=deadline), None
    datas = _image_bytes(tensor)
    images = await decode_images(datas, settings)
    pixels = await anyio.to_thread.run_sync(model.preprocess, images)
    return await model.predict(pixels, deadline=deadline), datas


async def _records(
    svc: Services,
    info: ModelInfo,
    probs: np.ndarray,
    datas: list[bytes] | None,
    latency_ms: float,
) -> list[PredictionRecord]:
    hashes: list[str | None] = [None] * probs.shape[0]
    if datas is not None and svc.settings.store_images is not None:
        store = svc.store
        hashes = await anyio.to_thread.run_sync(lambda: [store.store_image(d) for d in datas])
    k = min(svc.settings.default_top_k, probs.shape[1])
    created = datetime.now(timezone.utc)
    records = []
    for row, sha in zip(probs, hashes, strict=True):
        top = np.argsort(-row, kind="stable")[:k]
        records.append(
            PredictionRecord(
                id=PredictionRecord.new_id(),
                created_at=created,
                model_name=info.name,
                model_version=info.version,
                route=ROUTE,
                label=info.classes[int(top[0])],
                confidence=float(row[top[0]]),
                top_k=[(info.classes[int(i)], float(row[i])) for i in top],
                latency_ms=latency_ms,
                image_sha256=sha,
            )
        )
    return records


@router.post("/v2/models/{model_name}/infer", **_INFER_DOC)
async def infer(request: Request, model_name: str, svc: Services = Depends(services)) -> Response:
    """Classify the images (or pixels) of one protocol request; the body is JSON, or JSON plus
    binary tensor data when ``Inference-Header-Content-Length`` is set."""
    return await _answer_inference(request, svc, model_name, None)


@router.post("/v2/models/{model_name}/versions/{model_version}/infer", **_INFER_DOC)
async def infer_version(
    request: Request, model_name: str, model_version: str, svc: Services = Depends(services)
) -> Response:
    """As the unversioned inference, and 404 for a version this server does not serve."""
    return await _answer_inference(request, svc, model_name, model_version)


async def _answer_inference(
    request: Request, svc: Services, model_name: str, model_version: str | None
) -> Response:
    """Decode, run, log and encode one inference request."""
    started = time.perf_counter()
    deadline = time.monotonic() + svc.settings.request_timeout_s
    if svc.models.info is not None:  # fail fast; while none is loaded, use() answers 503
        _check_model(svc.models.info, model_name, model_version)
    body = await _read_body(request, svc.settings)
    try:
        decoded = v2_codec.decode_request(body, request.headers.get(v2_codec.HEADER_LENGTH))
    except V2FormatError as exc:
        raise _bad(str(exc)) from None
    tensor = _single_input(decoded, svc.settings)
    wanted = _wanted_outputs(decoded)

    async with svc.models.use() as model:
        info = _check_model(model.info, model_name, model_version)  # the model of this lease
        probs, datas = await _infer(model, tensor, svc.settings, deadline)
    probs = np.asarray(probs, dtype=np.float32)
    if not np.isfinite(probs).all():
        logger.error("model %s %s answered non-finite probabilities", info.name, info.version)
        raise ApiError(500, "internal", "the model answered non-finite probabilities")

    top1 = probs.argmax(axis=1)
    labels = [info.classes[int(i)] for i in top1]
    latency_ms = (time.perf_counter() - started) * 1000.0
    records = await _records(svc, info, probs, datas, latency_ms)
    await svc.store.log_predictions(records)
    svc.metrics.observe_predictions(
        info.labels(), labels, [float(probs[row, col]) for row, col in enumerate(top1)]
    )

    content, header_length = v2_codec.encode_response(
        model_name=info.name,
        model_version=info.version,
        request_id=decoded.id,
        outputs=_outputs(wanted, probs, labels, info.classes),
        parameters={"prediction_ids": ",".join(record.id for record in records)},
    )
    if header_length is None:
        return Response(content, media_type=v2_codec.JSON_CONTENT_TYPE)
    return Response(
        content,
        media_type=v2_codec.BINARY_CONTENT_TYPE,
        headers={v2_codec.HEADER_LENGTH: str(header_length)},
    )
