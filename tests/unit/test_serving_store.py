"""The prediction log and feedback store (serving/store.py) and its routes.

Protects: logged predictions and feedback are readable back; feedback on an unknown
prediction is refused; concurrent writers from threads and from two stores on one SQLite
file lose no row; concurrent requests share one commit (group commit); uploads are stored
once per content; the export writes the layout ``clip-har data import`` reads; the
feedback routes answer 201/404/422 as documented.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import make_photo, wait_ready
from fastapi import FastAPI

from clip_har.data.sources import import_source
from clip_har.errors import (
    InvalidFeedbackError,
    StoreClosedError,
    StoreError,
    UnknownPredictionError,
)
from clip_har.serving import auth, routes_feedback
from clip_har.serving.errors import RequestIdMiddleware, install_error_handlers
from clip_har.serving.settings import ServeSettings
from clip_har.serving.state import Services
from clip_har.serving.store import PredictionRecord, PredictionStore, export_feedback


def record(label: str = "running", sha: str | None = None, version: str = "1") -> PredictionRecord:
    return PredictionRecord(
        id=PredictionRecord.new_id(),
        created_at=datetime.now(timezone.utc),
        model_name="tiny-har",
        model_version=version,
        route="v1/predict",
        label=label,
        confidence=0.75,
        top_k=[(label, 0.75), ("eating", 0.25)],
        latency_ms=4.5,
        image_sha256=sha,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PredictionStore]:
    opened = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}", images_dir=tmp_path / "images")
    yield opened
    opened.close()


def count(store: PredictionStore, table: str) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


# --------------------------------------------------------------------------- log and feedback


def test_sqlite_store_runs_in_wal_mode_with_full_sync(store: PredictionStore) -> None:
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_logged_predictions_read_back_with_top_k_and_utc_time(store: PredictionStore) -> None:
    first = record("running")
    asyncio.run(store.log_predictions([first, record("eating")]))
    with store.engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT label, top_k, model_version FROM predictions WHERE id = :id"),
            {"id": first.id},
        ).one()
    assert row.label == "running" and row.model_version == "1"
    assert count(store, "predictions") == 2
    assert "running" in str(row.top_k) and "eating" in str(row.top_k)


def test_feedback_counts_in_stats_latest_feedback_wins(store: PredictionStore) -> None:
    right, wrong, unreviewed = record("running"), record("eating", version="2"), record("sitting")

    async def scenario() -> None:
        await store.log_predictions([right, wrong, unreviewed])
        await store.add_feedback(wrong.id, correct=True)  # changed its mind below
        correction = await store.add_feedback(wrong.id, correct=False, label="drinking")
        assert correction.label == "drinking"
        confirmed = await store.add_feedback(right.id, correct=True, comment="yes")
        assert confirmed.label == "running"  # the confirmed label is stored
        stats = await store.stats()
        assert (stats.predictions, stats.feedback_rows) == (3, 3)
        assert (stats.total, stats.correct, stats.incorrect) == (2, 1, 1)
        assert stats.accuracy == pytest.approx(0.5)
        assert stats.by_label["eating"].incorrect == 1 and stats.by_label["running"].correct == 1
        versions = {(m.model_version, m.reviewed, m.correct) for m in stats.by_model}
        assert versions == {("1", 1, 1), ("2", 1, 0)}

    asyncio.run(scenario())


def test_stats_of_an_empty_store_have_no_accuracy(store: PredictionStore) -> None:
    stats = asyncio.run(store.stats())
    assert (stats.total, stats.accuracy, stats.by_label, stats.by_model) == (0, None, {}, [])


def test_feedback_on_an_unknown_prediction_is_refused_and_not_stored(
    store: PredictionStore,
) -> None:
    with pytest.raises(UnknownPredictionError):
        asyncio.run(store.add_feedback("0" * 32, correct=False, label="eating"))
    assert count(store, "feedback") == 0


def test_feedback_contradicting_its_prediction_is_refused(store: PredictionStore) -> None:
    logged = record("running")
    asyncio.run(store.log_predictions([logged]))
    with pytest.raises(InvalidFeedbackError, match="predicted label"):
        asyncio.run(store.add_feedback(logged.id, correct=False, label="running"))
    with pytest.raises(InvalidFeedbackError, match="correct=false"):
        asyncio.run(store.add_feedback(logged.id, correct=True, label="eating"))
    assert count(store, "feedback") == 0


def test_one_bad_write_in_a_group_fails_only_its_caller(store: PredictionStore) -> None:
    logged = record()
    asyncio.run(store.log_predictions([logged]))

    async def scenario() -> list[object]:
        return await asyncio.gather(
            store.log_predictions([logged]),  # a duplicate id: the database refuses it
            store.log_predictions([record()]),
            store.add_feedback(logged.id, correct=True),
            return_exceptions=True,
        )

    duplicate, fresh, feedback = asyncio.run(scenario())
    assert isinstance(duplicate, StoreError)
    assert fresh is None and not isinstance(feedback, Exception)
    assert (count(store, "predictions"), count(store, "feedback")) == (2, 1)


def test_close_commits_queued_writes_and_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = PredictionStore(url)
    asyncio.run(store.log_predictions([record() for _ in range(5)]))
    store.close()
    store.close()
    with pytest.raises(StoreClosedError):
        asyncio.run(store.log_predictions([record()]))
    reopened = PredictionStore(url)
    try:
        assert count(reopened, "predictions") == 5
    finally:
        reopened.close()


# --------------------------------------------------------------------------- concurrency


def test_concurrent_writer_threads_lose_no_rows(tmp_path: Path) -> None:
    """Eight threads, each with its own event loop, write through one store and through a
    second store on the same file (as a second server process would)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    stores = [PredictionStore(url), PredictionStore(url)]
    written: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        store = stores[index % 2]

        async def run() -> None:
            for _ in range(25):
                batch = [record(), record()]
                await store.log_predictions(batch)
                await store.add_feedback(batch[0].id, correct=False, label="eating")
                with lock:
                    written.extend(r.id for r in batch)

        asyncio.run(run())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        with stores[0].engine.connect() as connection:
            ids = set(connection.execute(sa.text("SELECT id FROM predictions")).scalars())
        assert ids == set(written) and len(written) == 8 * 25 * 2
        assert count(stores[0], "feedback") == 8 * 25
    finally:
        for store in stores:
            store.close()


