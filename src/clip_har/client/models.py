"""Typed results of the client: the server's own pydantic models
(:mod:`clip_har.serving.schemas`, which imports only pydantic), plus :class:`HealthStatus`."""

from __future__ import annotations

from pydantic import BaseModel, Field

from clip_har.serving.schemas import (
    BatchFailure,
    BatchItemFailure,
    BatchPrediction,
    BatchResponse,
    FeedbackResponse,
    FeedbackStatsResponse,
    GroupCounts,
    LabelProbability,
    LabelsResponse,
    ModelCounts,
    ModelRef,
    ModelResponse,
    PredictionResponse,
    PredictionStatsResponse,
)

__all__ = [
    "BatchFailure",
    "BatchItemFailure",
    "BatchPrediction",
    "BatchResponse",
    "FeedbackResponse",
    "FeedbackStatsResponse",
    "GroupCounts",
    "HealthStatus",
    "LabelProbability",
    "LabelsResponse",
    "ModelCounts",
    "ModelRef",
    "ModelResponse",
    "PredictionResponse",
    "PredictionStatsResponse",
]


class HealthStatus(BaseModel):
    """Readiness of a server that answered (so it is live: one that cannot be reached
    raises :class:`~clip_har.client.HARConnectionError` instead). Not ready (``loading``,
    ``failed: <why>``, ``draining``) is an answer, not an error."""

    ready: bool
    status: str = Field(description="ready, loading, failed: <why>, draining")
    model: str | None = None
    version: str | None = None
