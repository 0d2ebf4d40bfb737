"""``schemathesis`` against the ``/openapi.json`` of a real ``clip-har serve`` on 127.0.0.1:
for every documented operation, generated requests (valid and invalid, bounded in number) get
no 5xx, and every answer conforms to the documented schema, status code and content type.
The schema under test is the one the server publishes (checked byte for byte as JSON).

Nothing is excluded. The server runs with auth off, so ``POST /v1/admin/reload`` answers its
documented 403 ``admin_disabled`` (a fuzzed reload source would otherwise make the server load
arbitrary paths and models:/ URIs); the auth paths are covered by test_serving_http.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port
from feedback_server import ServeProcess

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_EXAMPLES = 25  # per operation: bounded, the whole run stays within about two minutes
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


@pytest.fixture(scope="module")
def server_url(tiny_onnx_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The ONNX bundle served with auth off; the log is checked for tracebacks at the end."""
    folder = tmp_path_factory.mktemp("serve-schema")
    env = {"CLIP_HAR_SERVE_DATABASE_URL": f"sqlite:///{folder / 'serving.db'}"}
    server = ServeProcess(tiny_onnx_bundle, free_port(), folder / "serve.log", env)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()
    assert "Traceback" not in server.tail(), server.tail()


def _served_schema() -> dict[str, Any]:
    """The OpenAPI document of the service, built by the app factory (no model needed);
    ``test_the_server_serves_this_schema`` checks that the server publishes exactly this."""
    from clip_har.serving.app import create_app
    from clip_har.serving.settings import ServeSettings

    document: dict[str, Any] = create_app(ServeSettings(bundle="unused")).openapi()
    return document


# schemathesis' lazy pytest loader (from_fixture) breaks on pytest 9 (it writes
# node._nodeid), so the schema is loaded at collection time and the requests go to the real
# server at test time (base_url).
SCHEMA = _served_schema()
schema = schemathesis.openapi.from_dict(SCHEMA)


def test_the_server_serves_this_schema(server_url: str) -> None:
    answer = httpx.get(f"{server_url}/openapi.json", timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json() == SCHEMA


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
    database=None,  # no .hypothesis folder in the checkout
)
def test_openapi_operations_answer_no_5xx_and_conform_to_the_schema(
    case: Any, server_url: str
) -> None:
    """Each documented operation, fed generated valid and invalid requests."""
    case.call_and_validate(base_url=server_url, checks=CHECKS, timeout=60)
