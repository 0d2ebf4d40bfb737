"""Prometheus metrics of the inference service, labelled by model name and version.

Every app owns its own :class:`ServingMetrics` (its own ``CollectorRegistry``), so several apps
in one process never collide. Latencies, queue time, batch size and confidence are
*histograms* (never summaries): histograms aggregate across replicas, summaries do not.

Label cardinality is bounded by construction: requests are labelled by the route *template*
(``/v2/models/{model_name}/infer``, never the raw path; unmatched paths are ``"other"``),
predictions by the model's own classes (open-vocabulary answers count as
``"open_vocabulary"``), rejections by a fixed set of reasons.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clip_har.monitoring import DRIFT_METRICS
from clip_har.serving.auth import require_metrics_key

if TYPE_CHECKING:
    from clip_har.inference.batcher import BatchRecord
    from clip_har.serving.store import DriftScoreRecord

logger = logging.getLogger(__name__)

NAMESPACE = "clip_har"
NO_MODEL = "none"
OTHER_ROUTE = "other"
OPEN_VOCABULARY = "open_vocabulary"
METRICS_PATH = "/metrics"

# seconds: 1 ms .. 30 s
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# images per engine call: 1, 2, 4, ..., 1024 (the largest max_batch_size)
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(11))
# top-1 probability
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

# why a request was turned away (error code -> reason); anything else is not a rejection
REJECTION_REASONS = ("queue_full", "timeout", "draining", "too_large", "unauthorized")
_CODE_REASON = {
    "queue_full": "queue_full",
    "timeout": "timeout",
    "draining": "draining",
    "payload_too_large": "too_large",
    "image_too_large": "too_large",
    "too_many_images": "too_large",
    "unauthorized": "unauthorized",
}
# the reason of an error status when no error code was recorded
_STATUS_REASON = {401: "unauthorized", 413: "too_large", 504: "timeout"}
# a 503 of a probe is an answer ("not ready"), not a rejected request
PROBE_ROUTES = frozenset(
    {"/v2/health/live", "/v2/health/ready", "/livez", "/readyz", "/v2/models/{model_name}/ready",
     "/v2/models/{model_name}/versions/{model_version}/ready"}
)  # fmt: skip
_MODELS_KEPT = 4  # class lists remembered (the current model and a few before it)

QueueDepthSource = Callable[[], tuple[Mapping[str, str], int]]
DriftSource = Callable[[], Sequence["DriftScoreRecord"]]


class ModelInfoLike(Protocol):
    """What the metrics read of a served model's ``ModelInfo`` (serving/models.py)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def alias(self) -> str | None: ...
    @property
    def source(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def classes(self) -> tuple[str, ...]: ...


def model_labels(labels: Mapping[str, str] | None) -> tuple[str, str]:
    """``(model, version)`` of a ``{"model", "version"}`` mapping; ``"none"`` when unknown."""
    if not labels:
        return NO_MODEL, NO_MODEL
    return str(labels.get("model") or NO_MODEL), str(labels.get("version") or NO_MODEL)


class _ScrapeTimeCollector:
    """Queue depth, model info and the latest drift scores, read when Prometheus scrapes."""

    def __init__(self, owner: ServingMetrics) -> None:
        self._owner = owner

    def describe(self) -> Iterable[Metric]:
        return [*self._families(), *self._drift_families()]

    def collect(self) -> Iterable[Metric]:
        return [*self._collect_model(), *self._collect_drift()]

    def _collect_model(self) -> list[Metric]:
        depth, info = self._families()
        source = self._owner._queue_depth_source
        if source is not None:
            try:
                labels, value = source()
            except Exception:  # a scrape never fails because of one source
                logger.warning("the queue depth source failed", exc_info=True)
            else:
                depth.add_metric(list(model_labels(labels)), float(value))
        current = self._owner._model_info  # one tuple, swapped atomically by set_model
        if current is not None:
            info.add_metric(list(current), 1.0)
        return [depth, info]

    def _collect_drift(self) -> list[Metric]:
        families = self._drift_families()
        score, threshold, detected, timestamp = families
        for record in self._owner._drift:  # one tuple, swapped atomically by refresh_drift
            score.add_metric([record.metric], record.value)
            threshold.add_metric([record.metric], record.threshold)
            detected.add_metric([record.metric], 1.0 if record.drifted else 0.0)
            timestamp.add_metric([record.metric], record.created_at.timestamp())
        return list(families)

    @staticmethod
    def _drift_families() -> tuple[GaugeMetricFamily, ...]:
        label = ["metric"]
        return (
            GaugeMetricFamily(
                f"{NAMESPACE}_drift_score",
                "Latest score of `clip-har monitor drift`, by metric: "
                + ", ".join(DRIFT_METRICS)
                + ".",
                labels=label,
            ),
            GaugeMetricFamily(
                f"{NAMESPACE}_drift_threshold",
                "The threshold the latest drift score was held to.",
                labels=label,
            ),
            GaugeMetricFamily(
                f"{NAMESPACE}_drift_detected",
                "1 when the latest drift run found this metric over its threshold, else 0.",
                labels=label,
            ),
            GaugeMetricFamily(
                f"{NAMESPACE}_drift_timestamp_seconds",
                "Unix time of the latest drift score (alert when it gets old).",
                labels=label,
            ),
        )

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            f"{NAMESPACE}_queue_depth",
            "Images waiting in the batcher queue now.",
            labels=["model", "version"],
        )
        info = GaugeMetricFamily(
            f"{NAMESPACE}_model_info",
            "The model being served (value 1).",
            labels=["model", "version", "format", "alias", "source"],
        )
        return depth, info


