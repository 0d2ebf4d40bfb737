"""Request and response bodies of the friendly REST API (``/v1``), as pydantic models so
``/openapi.json`` documents them. Other route modules import the shared ones (``ModelRef``,
``ErrorResponse``, ``ERROR_RESPONSES``)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

if TYPE_CHECKING:
    from collections.abc import Sequence

    from clip_har.serving.models import ModelInfo
    from clip_har.serving.store import (
        DriftScoreRecord,
        FeedbackStats,
        PredictionStats,
        StatsBucket,
    )

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


class ModelEvaluation(BaseModel):
    """The served model's evaluation (a `clip-har evaluate` output of it)."""

    origin: str = Field(
        description="Where it came from: the --evaluation folder, or the models:/ reference "
        "whose registered evaluation it is."
    )
    metrics: dict[str, float] = Field(description="Its scalar metrics (accuracy, macro_f1, ...).")
    class_names: list[str] = Field(description="The order of the confusion matrix's axes.")
    confusion_matrix: list[list[int]] = Field(
        description="Image counts: row = true class, column = predicted class."
    )
    n_images: int = Field(description="Images it scored.")
    data: str | None = Field(None, description="The data manifest it evaluated on.")
    split: str | None = Field(None, description="The split evaluated; null: every row.")
    format: str | None = Field(None, description="The engine format it ran.")
    has_report: bool = Field(description="Whether GET /v1/model/report has its HTML report.")


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
    evaluation: ModelEvaluation | None = Field(
        None, description="The model's evaluation, when the service has one (see --evaluation)."
    )

    @classmethod
    def of(cls, info: ModelInfo) -> ServedModelInfo:
        """The JSON form of a loaded model's :class:`ModelInfo`."""
        return cls.model_validate(dataclasses.asdict(info))


class ModelResponse(ServedModelInfo):
    """The served model: manifest, registry version/alias, metrics, format, parity and its
    evaluation (metrics and confusion matrix) when it has one."""

    registry: RegistryRef | None = Field(description="Set when served from the model registry.")
    ready: bool


# --------------------------------------------------------------------------- statistics


class LatencyPercentiles(BaseModel):
    """Logged latency percentiles in milliseconds (null when there are no predictions)."""

    p50: float | None
    p95: float | None
    p99: float | None


class PredictionStatsBucket(BaseModel):
    """The predictions of one time bucket ``[start, start + bucket_seconds)``."""

    start: datetime = Field(description="Start of the bucket (UTC, on a whole bucket boundary).")
    count: int = Field(description="Predictions logged in the bucket (0 for an empty one).")
    by_label: dict[str, int] = Field(
        description="Predictions per predicted label (labels without any are left out)."
    )
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_ms_p99: float | None
    mean_confidence: float | None = Field(description="Null for an empty bucket.")
    reviewed: int = Field(description="Predictions of the bucket with feedback (latest counts).")
    correct: int = Field(description="Reviewed predictions that were right.")
    accuracy: float | None = Field(description="correct / reviewed; null when none reviewed.")

    @classmethod
    def of(cls, bucket: StatsBucket) -> PredictionStatsBucket:
        """The answer's form of ``bucket`` (its latency percentiles as flat fields)."""
        fields = dataclasses.asdict(bucket)
        latency = fields.pop("latency_ms")
        return cls.model_validate(fields | {f"latency_ms_{k}": v for k, v in latency.items()})


class DriftScore(BaseModel):
    """The latest score of one drift metric, from `clip-har monitor drift`."""

    value: float
    threshold: float
    drifted: bool = Field(description="The value was over its threshold.")
    created_at: datetime = Field(description="When the drift run computed it (UTC).")
    since: datetime | None = Field(description="Start of the window it covered; null: all.")
    samples: int = Field(description="Predictions (or images) the score was computed on.")
    reference_id: str = Field(description="The reference profile it was compared with.")

    @classmethod
    def of(cls, record: DriftScoreRecord) -> DriftScore:
        """The answer's form of ``record``."""
        fields = dataclasses.asdict(record)
        return cls.model_validate({k: fields[k] for k in cls.model_fields})


class PredictionStatsResponse(BaseModel):
    """Predictions logged in a time window, overall and per time bucket (monitoring)."""

    since: datetime = Field(description="Start of the window (UTC): until minus hours.")
    until: datetime = Field(description="End of the window (UTC): the time of the request.")
    bucket_seconds: int
    model_version: str | None = Field(description="The model version filter, if any.")
    total: int = Field(description="Predictions logged in the window.")
    by_label: dict[str, int] = Field(description="Predictions per predicted label.")
    latency_ms: LatencyPercentiles
    mean_confidence: float | None = Field(description="Null when there are no predictions.")
    reviewed: int = Field(description="Predictions of the window with feedback (latest counts).")
    correct: int
    accuracy: float | None = Field(description="correct / reviewed; null when none reviewed.")
    buckets: list[PredictionStatsBucket] = Field(
        description="Every bucket overlapping the window, oldest first, empty ones included."
    )
    drift: dict[str, DriftScore] | None = Field(
        None,
        description="The latest drift score by metric (class_psi, confidence_ks, "
        "embedding_auc), whenever it was computed; null when `clip-har monitor drift` has "
        "recorded none.",
    )

    @classmethod
    def of(
        cls, stats: PredictionStats, drift: Sequence[DriftScoreRecord] = ()
    ) -> PredictionStatsResponse:
        """The answer for ``stats`` and the latest ``drift`` scores."""
        buckets = [PredictionStatsBucket.of(bucket) for bucket in stats.buckets]
        scores = {record.metric: DriftScore.of(record) for record in drift} or None
        return cls.model_validate(dataclasses.asdict(stats) | {"buckets": buckets, "drift": scores})


# --------------------------------------------------------------------------- feedback


class FeedbackResponse(BaseModel):
    """The feedback as stored."""

    feedback_id: str = Field(description="Id of the stored feedback.")
    prediction_id: str
    correct: bool
    label: str | None = Field(description="The right label (the predicted one when correct).")
    created_at: datetime = Field(description="When the feedback was stored (UTC).")


class GroupCounts(BaseModel):
    """Reviewed predictions of one group; a prediction reviewed several times counts once,
    with its latest feedback."""

    reviewed: int
    correct: int
    incorrect: int
    accuracy: float | None = Field(description="correct / reviewed; null when none reviewed.")


class ModelCounts(GroupCounts):
    """:class:`GroupCounts` of one model version."""

    model_name: str
    model_version: str


class FeedbackStatsResponse(BaseModel):
    """What the feedback says about the service's predictions."""

    predictions: int = Field(description="Predictions logged.")
    feedback_rows: int = Field(description="Feedback rows stored (all of them).")
    total: int = Field(description="Predictions with feedback (each counted once).")
    correct: int
    incorrect: int
    accuracy: float | None = Field(description="correct / total; null when total is 0.")
    by_label: dict[str, GroupCounts] = Field(description="By predicted label.")
    by_model: list[ModelCounts] = Field(description="By model name and version.")

    @classmethod
    def of(cls, stats: FeedbackStats) -> FeedbackStatsResponse:
        """The answer for ``stats``."""
        return cls.model_validate(dataclasses.asdict(stats))
