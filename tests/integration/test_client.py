"""HARClient, AsyncHARClient and ``clip-har client`` against a real ``clip-har serve``: every
method, API keys, the exception of every error code the server answers, retries after a
real 503 with Retry-After, and a refused connection."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, make_photo, run_cli
from feedback_server import ServeProcess
from PIL import Image

from clip_har.client import (
    AsyncHARClient,
    BadRequestError,
    BatchFailure,
    BatchPrediction,
    ForbiddenError,
    HARClient,
    HARConnectionError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    calls,
)
from clip_har.client.calls import Call, parsed
from clip_har.client.inputs import encode_image
from clip_har.client.models import ModelResponse

pytestmark = pytest.mark.integration

KEY = "client-test-key"
ADMIN_KEY = "client-test-admin-key"
MAX_UPLOAD = 400_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("client-photos")
    return [make_photo(folder / f"p{i}.{'png' if i % 2 else 'jpg'}", seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def server(tiny_onnx_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the module, with API keys and small input limits."""
    root = tmp_path_factory.mktemp("client-server")
    env = {
        "CLIP_HAR_SERVE_DATABASE_URL": f"sqlite:///{root / 'serving.db'}",
        "CLIP_HAR_SERVE_API_KEYS": KEY,
        "CLIP_HAR_SERVE_ADMIN_API_KEYS": ADMIN_KEY,
        "CLIP_HAR_SERVE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "CLIP_HAR_SERVE_MAX_PIXELS": str(MAX_PIXELS),
        "CLIP_HAR_SERVE_MAX_BATCH_IMAGES": "4",
    }
    process = ServeProcess(tiny_onnx_bundle, free_port(), root / "serve.log", env)
    try:
        process.start()
        yield process.url
    finally:
        process.stop()


@pytest.fixture
def client(server: str) -> Iterator[HARClient]:
    with HARClient(server, api_key=KEY) as har:
        yield har


def test_every_method_sync(client: HARClient, photos: list[Path]) -> None:
    answer = client.predict(photos[0], top_k=3)
    assert len(answer.top_k) == 3
    assert answer.label == answer.top_k[0].label
    assert answer.model.format in {"onnx", "onnx-int8"}
    pil = client.predict(Image.open(photos[1]), top_k=2)
    raw = client.predict(photos[1].read_bytes(), top_k=2)
    assert pil.label == raw.label  # a PNG, re-encoded as PNG: the same pixels

    batch = client.predict_batch([photos[0], photos[1].read_bytes(), b""], top_k=1)
    first, second, empty = batch.predictions
    assert isinstance(first, BatchPrediction) and isinstance(second, BatchPrediction)
    assert first.filename == photos[0].name
    assert isinstance(empty, BatchFailure) and empty.error.code == "empty_image"

    classes = client.labels().labels
    scored = client.classify(photos[2], ["dancing", "cooking, outdoors"], templates=["a {}."])
    assert {item.label for item in scored.top_k} == {"dancing", "cooking, outdoors"}

    stored = client.feedback(answer.prediction_id, correct=False, label=classes[-1], comment="x")
    assert (stored.prediction_id, stored.correct, stored.label) == (
        answer.prediction_id,
        False,
        classes[-1],
    )
    stats = client.feedback_stats()
    assert stats.incorrect >= 1 and stats.predictions >= 5

    info = client.model_info()
    assert info.classes == classes and info.ready
    health = client.health()
    assert (health.ready, health.status) == (True, "ready")
    assert health.model == info.name
    window = client.prediction_stats(hours=1, bucket_minutes=15)
    assert window.total >= 5 and window.bucket_seconds == 900