class ServingMetrics:
    """The service's metrics, in a registry of its own (``registry``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry(auto_describe=True)
            # the process's own health (RSS, open fds, CPU, GC), as the default registry has
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        self._lock = threading.Lock()
        self._queue_depth_source: QueueDepthSource | None = None
        self._model_info: tuple[str, str, str, str, str] | None = None
        self._drift: tuple[DriftScoreRecord, ...] = ()
        self._classes: OrderedDict[tuple[str, str], frozenset[str]] = OrderedDict()
        mv = ["model", "version"]

        self.request_duration = Histogram(
            f"{NAMESPACE}_request_duration_seconds",
            "HTTP request latency, end to end, by route template, method and status.",
            ["route", "method", "status", *mv],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            f"{NAMESPACE}_queue_wait_seconds",
            "Time an image waited in the batcher queue before its batch ran.",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            f"{NAMESPACE}_inference_seconds",
            "Engine time of one batch.",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            f"{NAMESPACE}_batch_size",
            "Images per engine call.",
            mv,
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            f"{NAMESPACE}_predictions",
            "Predictions by top-1 label (open-vocabulary answers as 'open_vocabulary').",
            [*mv, "label"],
            registry=registry,
        )
        self.confidence = Histogram(
            f"{NAMESPACE}_prediction_confidence",
            "Top-1 probability of each prediction.",
            mv,
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            f"{NAMESPACE}_requests_rejected",
            "Requests turned away, by reason: " + ", ".join(REJECTION_REASONS) + ".",
            ["reason", *mv],
            registry=registry,
        )
        self.deadline_expired = Counter(
            f"{NAMESPACE}_deadline_expired",
            "Queued images whose deadline passed before their batch ran (never computed).",
            mv,
            registry=registry,
        )
        registry.register(_ScrapeTimeCollector(self))

    # --- what the other parts call ----------------------------------------------------------
    def observe_batch(self, record: BatchRecord, labels: Mapping[str, str] | None) -> None:
        """One engine call of the batcher: its size, engine time, and each image's queue time."""
        mv = model_labels(labels)
        self.batch_size.labels(*mv).observe(record.size)
        self.inference.labels(*mv).observe(record.inference_seconds)
        queue_wait = self.queue_wait.labels(*mv)
        for seconds in record.queue_seconds:
            queue_wait.observe(seconds)

    def observe_expired(self, n: int, labels: Mapping[str, str] | None) -> None:
        """``n`` queued images expired before their batch ran."""
        if n > 0:
            self.deadline_expired.labels(*model_labels(labels)).inc(n)

    def observe_predictions(
        self,
        labels: Mapping[str, str] | None,
        top_labels: Sequence[str],
        confidences: Sequence[float],
        *,
        open_vocabulary: bool = False,
    ) -> None:
        """Answered predictions: their top-1 labels and probabilities.

        A label outside the model's classes (known from :meth:`set_model`) and every
        ``open_vocabulary`` answer counts as ``"open_vocabulary"``, so client-chosen labels
        never create series."""
        mv = model_labels(labels)
        with self._lock:
            classes = self._classes.get(mv)
        for label in top_labels:
            if open_vocabulary or (classes is not None and label not in classes):
                label = OPEN_VOCABULARY
            self.predictions.labels(*mv, label).inc()
        confidence = self.confidence.labels(*mv)
        for value in confidences:
            confidence.observe(min(max(float(value), 0.0), 1.0))

    def observe_rejection(self, reason: str, labels: Mapping[str, str] | None = None) -> None:
        """A request turned away; ``reason`` is one of :data:`REJECTION_REASONS`."""
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        self.rejected.labels(reason, *model_labels(labels)).inc()

    def set_model(self, info: ModelInfoLike) -> None:
        """The served model changed: the model-info gauge shows only this one from now on."""
        mv = (info.name, info.version)
        with self._lock:
            self._classes[mv] = frozenset(info.classes)
            self._classes.move_to_end(mv)
            while len(self._classes) > _MODELS_KEPT:
                self._classes.popitem(last=False)
            self._model_info = (*mv, info.format, info.alias or "", info.source)

    def refresh_drift(self, source: DriftSource) -> None:
        """Read the latest drift scores from ``source`` (the prediction store) for the
        gauges; metrics outside :data:`~clip_har.monitoring.DRIFT_METRICS` are left out (a
        bounded label set). When the read fails, the previous scores stay."""
        try:
            scores = tuple(score for score in source() if score.metric in DRIFT_METRICS)
        except Exception:  # a scrape never fails because of one source
            logger.warning("reading the drift scores failed", exc_info=True)
            return
        self._drift = scores

    def set_queue_depth_source(self, fn: QueueDepthSource | None) -> None:
        """Read the queue depth at scrape time: ``fn() -> ({"model", "version"}, depth)``."""
        self._queue_depth_source = fn

    def observe_request(
        self, route: str, method: str, status: int, seconds: float, labels: Mapping[str, str] | None
    ) -> None:
        """One HTTP request, end to end (the middleware calls this)."""
        self.request_duration.labels(route, method, str(status), *model_labels(labels)).observe(
            seconds
        )

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when ``accept`` asks) and its type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


