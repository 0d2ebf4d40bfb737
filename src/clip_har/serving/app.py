"""The inference service's FastAPI app: ``create_app(settings)``.

Middleware, outermost first: request id, metrics, request-size cap, then CORS when origins
are configured. The lifespan opens the prediction store, starts loading the model in the
background (liveness answers meanwhile; readiness once it is loaded and warm) and, on
shutdown, drains queued work within ``drain_grace_s`` before closing the model and the
store. See docs/serving.md ("Running the server").
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from clip_har.errors import StoreError
from clip_har.serving import (
    auth,
    metrics,
    routes_admin,
    routes_feedback,
    routes_health,
    routes_stats,
    routes_v1,
    routes_v2,
)
from clip_har.serving.errors import RequestIdMiddleware, error_response, install_error_handlers
from clip_har.serving.limits import BodySizeLimitMiddleware
from clip_har.serving.metrics import MetricsMiddleware, ServingMetrics
from clip_har.serving.models import ModelManager
from clip_har.serving.settings import ServeSettings
from clip_har.serving.state import Services
from clip_har.serving.store import PredictionStore
from clip_har.version import __version__

logger = logging.getLogger(__name__)

TITLE = "clip-har inference service"
TAGS = [
    {"name": "health", "description": "Liveness and readiness (Kubernetes probes)."},
    {"name": "v1", "description": "The friendly REST API: predict, batch, classify, model."},
    {"name": "feedback", "description": "Feedback on logged predictions."},
    {"name": "stats", "description": "The prediction log over time (monitoring)."},
    {"name": "admin", "description": "Hot reload (admin key)."},
    {
        "name": "v2 (Open Inference Protocol)",
        "description": "KServe v2 REST, as Triton and KServe clients speak it.",
    },
    {"name": "metrics", "description": "Prometheus metrics."},
]


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The service for ``settings`` (default: from the environment). Nothing is loaded or
    opened until the app's lifespan starts."""
    settings = settings or ServeSettings()
    serving_metrics = ServingMetrics()
    models = ModelManager(settings, serving_metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await anyio.to_thread.run_sync(PredictionStore.from_settings, settings)
        app.state.services = Services(
            settings=settings, models=models, store=store, metrics=serving_metrics
        )
        await models.start()
        try:
            yield
        finally:
            await models.drain(settings.drain_grace_s)
            await models.close()
            await anyio.to_thread.run_sync(store.close)
            logger.info("stopped")

    app = FastAPI(
        title=TITLE,
        version=__version__,
        description="Human action recognition with CLIP: predictions, open vocabulary, "
        "the Open Inference Protocol, feedback and metrics.",
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.models = models  # before the lifespan too (clip-har serve watches the load)
    app.state.api_keys = auth.load_keys(settings)
    install_error_handlers(app)

    @app.exception_handler(StoreError)
    async def _store_unavailable(request: Request, exc: StoreError) -> JSONResponse:
        """A database that refused a write: 503, details in the log only (no 2xx was sent,
        so nothing acknowledged is lost)."""
        logger.error("prediction store: %s", exc)
        return error_response(
            request,
            503,
            "store_unavailable",
            "the prediction store is unavailable; retry later",
            {"Retry-After": "1"},
        )

    # add_middleware wraps: the last added runs first (outermost)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=serving_metrics)  # counts the 413s too
    app.add_middleware(RequestIdMiddleware)
    app.include_router(routes_health.router)
    app.include_router(routes_v1.router)
    app.include_router(routes_feedback.router)
    app.include_router(routes_stats.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_v2.router)
    app.include_router(metrics.router)
    return app
