"""GET /v1/stats/predictions: the prediction log over time, for the UI's Monitoring page.

Counts per predicted label, latency percentiles, mean confidence and feedback accuracy,
overall and per time bucket, for a bounded window (at most :data:`MAX_HOURS` hours and
:data:`MAX_BUCKETS` buckets) so one request never reads more than that window's rows; plus
the latest score of each drift metric that ``clip-har monitor drift`` recorded.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from clip_har.errors import ApiError
from clip_har.serving.auth import require_api_key
from clip_har.serving.schemas import PredictionStatsResponse, error_responses
from clip_har.serving.state import Services, services

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/stats", tags=["stats"], dependencies=[Depends(require_api_key)])

MAX_HOURS = 30 * 24
"""The longest window (30 days)."""
MAX_BUCKETS = 1000
"""The most buckets a window may span (hours * 60 / bucket_minutes)."""
MODEL_VERSION_LENGTH = 200  # the width of the model_version column


@router.get(
    "/predictions",
    response_model=PredictionStatsResponse,
    responses=error_responses(401, 422, 503),
    summary="Predictions over time: counts per label, latency, confidence, feedback accuracy",
)
async def prediction_stats(
    svc: Annotated[Services, Depends(services)],
    hours: Annotated[
        float,
        Query(
            gt=0,
            le=MAX_HOURS,
            allow_inf_nan=False,
            description=f"The window: the last `hours` hours (at most {MAX_HOURS}).",
        ),
    ] = 24,
    bucket_minutes: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_HOURS * 60,
            description="Bucket width in minutes; buckets start on whole UTC multiples of it.",
        ),
    ] = 60,
    model_version: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MODEL_VERSION_LENGTH,
            description="Only predictions of this model version.",
        ),
    ] = None,
) -> PredictionStatsResponse:
    """Predictions of the last ``hours`` hours, overall and per ``bucket_minutes`` bucket:
    every bucket overlapping the window is listed (empty ones with count 0), so a chart
    has a continuous time axis. ``drift``: the latest score of each drift metric."""
    spanned = math.ceil(hours * 60 / bucket_minutes)
    if spanned > MAX_BUCKETS:
        raise ApiError(
            422,
            "invalid_request",
            f"hours={hours:g} in buckets of {bucket_minutes} minutes spans {spanned} buckets; "
            f"at most {MAX_BUCKETS}: widen bucket_minutes or shorten hours",
        )
    until = datetime.now(timezone.utc)
    since = until - timedelta(hours=hours)
    stats = await svc.store.prediction_stats(since, until, bucket_minutes * 60, model_version)
    drift = await svc.store.latest_drift_scores()  # whenever computed, whatever the window
    return PredictionStatsResponse.of(stats, drift)
