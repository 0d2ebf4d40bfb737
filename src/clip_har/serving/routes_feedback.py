"""POST /v1/feedback and GET /v1/feedback/stats: users say whether a prediction was right.

Feedback is committed to the prediction store before the 201 answer, so an acknowledged
piece of feedback survives a crash of the server. ``clip-har feedback export`` turns the
corrections into training data.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clip_har.errors import ApiError, InvalidFeedbackError, UnknownPredictionError
from clip_har.serving.auth import require_api_key
from clip_har.serving.schemas import FeedbackResponse, FeedbackStatsResponse, error_responses
from clip_har.serving.state import Services, services
from clip_har.serving.store import COMMENT_LENGTH

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1/feedback", tags=["feedback"], dependencies=[Depends(require_api_key)]
)

PREDICTION_ID_PATTERN = r"^[0-9a-fA-F]{32}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class FeedbackRequest(BaseModel):
    """Whether a logged prediction was right, and the right label when it was not."""

    model_config = ConfigDict(extra="forbid")

    prediction_id: str = Field(
        pattern=PREDICTION_ID_PATTERN,
        description="The prediction_id a prediction answer returned (32 hex digits).",
    )
    correct: bool = Field(strict=True, description="Whether the predicted label was right.")
    label: str | None = Field(
        None,
        min_length=1,
        description="The right label: required when correct is false; when correct is true "
        "it may only repeat the predicted label. At most the server's max_label_length.",
    )
    comment: str | None = Field(
        None, max_length=COMMENT_LENGTH, description="Free text (at most 1000 characters)."
    )

    @field_validator("label")
    @classmethod
    def _clean_label(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("label is blank")
        if _CONTROL.search(value):
            raise ValueError("label contains control characters")
        return value

    @model_validator(mode="after")
    def _label_when_wrong(self) -> FeedbackRequest:
        if not self.correct and self.label is None:
            raise ValueError("correct=false needs the right label in 'label'")
        return self


@router.post(
    "",
    status_code=201,
    response_model=FeedbackResponse,
    responses=error_responses(401, 404, 422, 503),
    summary="Say whether a prediction was right",
)
async def post_feedback(
    body: FeedbackRequest, svc: Annotated[Services, Depends(services)]
) -> FeedbackResponse:
    """Store feedback on a logged prediction; answered 201 once it is committed."""
    limit = svc.settings.max_label_length
    if body.label is not None and len(body.label) > limit:
        raise ApiError(
            422, "invalid_request", f"label: at most {limit} characters (got {len(body.label)})"
        )
    try:
        record = await svc.store.add_feedback(
            body.prediction_id.lower(), correct=body.correct, label=body.label, comment=body.comment
        )
    except UnknownPredictionError as exc:
        raise ApiError(404, "unknown_prediction", str(exc)) from None
    except InvalidFeedbackError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    return FeedbackResponse(
        feedback_id=record.id,
        prediction_id=record.prediction_id,
        correct=record.correct,
        label=record.label,
        created_at=record.created_at,
    )


@router.get(
    "/stats",
    response_model=FeedbackStatsResponse,
    responses=error_responses(401, 503),
    summary="Feedback counts and accuracy",
)
async def feedback_stats(svc: Annotated[Services, Depends(services)]) -> FeedbackStatsResponse:
    """Counts and accuracy from the feedback: overall, by predicted label, by model version."""
    stats = await svc.store.stats()
    return FeedbackStatsResponse.of(stats)
