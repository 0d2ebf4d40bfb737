"""Request and response bodies of the friendly REST API (``/v1``), as pydantic models so
``/openapi.json`` documents them. Other route modules import the shared ones (``ModelRef``,
``ErrorResponse``, ``ERROR_RESPONSES``)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

if TYPE_CHECKING:
    from clip_har.serving.models import ModelInfo

# --------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    """What went wrong: a stable machine ``code``, a message and the request id."""

    code: str = Field(description="Stable machine-readable code, e.g. 'invalid_image'.")
    message: str = Field(description="What went wrong and what to do, in words.")
    request_id: str = Field(description="The X-Request-ID of the request.")


class ErrorResponse(BaseModel):
    """Every /v1 error answer."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (JSON :class:`ErrorResponse`)."""
    return {
        status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS.get(status, "Error")}
        for status in statuses
    }


_ERROR_DESCRIPTIONS = {
    400: "Bad input (empty, undecodable, invalid base64, URL instead of bytes, bad JSON)",
    401: "Missing or invalid API key",
    403: "Forbidden (admin key needed, or admin routes disabled)",
    404: "Not found",
    413: "Request body, image or image count over a limit",
    415: "Unsupported content type or image type",
    422: "Invalid request (validation)",
    503: "Model not ready, queue full or draining (see Retry-After)",
    504: "Deadline passed before the model ran",
}

ERROR_RESPONSES = error_responses(400, 401, 413, 415, 422, 503, 504)
"""The error statuses of every /v1 prediction route."""

# --------------------------------------------------------------------------- requests

TopK = Annotated[int, Field(ge=1)]
"""A requested top_k: at least 1 (the constraint applies to the integer, never to null)."""

_TOP_K_DOC = "How many labels to return (1..number of classes); default: the server's."
_TOP_K = Field(None, description=_TOP_K_DOC + " null means the default.")
_TOP_K_FORM = Field(None, description=_TOP_K_DOC)


class PredictRequest(BaseModel):
    """JSON body of POST /v1/predict."""

    model_config = ConfigDict(extra="forbid")

    image_base64: str = Field(
        description="The encoded image (JPEG, PNG, GIF, WebP, BMP or TIFF) in standard base64; "
        "a data: URL prefix is accepted. URLs are never fetched."
    )
    top_k: TopK | None = _TOP_K


class PredictBatchRequest(BaseModel):
    """JSON body of POST /v1/predict/batch."""

    model_config = ConfigDict(extra="forbid")

    images_base64: list[str] = Field(
        min_length=1, description="Encoded images in base64 (at most the server's batch limit)."
    )
    top_k: TopK | None = _TOP_K


class ClassifyRequest(BaseModel):
    """JSON body of POST /v1/classify (open vocabulary)."""

    model_config = ConfigDict(extra="forbid")

    image_base64: str = Field(description="The encoded image in standard base64.")
    labels: list[str] = Field(
        min_length=1,
        description="Candidate labels (unique, non-empty; at most the server's limit).",
    )
    templates: list[str] | None = Field(
        None,
        description="Prompt templates, each with exactly one '{}' where the label goes; "
        "default: the model's.",
    )
    top_k: TopK | None = _TOP_K


class PredictForm(BaseModel):
    """multipart/form-data body of POST /v1/predict."""

    file: bytes = Field(description="The image file.", json_schema_extra={"format": "binary"})
    top_k: TopK | SkipJsonSchema[None] = _TOP_K_FORM


class PredictBatchForm(BaseModel):
    """multipart/form-data body of POST /v1/predict/batch."""

    files: list[bytes] = Field(
        description="The image files (the field repeated).",
        json_schema_extra={"items": {"type": "string", "format": "binary"}},
    )
    top_k: TopK | SkipJsonSchema[None] = _TOP_K_FORM


class ClassifyForm(BaseModel):
    """multipart/form-data body of POST /v1/classify."""

    file: bytes = Field(description="The image file.", json_schema_extra={"format": "binary"})
    labels: list[str] = Field(
        description="Candidate labels: comma-separated, or the field repeated."
    )
    templates: list[str] | None = Field(
        None, description="Prompt templates, one per field, each with exactly one '{}'."
    )
    top_k: TopK | SkipJsonSchema[None] = _TOP_K_FORM


# --------------------------------------------------------------------------- responses


class ModelRef(BaseModel):
    """The model that answered."""

    name: str
    version: str
    format: str


class LabelProbability(BaseModel):
    label: str
    probability: float


class PredictionResponse(BaseModel):
    """One prediction."""

    prediction_id: str = Field(description="Id of the logged prediction (for POST /v1/feedback).")
    label: str = Field(description="The most probable label.")
    confidence: float = Field(description="Its probability.")
    top_k: list[LabelProbability]
    model: ModelRef
    latency_ms: float = Field(description="Server time from the request's arrival to the answer.")


class BatchItemFailure(BaseModel):
    code: str
    message: str


class BatchPrediction(BaseModel):
    """A predicted image of a batch."""

    index: int = Field(description="Position of the image in the request.")
    filename: str | None = Field(None, description="The uploaded file's name (multipart).")
    prediction_id: str
    label: str
    confidence: float
    top_k: list[LabelProbability]


class BatchFailure(BaseModel):
    """An image of a batch that could not be predicted (the others are)."""

    index: int
    filename: str | None = None
    error: BatchItemFailure


class BatchResponse(BaseModel):
    """Every image of a batch, in request order."""

    predictions: list[BatchPrediction | BatchFailure]
    model: ModelRef
    latency_ms: float


class LabelsResponse(BaseModel):
    labels: list[str]
    model: ModelRef


class RegistryRef(BaseModel):
    """Where a registered model came from."""

    uri: str = Field(description="The models:/ URI it was loaded from.")
    name: str
    version: str
    alias: str | None = None


class ServedModelInfo(BaseModel):
    """A served model's identity, format and manifest."""

    name: str
    version: str
    alias: str | None
    source: str
    format: str
    classes: list[str]
    image_size: list[int]
    open_vocabulary: bool
    manifest: dict[str, Any]
    metrics: dict[str, float]
    parity: dict[str, Any]
    loaded_at: str

    @classmethod
    def of(cls, info: ModelInfo) -> ServedModelInfo:
        """The JSON form of a loaded model's :class:`ModelInfo`."""
        return cls.model_validate(dataclasses.asdict(info))


class ModelResponse(ServedModelInfo):
    """The served model: manifest, registry version/alias, metrics, format and parity."""

    registry: RegistryRef | None = Field(description="Set when served from the model registry.")
    ready: bool