# --- the request-latency middleware -------------------------------------------------------------
def route_template(scope: Scope) -> str:
    """The route template of a request (``/v2/models/{model_name}/infer``); ``"other"`` if none.

    Starlette records the matched route in ``scope["route"]``; a request answered before
    routing (e.g. a 413 from the size cap) is matched against the app's routes here."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    app = scope.get("app")
    routes = getattr(getattr(app, "router", None), "routes", ())
    partial = None
    for candidate in _flat_routes(routes):
        path = getattr(candidate, "path", None)
        if not isinstance(path, str) or not path:
            continue  # nothing to name it by (a mount without a path, an unknown kind)
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return path
        if match == Match.PARTIAL and partial is None:
            partial = path  # path matched, method not allowed
    return partial or OTHER_ROUTE


def _flat_routes(routes: Sequence[Any]) -> Iterable[Any]:
    """The app's routes, each with its full path. FastAPI 0.16x keeps an included router as
    one entry without a ``path`` (``_IncludedRouter``); its ``iter_route_contexts`` lists the
    routes inside with their prefixes applied. Older versions list the routes themselves."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before included routers were kept as such
        return routes
    return iter_route_contexts(routes)


def _current_model_labels(scope: Scope) -> dict[str, str] | None:
    services = getattr(getattr(scope.get("app"), "state", None), "services", None)
    info = getattr(getattr(services, "models", None), "info", None)
    if info is None:
        return None
    return {"model": str(info.name), "version": str(info.version)}


def _metrics_of(scope: Scope) -> ServingMetrics | None:
    services = getattr(getattr(scope.get("app"), "state", None), "services", None)
    found = getattr(services, "metrics", None)
    return found if isinstance(found, ServingMetrics) else None


class MetricsMiddleware:
    """Pure ASGI middleware: every HTTP request's latency, end to end (until its body is sent),
    by route template, method and the status actually sent, with the model serving then.

    An error answer whose code (``scope["state"]["error_code"]``, else its status) names a
    rejection is also counted in ``clip_har_requests_rejected_total`` (probes excepted).
    ``/metrics`` itself is measured too (scrape latency; one bounded series)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics or _metrics_of(scope)
        if metrics is None:  # no services yet (before startup)
            await self.app(scope, receive, send)
            return
        labels = _current_model_labels(scope)
        status = 500  # what the server answers when the app raises before starting a response
        started = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            elapsed = time.perf_counter() - started
            try:
                route = route_template(scope)
                metrics.observe_request(route, scope.get("method", "GET"), status, elapsed, labels)
                reason = None if route in PROBE_ROUTES else _rejection_reason(scope, status)
                if reason is not None:
                    metrics.observe_rejection(reason, labels)
            except Exception:  # metrics never break a request
                logger.warning("recording request metrics failed", exc_info=True)


def _rejection_reason(scope: Scope, status: int) -> str | None:
    if status < 400:
        return None
    code = scope.get("state", {}).get("error_code")
    if isinstance(code, str) and code in _CODE_REASON:
        return _CODE_REASON[code]
    return _STATUS_REASON.get(status)


# --- GET /metrics ------------------------------------------------------------------------------
router = APIRouter()


@router.get(
    METRICS_PATH,
    tags=["metrics"],
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(require_metrics_key)],
    responses={
        200: {
            "description": "Prometheus text exposition (OpenMetrics when the Accept header asks).",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
def get_metrics(request: Request) -> Response:
    """The service's metrics in the Prometheus text format."""
    services = request.app.state.services
    metrics: ServingMetrics = services.metrics
    store = getattr(services, "store", None)
    if store is not None:  # the latest drift scores, read at scrape time
        metrics.refresh_drift(store.latest_drift_scores_now)
    body, content_type = metrics.render(request.headers.get("accept"))
    return Response(content=body, media_type=content_type)
