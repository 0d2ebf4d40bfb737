"""``POST /v1/admin/reload``: load and warm a model, then swap it in (admin key)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from clip_har.serving.auth import require_admin_key
from clip_har.serving.schemas import ServedModelInfo, error_responses
from clip_har.serving.state import Services, services

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="Bundle folder or models:/NAME@ALIAS | models:/NAME/VERSION; "
        "default: the current source again (an alias is resolved anew).",
    )


class ReloadResponse(BaseModel):
    model: ServedModelInfo
    previous: ServedModelInfo | None


@router.post(
    "/reload",
    response_model=ReloadResponse,
    summary="Load a model, warm it, then swap it in",
    responses=error_responses(401, 403, 422, 503),
)
async def reload(
    request: ReloadRequest | None = None, svc: Services = Depends(services)
) -> ReloadResponse:
    """The new model is loaded and warmed first; requests keep running on the old one until
    the swap, and those already running finish on it. A failed load keeps the old model
    (422 ``reload_failed`` with the reason)."""
    source = request.source if request is not None else None
    new, previous = await svc.models.reload(source)
    return ReloadResponse(
        model=ServedModelInfo.of(new),
        previous=ServedModelInfo.of(previous) if previous is not None else None,
    )
