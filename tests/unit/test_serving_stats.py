"""GET /v1/stats/predictions and PredictionStore.prediction_stats (the Monitoring page's data).

Protects: totals, per-label counts, latency percentiles, confidence and feedback accuracy
of the window, overall and per whole-UTC bucket; every bucket listed (empty ones with
count 0) so charts have a continuous axis; predictions outside the window or of another
model version left out; bad windows answer 422 JSON; the route needs the API key when keys
are configured; real predictions of the served app show up in it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from clip_har.serving import auth, routes_stats
from clip_har.serving.errors import RequestIdMiddleware, install_error_handlers
from clip_har.serving.settings import ServeSettings
from clip_har.serving.state import Services
from clip_har.serving.store import PredictionRecord, PredictionStore, percentile

API_KEY = "stats-test-key"
UNTIL = datetime(2025, 1, 1, 12, 30, tzinfo=timezone.utc)


def logged(
    at: datetime, label: str, latency_ms: float = 10.0, confidence: float = 0.5, version: str = "1"
) -> PredictionRecord:
    return PredictionRecord(
        id=PredictionRecord.new_id(),
        created_at=at,
        model_name="tiny-har",
        model_version=version,
        route="v1/predict",
        label=label,
        confidence=confidence,
        top_k=[(label, confidence)],
        latency_ms=latency_ms,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PredictionStore]:
    opened = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}")
    yield opened
    opened.close()


def hours_ago(hours: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(hours=hours)


# --------------------------------------------------------------------------- the store


def test_window_is_bucketed_on_whole_utc_hours_with_empty_buckets(store: PredictionStore) -> None:
    records = [
        logged(datetime(2025, 1, 1, 9, 0, tzinfo=timezone.utc), "eating"),  # before the window
        logged(datetime(2025, 1, 1, 10, 15, tzinfo=timezone.utc), "running", 10, 0.9),
        logged(datetime(2025, 1, 1, 10, 45, tzinfo=timezone.utc), "eating", 30, 0.5),
        logged(datetime(2025, 1, 1, 12, 10, tzinfo=timezone.utc), "running", 20, 0.7),
        logged(datetime(2025, 1, 1, 12, 40, tzinfo=timezone.utc), "running"),  # after it
    ]
    asyncio.run(store.log_predictions(records))
    asyncio.run(store.add_feedback(records[1].id, correct=True))
    asyncio.run(store.add_feedback(records[2].id, correct=True))
    asyncio.run(store.add_feedback(records[2].id, correct=False, label="running"))  # latest

    stats = asyncio.run(store.prediction_stats(UNTIL - timedelta(hours=3), UNTIL, 3600))

    assert (stats.total, stats.by_label) == (3, {"eating": 1, "running": 2})
    assert [b.start.hour for b in stats.buckets] == [9, 10, 11, 12]
    assert all(b.start.tzinfo is not None and b.start.minute == 0 for b in stats.buckets)
    assert [b.count for b in stats.buckets] == [0, 2, 0, 1]
    assert stats.buckets[1].by_label == {"eating": 1, "running": 1}
    assert stats.buckets[2].by_label == {} and stats.buckets[2].mean_confidence is None
    assert stats.buckets[2].latency_ms.p50 is None and stats.buckets[2].accuracy is None
    assert stats.buckets[1].latency_ms.p50 == pytest.approx(20.0)
    assert stats.buckets[1].mean_confidence == pytest.approx(0.7)
    assert (stats.buckets[1].reviewed, stats.buckets[1].correct) == (2, 1)
    assert stats.buckets[1].accuracy == pytest.approx(0.5)
    assert (stats.reviewed, stats.correct) == (2, 1)
    assert stats.latency_ms.p50 == pytest.approx(20.0)
    assert stats.mean_confidence == pytest.approx(0.7)


def test_model_version_filter_and_an_empty_window(store: PredictionStore) -> None:
    at = UNTIL - timedelta(minutes=5)
    asyncio.run(store.log_predictions([logged(at, "eating", version="1")]))
    asyncio.run(store.log_predictions([logged(at, "running", version="2")]))

    second = asyncio.run(store.prediction_stats(UNTIL - timedelta(hours=1), UNTIL, 600, "2"))
    assert (second.total, second.by_label, second.model_version) == (1, {"running": 1}, "2")
    nothing = asyncio.run(store.prediction_stats(UNTIL - timedelta(hours=1), UNTIL, 600, "9"))
    assert nothing.total == 0 and nothing.accuracy is None and nothing.mean_confidence is None
    assert nothing.latency_ms.p99 is None
    assert len(nothing.buckets) == 7 and all(b.count == 0 for b in nothing.buckets)


def test_percentiles_interpolate_between_ranks() -> None:
    ordered = [float(v) for v in range(1, 101)]
    assert percentile(ordered, 50) == pytest.approx(50.5)
    assert percentile(ordered, 99) == pytest.approx(99.01)
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None


# --------------------------------------------------------------------------- the route


def stats_app(store: PredictionStore, **settings: Any) -> httpx.AsyncClient:
    """The stats route on an app of its own (no model needed)."""
    config = ServeSettings(**settings)
    app = FastAPI()
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    app.state.api_keys = auth.load_keys(config)
    app.state.services = Services(settings=config, models=None, store=store, metrics=None)  # type: ignore[arg-type]
    app.include_router(routes_stats.router)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


def get(client: httpx.AsyncClient, url: str, **kwargs: Any) -> httpx.Response:
    async def call() -> httpx.Response:
        async with client:
            return await client.get(url, **kwargs)

    return asyncio.run(call())


def assert_continuous(body: dict[str, Any]) -> None:
    """Buckets step by bucket_seconds from the one holding ``since`` to the one holding
    ``until``, and their counts add up to the total."""
    step = timedelta(seconds=body["bucket_seconds"])
    starts = [datetime.fromisoformat(b["start"]) for b in body["buckets"]]
    since, until = datetime.fromisoformat(body["since"]), datetime.fromisoformat(body["until"])
    assert starts[0] <= since < starts[0] + step
    assert starts[-1] <= until < starts[-1] + step
    assert all(later - earlier == step for earlier, later in itertools.pairwise(starts))
    assert all(start.timestamp() % step.total_seconds() == 0 for start in starts)
    assert sum(b["count"] for b in body["buckets"]) == body["total"]


def test_route_counts_the_window_and_leaves_older_predictions_out(
    store: PredictionStore,
) -> None:
    asyncio.run(
        store.log_predictions(
            [
                logged(hours_ago(0.5), "running", 10),
                logged(hours_ago(1.5), "running", 20),
                logged(hours_ago(2.5), "eating", 30),
                logged(hours_ago(30), "eating", 40),  # outside a 24-hour window
            ]
        )
    )
    answer = get(stats_app(store), "/v1/stats/predictions", params={"hours": 24})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["total"], body["by_label"]) == (3, {"eating": 1, "running": 2})
    assert body["bucket_seconds"] == 3600 and body["model_version"] is None
    assert len(body["buckets"]) in (24, 25)  # 25 unless the request falls on a whole hour
    assert_continuous(body)
    assert body["latency_ms"]["p50"] == pytest.approx(20.0)
    assert set(body["buckets"][0]) >= {
        "start",
        "count",
        "by_label",
        "latency_ms_p50",
        "latency_ms_p95",
        "mean_confidence",
        "reviewed",
        "correct",
        "accuracy",
    }


def test_route_buckets_by_minutes_and_filters_the_model_version(store: PredictionStore) -> None:
    asyncio.run(store.log_predictions([logged(hours_ago(0.2), "eating", version="7")]))
    asyncio.run(store.log_predictions([logged(hours_ago(0.2), "running", version="8")]))
    answer = get(
        stats_app(store),
        "/v1/stats/predictions",
        params={"hours": 2, "bucket_minutes": 15, "model_version": "7"},
    )
    body = answer.json()
    assert answer.status_code == 200, answer.text
    assert (body["total"], body["by_label"], body["model_version"]) == (1, {"eating": 1}, "7")
    assert body["bucket_seconds"] == 900 and len(body["buckets"]) in (8, 9)
    assert_continuous(body)


@pytest.mark.parametrize(
    "params",
    [
        {"hours": 0},
        {"hours": -1},
        {"hours": "nan"},
        {"hours": 721},
        {"bucket_minutes": 0},
        {"hours": 720, "bucket_minutes": 1},  # 43200 buckets
        {"hours": 24, "bucket_minutes": 1},  # 1440 buckets
        {"model_version": ""},
    ],
)
def test_bad_windows_answer_422_json(store: PredictionStore, params: dict[str, Any]) -> None:
    answer = get(stats_app(store), "/v1/stats/predictions", params=params)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_request" and error["message"]
    assert error["request_id"] == answer.headers["x-request-id"]


def test_too_many_buckets_message_says_what_to_change(store: PredictionStore) -> None:
    answer = get(stats_app(store), "/v1/stats/predictions?hours=24&bucket_minutes=1")
    assert "1440 buckets" in answer.json()["error"]["message"]
    assert "bucket_minutes" in answer.json()["error"]["message"]


def test_route_needs_the_api_key_when_keys_are_configured(store: PredictionStore) -> None:
    without = get(stats_app(store, api_keys=[API_KEY]), "/v1/stats/predictions")
    assert without.status_code == 401
    assert without.json()["error"]["code"] == "unauthorized"
    wrong = get(
        stats_app(store, api_keys=[API_KEY]),
        "/v1/stats/predictions",
        headers={"X-API-Key": "not-the-key"},
    )
    assert wrong.status_code == 401
    with_key = get(
        stats_app(store, api_keys=[API_KEY]),
        "/v1/stats/predictions",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert with_key.status_code == 200, with_key.text


# --------------------------------------------------------------------------- the served app


def test_real_predictions_and_feedback_show_up_in_the_stats(
    tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    from conftest import make_photo, wait_ready
    from fastapi.testclient import TestClient

    from clip_har.serving.app import create_app

    settings = ServeSettings(
        bundle=str(tiny_onnx_bundle), database_url=f"sqlite:///{tmp_path / 'serving.db'}"
    )
    photo = make_photo(tmp_path / "photo.jpg").read_bytes()
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        answers = [
            client.post("/v1/predict", files={"file": ("p.jpg", photo, "image/jpeg")}).json()
            for _ in range(3)
        ]
        feedback = {"prediction_id": answers[0]["prediction_id"], "correct": True}
        assert client.post("/v1/feedback", json=feedback).status_code == 201
        answer = client.get("/v1/stats/predictions", params={"hours": 1, "bucket_minutes": 10})
        assert "/v1/stats/predictions" in client.get("/openapi.json").json()["paths"]

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["total"] == 3
    assert body["by_label"] == {answers[0]["label"]: 3}  # one photo, one label
    assert (body["reviewed"], body["correct"], body["accuracy"]) == (1, 1, 1.0)
    assert body["model_version"] is None and body["latency_ms"]["p95"] > 0
    assert_continuous(body)
    assert body["buckets"][-1]["count"] + body["buckets"][-2]["count"] == 3