def test_concurrent_requests_share_one_commit(store: PredictionStore) -> None:
    """Group commit: while the writer commits one request, 31 more queue up; they are all
    committed in ONE further transaction, and each caller returns only after it."""
    commits: list[int] = []
    first_commit_started = threading.Event()
    release = threading.Event()

    @sa.event.listens_for(store.engine, "commit")
    def _count(connection: sa.Connection) -> None:
        commits.append(1)
        if len(commits) == 1:
            first_commit_started.set()
            release.wait(timeout=30)  # hold the writer while the others queue

    async def scenario() -> None:
        first = asyncio.ensure_future(store.log_predictions([record()]))
        await asyncio.to_thread(first_commit_started.wait, 30)
        rest = [asyncio.ensure_future(store.log_predictions([record()])) for _ in range(31)]
        await asyncio.sleep(0)  # each task runs up to its await: all 31 are queued
        assert not any(task.done() for task in rest)
        release.set()
        await asyncio.gather(first, *rest)

    asyncio.run(scenario())
    assert len(commits) == 2
    assert count(store, "predictions") == 32


# --------------------------------------------------------------------------- images and export


def test_the_same_upload_twice_is_stored_once(store: PredictionStore, tmp_path: Path) -> None:
    data = make_photo(tmp_path / "photo.jpg").read_bytes()
    first, second = store.store_image(data), store.store_image(data)
    assert first == second == hashlib.sha256(data).hexdigest()
    files = [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
    assert [p.relative_to(tmp_path / "images").as_posix() for p in files] == [
        f"{first[:2]}/{first}.jpg"
    ]
    assert files[0].read_bytes() == data


def test_no_images_dir_stores_no_image(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        assert store.store_image(b"\x89PNG\r\n\x1a\n....") is None
    finally:
        store.close()


def test_export_writes_corrected_examples_data_import_reads(
    store: PredictionStore, tmp_path: Path
) -> None:
    photos = [make_photo(tmp_path / f"p{i}.png", seed=i).read_bytes() for i in range(3)]
    corrected = record("running", store.store_image(photos[0]))
    confirmed = record("eating", store.store_image(photos[1]))
    ignored = record("sitting", store.store_image(photos[2]))  # no feedback
    no_image = record("texting")

    async def scenario() -> None:
        await store.log_predictions([corrected, confirmed, ignored, no_image])
        await store.add_feedback(corrected.id, correct=False, label="clapping")
        await store.add_feedback(confirmed.id, correct=True)
        await store.add_feedback(no_image.id, correct=False, label="calling")

    asyncio.run(scenario())
    out = tmp_path / "export"
    summary = export_feedback(store, tmp_path / "images", out)
    assert (summary.rows, summary.reviewed, summary.missing_images) == (2, 3, 1)
    assert summary.labels == {"clapping": 1, "eating": 1}
    with (out / "labels.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert {r["label"] for r in rows} == {"clapping", "eating"}
    frame = import_source(str(out))  # what `clip-har data import` runs
    labels = dict(zip(frame["sha256"], frame["label"], strict=True))
    assert labels == {corrected.image_sha256: "clapping", confirmed.image_sha256: "eating"}


def test_export_from_a_url_without_a_database_creates_none(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no prediction store"):
        export_feedback(f"sqlite:///{missing}", tmp_path, tmp_path / "out")
    assert not missing.exists() and not (tmp_path / "out").exists()


def test_export_without_stored_images_says_how_to_get_them(
    store: PredictionStore, tmp_path: Path
) -> None:
    logged = record()
    asyncio.run(store.log_predictions([logged]))
    asyncio.run(store.add_feedback(logged.id, correct=True))
    with pytest.raises(StoreError, match="serve with --store-images"):
        export_feedback(store.url, tmp_path / "images", tmp_path / "out")


# --------------------------------------------------------------------------- routes


@pytest.fixture
def client(store: PredictionStore) -> Iterator[httpx.AsyncClient]:
    """The feedback routes on an app of their own (no model needed)."""
    settings = ServeSettings(max_label_length=20)
    app = FastAPI()
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    app.state.api_keys = auth.load_keys(settings)
    app.state.services = Services(settings=settings, models=None, store=store, metrics=None)  # type: ignore[arg-type]
    app.include_router(routes_feedback.router)
    yield httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test")


def test_feedback_routes_store_and_count(client: httpx.AsyncClient, store: PredictionStore) -> None:
    logged = record("running")
    asyncio.run(store.log_predictions([logged]))

    async def scenario() -> None:
        async with client:
            answer = await client.post(
                "/v1/feedback",
                json={"prediction_id": logged.id.upper(), "correct": False, "label": " eating "},
            )
            assert answer.status_code == 201, answer.text
            body = answer.json()
            assert body["prediction_id"] == logged.id and body["label"] == "eating"
            assert len(body["feedback_id"]) == 32 and body["created_at"]
            stats = (await client.get("/v1/feedback/stats")).json()
            assert (stats["total"], stats["incorrect"], stats["accuracy"]) == (1, 1, 0.0)
            assert stats["by_label"]["running"]["reviewed"] == 1
            assert stats["by_model"][0]["model_version"] == "1"

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"prediction_id": "0" * 32, "correct": True}, 404, "unknown_prediction"),
        ({"prediction_id": "not-an-id", "correct": True}, 422, "invalid_request"),
        ({"prediction_id": "LOGGED", "correct": False}, 422, "invalid_request"),
        ({"prediction_id": "LOGGED", "correct": False, "label": "x" * 21}, 422, "invalid_request"),
        ({"prediction_id": "LOGGED", "correct": False, "label": "a\nb"}, 422, "invalid_request"),
        (
            {"prediction_id": "LOGGED", "correct": True, "comment": "x" * 1001},
            422,
            "invalid_request",
        ),
        ({"prediction_id": "LOGGED", "correct": "yes"}, 422, "invalid_request"),
        ({"prediction_id": "LOGGED", "correct": True, "label": "eating"}, 422, "invalid_request"),
        ({"prediction_id": "LOGGED", "correct": True, "extra": 1}, 422, "invalid_request"),
    ],
)
def test_bad_feedback_gets_a_json_error_and_stores_nothing(
    client: httpx.AsyncClient,
    store: PredictionStore,
    body: dict[str, object],
    status: int,
    code: str,
) -> None:
    logged = record("running")
    asyncio.run(store.log_predictions([logged]))
    if body["prediction_id"] == "LOGGED":
        body = {**body, "prediction_id": logged.id}

    async def scenario() -> httpx.Response:
        async with client:
            return await client.post("/v1/feedback", json=body)

    answer = asyncio.run(scenario())
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert count(store, "feedback") == 0


