"""Liveness and readiness, as Kubernetes probes and the Open Inference Protocol ask.

Liveness: the process answers (always 200). Readiness: 200 only when a model is loaded, warm
and not draining; else 503 with the reason (``loading``, ``failed: <why>``, ``draining``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from clip_har.serving.auth import require_health_key
from clip_har.serving.state import Services, services

router = APIRouter(tags=["health"], dependencies=[Depends(require_health_key)])


class Liveness(BaseModel):
    live: bool = True


class Readiness(BaseModel):
    ready: bool
    status: str = Field(description="ready, loading, failed: <why>, or draining")
    model: str | None = None
    version: str | None = None


_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": Readiness, "description": "Not ready: loading, failed or draining"}
}


@router.get("/v2/health/live", response_model=Liveness, summary="Liveness")
@router.get("/livez", response_model=Liveness, summary="Liveness (alias)")
async def live() -> Liveness:
    """200 whenever the process answers."""
    return Liveness()


@router.get("/v2/health/ready", response_model=Readiness, responses=_NOT_READY, summary="Readiness")
@router.get("/readyz", response_model=Readiness, responses=_NOT_READY, summary="Readiness (alias)")
async def ready(svc: Services = Depends(services)) -> JSONResponse:
    """200 when the model is loaded, warmed up and not draining; 503 with the reason."""
    models = svc.models
    info = models.info
    body = Readiness(
        ready=models.ready,
        status=models.status,
        model=info.name if info is not None else None,
        version=info.version if info is not None else None,
    )
    headers = {} if body.ready else {"Retry-After": "5"}
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503, headers=headers)


class Index(BaseModel):
    service: str
    version: str
    docs: str = "/docs"
    openapi: str = "/openapi.json"
    health: str = "/v2/health/ready"
    metrics: str = "/metrics"


@router.get("/", response_model=Index, summary="Where to start", include_in_schema=True)
async def index() -> Index:
    """Links to the API documentation, readiness and metrics."""
    from clip_har.version import __version__

    return Index(service="clip-har", version=__version__)
