"""The Python client's pieces that need no server: what importing it loads, how error
answers become exceptions, Retry-After, image inputs and the feedback result models."""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from PIL import Image

from clip_har.client import (
    ERROR_CODES,
    AsyncHARClient,
    BadRequestError,
    HARAPIError,
    HARClient,
    HARInputError,
    ServerError,
    ServiceUnavailableError,
    UnauthorizedError,
)
from clip_har.client.calls import Call, parsed
from clip_har.client.errors import api_error, retry_after_seconds
from clip_har.client.inputs import encode_image
from clip_har.client.models import HealthStatus
from clip_har.client.transport import MAX_RETRY_AFTER_S, RetryPolicy, server_url
from clip_har.errors import UsageError

SERVING = Path(__file__).resolve().parents[2] / "src" / "clip_har" / "serving"


def _response(status: int, body: bytes | str = b"", **headers: str) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return httpx.Response(
        status, content=content, headers=headers, request=httpx.Request("GET", "http://x/v1/a")
    )


def test_importing_the_client_loads_no_server_or_model_stack() -> None:
    code = (
        "import sys, clip_har.client; "
        "print(','.join(m for m in ('fastapi', 'starlette', 'torch', 'transformers', "
        "'onnxruntime', 'uvicorn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_every_error_code_the_server_emits_has_an_exception() -> None:
    source = "\n".join(path.read_text() for path in SERVING.glob("*.py"))
    source += (SERVING.parent / "errors.py").read_text()
    emitted = set(re.findall(r"ApiError\(\s*\d{3},\s*\"([a-z_]+)\"", source))
    emitted |= set(re.findall(r"\(\d{3}, \"([a-z_]+)\"\)", source))  # status tables
    emitted |= set(re.findall(r"^\s+\d{3}: \"([a-z_]+)\",$", source, re.MULTILINE))
    emitted -= {"method_not_allowed", "too_many_requests", "client_closed_request"}
    assert emitted >= {"queue_full", "unauthorized", "image_too_large", "unknown_prediction"}
    assert sorted(emitted - set(ERROR_CODES)) == []


def test_an_api_error_body_gives_status_code_message_and_request_id() -> None:
    body = '{"error": {"code": "unauthorized", "message": "missing API key", "request_id": "r1"}}'
    error = api_error(_response(401, body))
    assert isinstance(error, UnauthorizedError)
    assert (error.status, error.code, error.message, error.request_id) == (
        401,
        "unauthorized",
        "missing API key",
        "r1",
    )
    assert "r1" in str(error)


def test_a_non_json_error_body_is_still_a_clear_error() -> None:
    html = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    error = api_error(_response(502, html, **{"X-Request-ID": "abc"}))
    assert isinstance(error, ServerError)
    assert error.code == "http_502"
    assert "502 Bad Gateway" in error.message
    assert "not an answer of the clip-har API" in error.message
    assert error.request_id == "abc"


def test_the_code_chooses_the_exception_and_the_status_is_the_fallback() -> None:
    body = '{"error": {"code": "queue_full", "message": "full", "request_id": "r"}}'
    error = api_error(_response(503, body, **{"Retry-After": "3"}))
    assert isinstance(error, ServiceUnavailableError)
    assert error.retry_after == 3.0
    assert type(api_error(_response(400, "{}"))) is BadRequestError
    assert type(api_error(_response(409, "conflict"))) is HARAPIError


def test_retry_after_accepts_seconds_and_dates_and_ignores_garbage() -> None:
    assert retry_after_seconds(_response(503, **{"Retry-After": "2"})) == 2.0
    assert retry_after_seconds(_response(503, **{"Retry-After": "soon"})) is None
    past = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after_seconds(_response(503, **{"Retry-After": past})) == 0.0
    assert retry_after_seconds(_response(503)) is None


def _call(method: str, retry_unavailable: bool = True) -> Call[HealthStatus]:
    return Call(method, "/x", parsed(HealthStatus), retry_unavailable=retry_unavailable)


def test_retry_policy_caps_retry_after_and_stops_after_the_retries() -> None:
    policy = RetryPolicy(retries=2, backoff=0.5)
    huge = _response(503, **{"Retry-After": "86400"})
    wait = policy.after_response(huge, _call("POST"), 0)
    assert wait is not None
    assert MAX_RETRY_AFTER_S <= wait <= MAX_RETRY_AFTER_S * 1.1
    assert policy.after_response(huge, _call("POST"), 2) is None
    assert policy.after_response(huge, _call("GET", retry_unavailable=False), 0) is None
    assert policy.after_response(_response(500), _call("GET"), 0) is None


def test_a_broken_connection_is_retried_for_get_but_never_for_post() -> None:
    policy = RetryPolicy(retries=3, backoff=0.1)
    reset = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    refused = httpx.ConnectError("Connection refused")
    assert policy.after_error(reset, _call("GET"), 0) is not None
    assert policy.after_error(reset, _call("POST"), 0) is None  # it may have been processed
    assert policy.after_error(refused, _call("POST"), 0) is not None  # it never left
    assert policy.after_error(httpx.ReadTimeout("slow"), _call("POST"), 0) is None


def test_image_inputs_paths_bytes_and_pil_images(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(path)
    name, data, content_type = encode_image(path)
    assert (name, data, content_type) == ("photo.jpg", path.read_bytes(), "image/jpeg")
    assert encode_image(str(path))[1] == path.read_bytes()
    assert encode_image(b"raw", 3) == ("image-3", b"raw", "application/octet-stream")
    name, data, content_type = encode_image(Image.new("CMYK", (40, 40)))
    assert content_type == "image/png"
    with Image.open(io.BytesIO(data)) as decoded:
        assert (decoded.format, decoded.mode) == ("PNG", "RGB")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("missing.jpg", "no such file"),
        (".", "is a folder"),
        ("https://example.com/a.jpg", "never URLs"),
        (42, "not int"),
    ],
)
def test_unusable_image_inputs_are_named(value: object, message: str) -> None:
    with pytest.raises(HARInputError, match=re.escape(message)):
        encode_image(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://host", "http://", "not a url"])
def test_a_server_url_must_be_http(url: str) -> None:
    with pytest.raises(UsageError, match="invalid server URL"):
        server_url(url)


def test_the_client_speaks_through_starlettes_testclient_as_the_ui_does(
    tiny_onnx_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI's in-process service: a HARClient over Starlette's real TestClient (built on
    httpx2 where installed, so its answers are not httpx.Response objects)."""
    from starlette.testclient import TestClient

    from clip_har.serving.app import create_app
    from clip_har.serving.settings import ServeSettings

    for name in ("CLIP_HAR_SERVE_API_KEYS", "CLIP_HAR_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = ServeSettings(
        bundle=str(tiny_onnx_bundle), database_url=f"sqlite:///{tmp_path / 'serving.db'}"
    )
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (30, 160, 90)).save(photo)
    with (
        TestClient(create_app(settings), base_url="http://in-process") as service,
        HARClient("http://in-process", http=service, retries=0) as client,
    ):
        health = client.health()
        for _ in range(600):  # the model loads in the background: wait, bounded
            if health.ready or health.status.startswith("failed"):
                break
            time.sleep(0.1)
            health = client.health()
        assert (health.ready, health.status) == (True, "ready")
        answer = client.predict(photo, top_k=2)
        assert len(answer.top_k) == 2 and answer.label == answer.top_k[0].label
        with pytest.raises(BadRequestError) as caught:
            client.predict(b"")
        assert caught.value.code == "empty_image" and caught.value.request_id


class _Unavailable:
    """A transport that answers 503 with ``retry_after`` (a header value, or a callable
    making one) ``refusals`` times, then 200; it records when each attempt arrived."""

    def __init__(self, retry_after: str | Callable[[], str], refusals: int = 1) -> None:
        self.retry_after = retry_after
        self.refusals = refusals
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.times.append(time.monotonic())
        if len(self.times) <= self.refusals:
            value = self.retry_after if isinstance(self.retry_after, str) else self.retry_after()
            error = {"code": "queue_full", "message": "full", "request_id": "r"}
            return httpx.Response(503, headers={"Retry-After": value}, json={"error": error})
        return httpx.Response(200, text="<html>report</html>")

    @property
    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in itertools.pairwise(self.times)]


def _sync_client(transport: _Unavailable, retries: int = 3) -> HARClient:
    http = httpx.Client(transport=httpx.MockTransport(transport))
    return HARClient("http://har.test", retries=retries, backoff=0.0, http=http)


def test_the_sync_client_waits_the_retry_after_seconds_before_retrying() -> None:
    transport = _Unavailable("1")
    with _sync_client(transport) as client:  # backoff 0: any wait is the header's
        assert client.model_report() == "<html>report</html>"
    assert len(transport.times) == 2
    assert transport.gaps[0] >= 1.0


def test_the_sync_client_waits_until_a_retry_after_http_date() -> None:
    def in_three_seconds() -> str:  # whole seconds: the date says at least 2 s from now
        return format_datetime(datetime.now(timezone.utc) + timedelta(seconds=3), usegmt=True)

    transport = _Unavailable(in_three_seconds)
    with _sync_client(transport) as client:
        assert client.model_report() == "<html>report</html>"
    assert len(transport.times) == 2
    assert transport.gaps[0] >= 1.5


def test_without_retries_the_503_error_carries_retry_after() -> None:
    transport = _Unavailable("1")
    with _sync_client(transport, retries=0) as client, pytest.raises(ServiceUnavailableError) as e:
        client.model_report()
    assert len(transport.times) == 1
    assert (e.value.code, e.value.retry_after) == ("queue_full", 1.0)


def test_the_async_client_waits_the_retry_after_seconds_and_reports_it_without_retries() -> None:
    async def run(transport: _Unavailable, retries: int) -> str:
        http = httpx.AsyncClient(transport=httpx.MockTransport(transport))
        async with (
            http,
            AsyncHARClient("http://har.test", retries=retries, backoff=0, http=http) as c,
        ):
            return await c.model_report()

    waited = _Unavailable("1")
    assert asyncio.run(run(waited, retries=3)) == "<html>report</html>"
    assert len(waited.times) == 2 and waited.gaps[0] >= 1.0

    refused = _Unavailable("1")
    with pytest.raises(ServiceUnavailableError) as caught:
        asyncio.run(run(refused, retries=0))
    assert len(refused.times) == 1 and caught.value.retry_after == 1.0
