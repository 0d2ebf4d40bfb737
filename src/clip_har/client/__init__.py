"""Python clients of ``clip-har serve``: :class:`HARClient` (blocking) and
:class:`AsyncHARClient` (async), with the same methods and typed pydantic results::

    from clip_har.client import HARClient

    with HARClient("http://127.0.0.1:8000") as client:  # key: $CLIP_HAR_API_KEY
        answer = client.predict("photo.jpg", top_k=3)
        print(answer.label, answer.confidence)
        client.feedback(answer.prediction_id, correct=False, label="running")

Importing it loads httpx, pydantic and Pillow only: no FastAPI, no torch.
"""

from __future__ import annotations

from clip_har.client.async_ import AsyncHARClient
from clip_har.client.errors import (
    ERROR_CODES,
    BadRequestError,
    DeadlineExceededError,
    ForbiddenError,
    HARAPIError,
    HARClientError,
    HARConnectionError,
    HARInputError,
    HARResponseError,
    HARTimeoutError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    ServiceUnavailableError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from clip_har.client.inputs import ImageInput
from clip_har.client.models import (
    BatchFailure,
    BatchPrediction,
    BatchResponse,
    FeedbackResponse,
    FeedbackStatsResponse,
    HealthStatus,
    LabelProbability,
    LabelsResponse,
    ModelResponse,
    PredictionResponse,
    PredictionStatsResponse,
)
from clip_har.client.sync import HARClient
from clip_har.client.transport import API_KEY_ENV, RetryPolicy

__all__ = [
    "API_KEY_ENV",
    "ERROR_CODES",
    "AsyncHARClient",
    "BadRequestError",
    "BatchFailure",
    "BatchPrediction",
    "BatchResponse",
    "DeadlineExceededError",
    "FeedbackResponse",
    "FeedbackStatsResponse",
    "ForbiddenError",
    "HARAPIError",
    "HARClient",
    "HARClientError",
    "HARConnectionError",
    "HARInputError",
    "HARResponseError",
    "HARTimeoutError",
    "HealthStatus",
    "ImageInput",
    "InvalidRequestError",
    "LabelProbability",
    "LabelsResponse",
    "ModelResponse",
    "NotFoundError",
    "PayloadTooLargeError",
    "PredictionResponse",
    "PredictionStatsResponse",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
]
