"""What every route reaches through ``request.app.state.services``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from clip_har.serving.metrics import ServingMetrics
    from clip_har.serving.models import ModelManager
    from clip_har.serving.settings import ServeSettings
    from clip_har.serving.store import PredictionStore


@dataclass
class Services:
    """The app's long-lived parts, built by ``create_app`` and closed on shutdown."""

    settings: ServeSettings
    models: ModelManager
    store: PredictionStore
    metrics: ServingMetrics


def services(request: Request) -> Services:
    """The services of the app serving ``request`` (a FastAPI dependency)."""
    found: Services = request.app.state.services
    return found