# --------------------------------------------------------------------------- the store fails
def test_a_store_that_fails_while_logging_answers_503_and_nothing_is_acknowledged(
    tiny_onnx_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A prediction is answered only once it is logged: when the database refuses the write,
    the client gets 503 ``store_unavailable`` with ``Retry-After`` (so it retries), never 200
    nor a 500 with a traceback."""
    from fastapi.testclient import TestClient

    from clip_har.serving.app import create_app

    settings = ServeSettings(
        bundle=str(tiny_onnx_bundle), database_url=f"sqlite:///{tmp_path / 'log.db'}"
    )
    photo = make_photo(tmp_path / "photo.jpg").read_bytes()
    upload = {"file": ("p.jpg", photo, "image/jpeg")}
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert client.post("/v1/predict", files=upload).status_code == 200
        client.app.state.services.store.close()  # the database goes away under the service
        with caplog.at_level(logging.INFO):
            refused = client.post("/v1/predict", files=upload)
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "store_unavailable"
    assert error["request_id"] == refused.headers["X-Request-ID"]
    assert [r for r in caplog.records if r.exc_info] == []
    assert any("prediction store" in r.getMessage() for r in caplog.records)
    logged = PredictionStore(settings.database_url)
    try:
        assert count(logged, "predictions") == 1  # the answered one only
    finally:
        logged.close()