def test_every_method_async(server: str, photos: list[Path]) -> None:
    async def run() -> dict[str, Any]:
        async with AsyncHARClient(server, api_key=KEY) as har:
            answer = await har.predict(photos[0])
            return {
                "predict": answer,
                "batch": await har.predict_batch(photos, top_k=2),
                "classify": await har.classify(photos[0], ["a", "b"], top_k=1),
                "feedback": await har.feedback(answer.prediction_id, correct=True),
                "feedback_stats": await har.feedback_stats(),
                "labels": await har.labels(),
                "model": await har.model_info(),
                "health": await har.health(),
                "stats": await har.prediction_stats(),
            }

    results = asyncio.run(run())
    assert len(results["predict"].top_k) == 5
    assert [item.index for item in results["batch"].predictions] == [0, 1, 2]
    assert len(results["classify"].top_k) == 1
    assert results["feedback"].label == results["predict"].label
    assert results["labels"].labels == results["model"].classes
    assert results["health"].ready
    assert results["stats"].bucket_seconds == 3600


def test_the_api_key_comes_from_the_environment(
    server: str, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIP_HAR_API_KEY", KEY)
    with HARClient(server) as har:
        assert har.predict(photos[0]).prediction_id
    assert KEY not in repr(har)


def test_a_wrong_key_is_the_401_exception_with_code_and_request_id(
    server: str, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLIP_HAR_API_KEY", raising=False)
    for key in ("wrong-key", None):
        with HARClient(server, api_key=key) as har, pytest.raises(UnauthorizedError) as caught:
            har.predict(photos[0])
        error = caught.value
        assert (error.status, error.code) == (401, "unauthorized")
        assert error.request_id and len(error.request_id) == 32


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_error_code_becomes_its_exception(client: HARClient, photos: list[Path]) -> None:
    good = photos[0].read_bytes()
    five = [encode_image(good, index) for index in range(5)]  # one request over the limit
    cases: list[tuple[Any, type[Exception], str]] = [
        (lambda: client.predict(b""), BadRequestError, "empty_image"),
        (lambda: client.predict(good[: len(good) // 2]), BadRequestError, "invalid_image"),
        (lambda: client.predict(_png((8, 8))), BadRequestError, "image_too_small"),
        (lambda: client.predict(b"plain text, no image"), UnsupportedMediaTypeError, ""),
        (lambda: client.predict(_png((1100, 1000))), PayloadTooLargeError, "image_too_large"),
        (lambda: client.predict(b"\0" * MAX_UPLOAD), PayloadTooLargeError, "payload_too_large"),
        (
            lambda: client._run(calls.batch_call(five, None)),
            PayloadTooLargeError,
            "too_many_images",
        ),
        (lambda: client.predict(good, top_k=999), InvalidRequestError, "invalid_request"),
        (lambda: client.classify(good, ["a", "A"]), InvalidRequestError, "invalid_request"),
        (lambda: client.classify(good, ["a"], templates=["no slot"]), InvalidRequestError, ""),
        (
            lambda: client.feedback("0" * 32, correct=True),
            NotFoundError,
            "unknown_prediction",
        ),
        (lambda: client.feedback("nope", correct=True), InvalidRequestError, "invalid_request"),
        (
            lambda: client._run(Call("POST", "/v1/admin/reload", parsed(ModelResponse), json={})),
            ForbiddenError,
            "forbidden",
        ),
        (
            lambda: client._run(Call("GET", "/v1/no-such-route", parsed(ModelResponse))),
            NotFoundError,
            "not_found",
        ),
    ]
    for call, expected, code in cases:
        with pytest.raises(expected) as caught:
            call()
        error = caught.value
        assert error.code == (code or error.code), error
        assert error.request_id, error
        assert error.message, error
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        client.predict(b"plain text, no image")
    assert caught.value.code == "unsupported_media_type"


def _recording_client(server: str) -> tuple[HARClient, httpx.Client, list[httpx.Request]]:
    requests: list[httpx.Request] = []
    http = httpx.Client(timeout=60, event_hooks={"request": [requests.append]})
    return HARClient(server, api_key=KEY, http=http), http, requests


def test_predict_batch_splits_a_batch_over_the_servers_image_limit(
    server: str, photos: list[Path]
) -> None:
    """The server takes 4 images a request (max_batch_images): 10 images, one empty, each
    get their own answer, in order, with the progress reported, from both clients."""
    images: list[Any] = [photos[index % 3].read_bytes() for index in range(10)]
    images[8] = b""
    progress: list[tuple[int, int]] = []
    har, http, requests = _recording_client(server)
    with http, har:
        answer = har.predict_batch(images, top_k=1, progress=lambda *p: progress.append(p))

    items = answer.predictions
    assert [item.index for item in items] == list(range(10))
    failures = {item.index: item.error.code for item in items if isinstance(item, BatchFailure)}
    assert failures == {8: "empty_image"}
    predicted = [item for item in items if isinstance(item, BatchPrediction)]
    assert len({item.prediction_id for item in predicted}) == 9
    same_photo = [items[index] for index in (0, 3, 6, 9)]  # photos[0] each time
    assert len({getattr(item, "label", None) for item in same_photo}) == 1
    assert progress == [(4, 10), (8, 10), (10, 10)]
    assert len(requests) == 4  # 10 refused (the limit, 4, is in the message); 0-3; 4-7; 8-9

    async def run() -> Any:
        async with AsyncHARClient(server, api_key=KEY) as async_har:
            return await async_har.predict_batch(images, top_k=1)

    again = asyncio.run(run()).predictions
    assert [getattr(item, "label", None) for item in again] == [
        getattr(item, "label", None) for item in items
    ]


def test_predict_batch_gives_an_image_too_big_to_send_its_own_error(
    server: str, photos: list[Path]
) -> None:
    """A request over the server's body limit (400 kB) is halved down to the one image that
    is too big even alone: it alone fails (payload_too_large), the others are predicted."""
    images: list[Any] = [photo.read_bytes() for photo in photos] * 2
    images[4] = b"\0" * MAX_UPLOAD
    har, http, requests = _recording_client(server)
    with http, har:
        items = har.predict_batch(images, top_k=1).predictions

    assert [item.index for item in items] == list(range(6))
    failures = {item.index: item.error.code for item in items if isinstance(item, BatchFailure)}
    assert failures == {4: "payload_too_large"}
    assert len(requests) < 2 * len(images)  # halving, not one request per image and retries
    alone = next(item for item in items if isinstance(item, BatchFailure))
    single, single_http, _ = _recording_client(server)
    with single_http, single, pytest.raises(PayloadTooLargeError) as caught:
        single.predict_batch([images[4]])  # nothing taken at all: the refusal itself
    assert caught.value.code == "payload_too_large"
    assert alone.error.message == caught.value.message


@pytest.fixture(scope="module")
def congested(tiny_onnx_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose queue holds two images, computed one at a time: easy to fill."""
    root = tmp_path_factory.mktemp("client-congested")
    env = {"CLIP_HAR_SERVE_DATABASE_URL": f"sqlite:///{root / 'serving.db'}"}
    options = ("--max-batch-size", "1", "--max-queue", "2", "--max-wait-ms", "0", "--threads", "1")
    process = ServeProcess(tiny_onnx_bundle, free_port(), root / "serve.log", env, *options)
    try:
        process.start()
        yield process.url
    finally:
        process.stop()


def test_a_real_503_is_retried_after_retry_after_and_then_succeeds(
    congested: str, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLIP_HAR_API_KEY", raising=False)
    pair = [photos[0], photos[1]]  # fills the whole queue of the congested server

    async def round_() -> tuple[list[BaseException | Any], list[BaseException | Any], int]:
        seen_503 = 0

        async def count(response: httpx.Response) -> None:
            nonlocal seen_503
            seen_503 += response.status_code == 503

        hooks: dict[str, list[Any]] = {"response": [count]}
        async with (
            AsyncHARClient(congested, retries=0) as eager,
            httpx.AsyncClient(timeout=60, event_hooks=hooks) as http,
            AsyncHARClient(congested, retries=8, backoff=0.2, http=http) as patient,
        ):
            eager_calls = [eager.predict_batch(pair) for _ in range(12)]
            patient_calls = [patient.predict_batch(pair) for _ in range(12)]
            results = await asyncio.gather(*eager_calls, *patient_calls, return_exceptions=True)
        return results[:12], results[12:], seen_503

    refused: list[ServiceUnavailableError] = []
    retried = 0
    for _ in range(6):  # bounded: a flood of 24 requests at a queue of 2 overflows at once
        eager, patient, seen_503 = asyncio.run(round_())
        assert all(not isinstance(result, BaseException) for result in patient), patient
        refused += [r for r in eager if isinstance(r, ServiceUnavailableError)]
        assert all(
            not isinstance(r, BaseException) or isinstance(r, ServiceUnavailableError)
            for r in eager
        ), eager
        retried += seen_503
        if refused and retried:
            break
    assert refused and retried, "the flood never filled the queue"
    error = refused[0]
    assert (error.status, error.code) == (503, "queue_full")
    assert error.retry_after is not None and error.retry_after >= 1
    assert error.request_id


def test_connection_refused_is_a_connection_error_after_the_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    attempts: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [attempts.append]})
    har = HARClient(url, retries=2, backoff=0.01, http=http)
    with har, pytest.raises(HARConnectionError, match=r"127\.0\.0\.1") as caught:
        har.predict(b"x")
    http.close()
    assert caught.value.url == url
    assert "after 3 attempts" in str(caught.value)
    assert len(attempts) == 3
    assert len({request.headers["X-Request-ID"] for request in attempts}) == 1


# --------------------------------------------------------------------------- the CLI


def _cli(server: str, *args: str, key: str | None = KEY) -> Any:
    env = {"CLIP_HAR_URL": server, "CLIP_HAR_API_KEY": key or ""}
    return run_cli("client", *args, env=env, timeout=120)


def test_cli_predict_classify_feedback_model_and_health(server: str, photos: list[Path]) -> None:
    result = _cli(server, "predict", str(photos[0]), str(photos[1]), "--top-k", "2", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["path"] for row in rows] == [str(photos[0]), str(photos[1])]
    assert all(len(row["top_k"]) == 2 for row in rows)

    table = _cli(server, "predict", str(photos[2]))
    assert table.returncode == 0, table.stderr
    assert "prediction id" in table.stdout

    classified = _cli(server, "classify", str(photos[0]), "--labels", "a,b", "-t", "x {}", "--json")
    assert classified.returncode == 0, classified.stderr
    assert {item["label"] for item in json.loads(classified.stdout)["top_k"]} == {"a", "b"}

    wrong = _cli(server, "feedback", rows[0]["prediction_id"], "--wrong", "--label", "running")
    assert wrong.returncode == 0, wrong.stderr
    assert "stored" in wrong.stderr

    model = _cli(server, "model", "--json")
    assert model.returncode == 0 and json.loads(model.stdout)["ready"] is True
    assert _cli(server, "model").returncode == 0
    health = _cli(server, "health")
    assert health.returncode == 0 and "ready" in health.stdout


def test_cli_errors_are_one_line_and_exit_1(server: str, photos: list[Path]) -> None:
    unauthorized = _cli(server, "predict", str(photos[0]), key="wrong")
    assert unauthorized.returncode == 1
    assert "401 unauthorized" in unauthorized.stderr
    assert "Traceback" not in unauthorized.stderr + unauthorized.stdout
    assert len(unauthorized.stderr.strip().splitlines()) == 1

    unknown = _cli(server, "feedback", "0" * 32, "--correct")
    assert unknown.returncode == 1 and "unknown_prediction" in unknown.stderr

    gone = run_cli("client", "health", "--url", f"http://127.0.0.1:{free_port()}")
    assert gone.returncode == 1 and "cannot reach" in gone.stderr

    usage = _cli(server, "feedback", "0" * 32, "--wrong")
    assert usage.returncode == 2 and "--label" in usage.stderr
