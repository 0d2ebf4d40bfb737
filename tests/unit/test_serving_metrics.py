"""The service's Prometheus metrics: histograms labelled by model name and version, bounded
label cardinality, scrape-time queue depth, a model-info gauge that follows reloads, and the
request middleware and ``/metrics`` route as a Prometheus server sees them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import make_photo, wait_ready
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from pydantic import BaseModel

from clip_har.inference.batcher import BatchRecord
from clip_har.serving.errors import RequestIdMiddleware, install_error_handlers
from clip_har.serving.metrics import (
    OPEN_VOCABULARY,
    PROBE_ROUTES,
    MetricsMiddleware,
    ServingMetrics,
    router,
)
from clip_har.serving.settings import ServeSettings

MODEL = {"model": "har", "version": "3"}


@dataclass(frozen=True)
class Info:
    """The fields of serving.models.ModelInfo the metrics read."""

    name: str
    version: str
    alias: str | None
    source: str
    format: str
    classes: tuple[str, ...]


def scrape(metrics: ServingMetrics) -> list[Sample]:
    """Render the registry and parse it back with the Prometheus text parser."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return [
        sample
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    ]


def find(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [
        s
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = find(samples, name, **labels)
    assert len(found) == 1, (name, labels, found)
    return found[0].value


def test_batches_become_size_queue_and_inference_histograms_labelled_by_model() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    metrics.observe_batch(BatchRecord(3, (0.002, 0.004, 0.3), 0.02, 0), MODEL)
    metrics.observe_batch(BatchRecord(1, (0.001,), 0.01, 0), MODEL)
    samples = scrape(metrics)

    assert value(samples, "clip_har_batch_size_count", **MODEL) == 2
    assert value(samples, "clip_har_batch_size_sum", **MODEL) == 4
    assert value(samples, "clip_har_batch_size_bucket", le="1.0", **MODEL) == 1
    assert value(samples, "clip_har_batch_size_bucket", le="4.0", **MODEL) == 2
    assert value(samples, "clip_har_batch_size_bucket", le="1024.0", **MODEL) == 2
    # every queued image is one observation of the queue wait
    assert value(samples, "clip_har_queue_wait_seconds_count", **MODEL) == 4
    assert value(samples, "clip_har_queue_wait_seconds_bucket", le="0.005", **MODEL) == 3
    assert value(samples, "clip_har_queue_wait_seconds_bucket", le="+Inf", **MODEL) == 4
    assert value(samples, "clip_har_inference_seconds_count", **MODEL) == 2
    assert value(samples, "clip_har_inference_seconds_bucket", le="0.025", **MODEL) == 2
    # histograms, never summaries: no quantile series
    assert not [s for s in samples if "quantile" in s.labels]


def test_predictions_count_by_class_and_client_labels_never_make_series() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    metrics.set_model(Info("har", "3", "prod", "models:/har@prod", "onnx", ("run", "sit")))
    metrics.observe_predictions(MODEL, ["run", "run", "sit"], [0.9, 0.55, 1.0000001])
    # open-vocabulary answers and labels outside the classes share one bounded series
    metrics.observe_predictions(MODEL, ["a cat"], [0.4], open_vocabulary=True)
    metrics.observe_predictions(MODEL, ["x" * 50], [0.2])
    samples = scrape(metrics)

    assert value(samples, "clip_har_predictions_total", label="run", **MODEL) == 2
    assert value(samples, "clip_har_predictions_total", label="sit", **MODEL) == 1
    assert value(samples, "clip_har_predictions_total", label=OPEN_VOCABULARY, **MODEL) == 2
    assert len(find(samples, "clip_har_predictions_total")) == 3
    assert value(samples, "clip_har_prediction_confidence_count", **MODEL) == 5
    assert value(samples, "clip_har_prediction_confidence_bucket", le="0.5", **MODEL) == 2
    assert value(samples, "clip_har_prediction_confidence_bucket", le="0.9", **MODEL) == 4
    assert value(samples, "clip_har_prediction_confidence_bucket", le="1.0", **MODEL) == 5


def test_reload_replaces_the_model_info_series() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    metrics.set_model(Info("har", "3", "prod", "models:/har@prod", "onnx-int8", ("run",)))
    metrics.set_model(Info("har", "4", None, "/bundles/har", "onnx", ("run",)))
    info = find(scrape(metrics), "clip_har_model_info")

    assert [(s.labels, s.value) for s in info] == [
        (
            {
                "model": "har",
                "version": "4",
                "format": "onnx",
                "alias": "",
                "source": "/bundles/har",
            },
            1.0,
        )
    ]


def test_queue_depth_is_read_at_scrape_time() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    assert find(scrape(metrics), "clip_har_queue_depth") == []  # no source: no sample
    depth = [7]
    metrics.set_queue_depth_source(lambda: (MODEL, depth[0]))
    assert value(scrape(metrics), "clip_har_queue_depth", **MODEL) == 7
    depth[0] = 0
    assert value(scrape(metrics), "clip_har_queue_depth", **MODEL) == 0


def test_a_failing_queue_depth_source_does_not_break_the_scrape() -> None:
    metrics = ServingMetrics(CollectorRegistry())

    def broken() -> tuple[dict[str, str], int]:
        raise RuntimeError("batcher gone")

    metrics.set_queue_depth_source(broken)
    metrics.observe_expired(2, MODEL)
    samples = scrape(metrics)
    assert find(samples, "clip_har_queue_depth") == []
    assert value(samples, "clip_har_deadline_expired_total", **MODEL) == 2


def test_rejections_count_by_reason_from_a_fixed_set() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    metrics.observe_rejection("queue_full", MODEL)
    metrics.observe_rejection("unauthorized")
    samples = scrape(metrics)
    assert value(samples, "clip_har_requests_rejected_total", reason="queue_full", **MODEL) == 1
    assert value(samples, "clip_har_requests_rejected_total", reason="unauthorized") == 1
    with pytest.raises(ValueError, match="unknown rejection reason"):
        metrics.observe_rejection("because")


def test_each_app_has_its_own_registry_with_process_metrics() -> None:
    first, second = ServingMetrics(), ServingMetrics()  # no "Duplicated timeseries" error
    first.observe_batch(BatchRecord(2, (0.0, 0.0), 0.01, 0), MODEL)
    assert value(scrape(first), "clip_har_batch_size_count", **MODEL) == 1
    assert find(scrape(second), "clip_har_batch_size_count") == []
    assert find(scrape(first), "python_info")  # process and platform collectors are there


# --- the middleware on a real ASGI app -------------------------------------------------------
@pytest.fixture
def measured_app() -> Iterator[tuple[TestClient, ServingMetrics]]:
    metrics = ServingMetrics(CollectorRegistry())
    app = FastAPI()
    app.state.services = SimpleNamespace(
        metrics=metrics, models=SimpleNamespace(info=Info("har", "3", None, "/b", "onnx", ()))
    )
    install_error_handlers(app)

    @app.get("/v2/models/{name}/ready")
    def ready(name: str) -> dict[str, str]:
        raise HTTPException(503, "not ready")

    @app.post("/v2/models/{name}/infer")
    def infer(name: str) -> dict[str, str]:
        return {"model_name": name}

    @app.get("/v1/labels")
    def labels() -> dict[str, str]:
        raise HTTPException(401, "missing key")

    @app.post("/v1/predict")
    def predict(request: Request) -> JSONResponse:
        request.state.error_code = "queue_full"  # the code an error answer records for metrics
        return JSONResponse({"error": {"code": "queue_full"}}, status_code=503)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("unexpected")

    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, metrics


def test_requests_are_labelled_by_route_template_and_status_sent(
    measured_app: tuple[TestClient, ServingMetrics],
) -> None:
    client, metrics = measured_app
    for name in ("a", "b", "c"):
        assert client.post(f"/v2/models/{name}/infer").status_code == 200
    assert client.get("/v2/models/a/infer").status_code == 405
    assert client.get("/v1/labels").status_code == 401
    assert client.get("/no/such/path/123").status_code == 404
    assert client.get("/boom").status_code == 500
    assert client.get("/v2/models/a/ready").status_code == 503
    assert client.post("/v1/predict").status_code == 503
    samples = scrape(metrics)

    count = "clip_har_request_duration_seconds_count"
    infer = {"route": "/v2/models/{name}/infer", **MODEL}
    assert value(samples, count, method="POST", status="200", **infer) == 3
    assert value(samples, count, method="GET", status="405", **infer) == 1
    assert value(samples, count, route="/v1/labels", status="401", **MODEL) == 1
    assert value(samples, count, route="other", status="404", **MODEL) == 1
    assert value(samples, count, route="/boom", status="500", **MODEL) == 1
    # raw paths never become label values
    routes = {s.labels["route"] for s in find(samples, count)}
    assert routes == {
        "/v2/models/{name}/infer",
        "/v1/labels",
        "other",
        "/boom",
        "/v2/models/{name}/ready",
        "/v1/predict",
    }
    buckets = find(samples, "clip_har_request_duration_seconds_bucket", method="POST", **infer)
    assert {s.labels["le"] for s in buckets} >= {"0.001", "30.0", "+Inf"}
    # a 401 is a rejection; a probe's 503 is an answer, not a rejection
    rejected = find(samples, "clip_har_requests_rejected_total")
    reasons = {s.labels["reason"]: s.value for s in rejected}
    assert reasons == {"unauthorized": 1.0, "queue_full": 1.0}


@pytest.mark.parametrize("protect", [False, True])
def test_metrics_route_serves_text_or_openmetrics_behind_the_optional_key(protect: bool) -> None:
    metrics = ServingMetrics(CollectorRegistry())
    metrics.observe_batch(BatchRecord(1, (0.0,), 0.01, 0), MODEL)
    app = FastAPI()
    settings = ServeSettings(protect_metrics=protect, api_keys=["sesame"])
    app.state.services = SimpleNamespace(settings=settings, metrics=metrics)
    install_error_handlers(app)
    app.include_router(router)
    with TestClient(app) as client:
        anonymous = client.get("/metrics")
        keyed = client.get("/metrics", headers={"Authorization": "Bearer sesame"})
        openmetrics = client.get(
            "/metrics",
            headers={"X-API-Key": "sesame", "Accept": "application/openmetrics-text"},
        )
    assert anonymous.status_code == (401 if protect else 200)
    assert keyed.status_code == 200
    assert keyed.headers["content-type"].startswith("text/plain")
    parsed = {f.name for f in text_string_to_metric_families(keyed.text)}
    assert {"clip_har_batch_size", "clip_har_request_duration_seconds"} <= parsed
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


# --- the whole app: /metrics after real predictions ------------------------------------------
def test_metrics_of_a_serving_app_after_predictions(tiny_onnx_bundle: Path, tmp_path: Path) -> None:
    from clip_har.serving.app import create_app

    settings = ServeSettings(
        bundle=str(tiny_onnx_bundle), database_url=f"sqlite:///{tmp_path / 'log.db'}"
    )
    photo = make_photo(tmp_path / "photo.jpg").read_bytes()
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        for _ in range(3):
            answer = client.post("/v1/predict", files={"file": ("p.jpg", photo, "image/jpeg")})
            assert answer.status_code == 200, answer.text
        model = answer.json()["model"]
        scraped = client.get("/metrics")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
    samples = [
        sample
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
    ]
    served = {"model": model["name"], "version": model["version"]}
    assert (
        value(
            samples,
            "clip_har_request_duration_seconds_count",
            route="/v1/predict",
            method="POST",
            status="200",
            **served,
        )
        == 3
    )
    for histogram in (
        "clip_har_batch_size",
        "clip_har_queue_wait_seconds",
        "clip_har_inference_seconds",
        "clip_har_prediction_confidence",
    ):
        assert value(samples, f"{histogram}_count", **served) >= 1, histogram
        assert find(samples, f"{histogram}_bucket", le="+Inf", **served), histogram
    assert sum(s.value for s in find(samples, "clip_har_predictions_total", **served)) == 3
    assert find(samples, "clip_har_queue_depth", **served)
    info = find(samples, "clip_har_model_info", **served)
    assert [s.value for s in info] == [1.0]
    assert info[0].labels["format"] == model["format"]


# --- requests that end before the route answers -----------------------------------------------
def _hang_up(app: FastAPI, path: str, content_type: bytes, body: bytes) -> list[dict[str, Any]]:
    """Send ``app`` the first bytes of a 100 kB upload, then disconnect (as a client that
    closes its socket); the ASGI messages the app sent back."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", content_type), (b"content-length", b"100000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    incoming = [{"type": "http.request", "body": body, "more_body": True}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


class Item(BaseModel):
    image_base64: str


def test_a_client_that_hangs_up_mid_upload_is_a_499_in_one_log_line_not_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = ServingMetrics(CollectorRegistry())
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict[str, str]:
        async with request.form() as form:  # what routes_v1 does with a multipart upload
            return {"fields": str(len(form))}

    @app.post("/v1/json")
    def json_body(item: Item) -> dict[str, str]:  # FastAPI reads (and wraps the failure)
        return {"length": str(len(item.image_base64))}

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)
    multipart = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff" + b"\x00" * 100
    )
    with caplog.at_level(logging.DEBUG):
        form_sent = _hang_up(app, "/v1/predict", b"multipart/form-data; boundary=B", multipart)
        json_sent = _hang_up(app, "/v1/json", b"application/json", b'{"image_base64": "AAA')

    for sent in (form_sent, json_sent):
        assert sent[0]["type"] == "http.response.start"
        assert sent[0]["status"] == 499
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert problems == []
    gone = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(gone) == 2 and "/v1/predict" in gone[0] and "/v1/json" in gone[1]
    samples = scrape(metrics)
    count = "clip_har_request_duration_seconds_count"
    assert value(samples, count, route="/v1/predict", status="499") == 1
    assert value(samples, count, route="/v1/json", status="499") == 1
    assert {s.labels["status"] for s in find(samples, count)} == {"499"}
    assert find(samples, "clip_har_requests_rejected_total") == []


def test_a_413_of_the_upload_cap_is_counted_under_its_route_template(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cap answers before routing; the request is still measured, matched against the
    app's routes (FastAPI keeps each included router as one entry without a path)."""
    from clip_har.serving.app import create_app

    settings = ServeSettings(database_url=f"sqlite:///{tmp_path / 'log.db'}", max_upload_bytes=1000)
    with caplog.at_level(logging.INFO), TestClient(create_app(settings)) as client:
        declared = client.post(
            "/v1/predict", content=b"x" * 5000, headers={"Content-Type": "image/jpeg"}
        )
        infer = client.post("/v2/models/har/infer", content=b"{" + b" " * 5000 + b"}")
        nowhere = client.post("/no/such/route", content=b"x" * 5000)
        scraped = client.get("/metrics")
    assert [r.status_code for r in (declared, infer, nowhere)] == [413, 413, 413]
    assert declared.json()["error"]["code"] == "payload_too_large"
    samples = [
        sample
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
    ]
    count = "clip_har_request_duration_seconds_count"
    assert value(samples, count, route="/v1/predict", method="POST", status="413") == 1
    infer_route = "/v2/models/{model_name}/infer"
    assert value(samples, count, route=infer_route, method="POST", status="413") == 1
    assert value(samples, count, route="other", method="POST", status="413") == 1
    assert value(samples, "clip_har_requests_rejected_total", reason="too_large") == 3
    failures = [r for r in caplog.records if "metrics failed" in r.getMessage()]
    assert failures == []


def test_probe_routes_name_the_apps_real_probe_templates() -> None:
    """A probe's 503 is not a rejection only if the template matches the app's route."""
    from clip_har.serving.app import create_app

    paths = set(create_app(ServeSettings()).openapi()["paths"])
    assert PROBE_ROUTES - paths == set()
