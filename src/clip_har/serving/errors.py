"""Every error answer of the service, and the request id every response carries.

``/v1`` errors are ``{"error": {"code", "message", "request_id"}}``. ``/v2`` errors follow the
Open Inference Protocol exactly: ``{"error": "<message>"}`` (the request id is in the
``X-Request-ID`` header of both).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clip_har.errors import ApiError

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
V2_PREFIX = "/v2"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CLIENT_CLOSED_REQUEST = 499
"""The status of a request whose client went away before its answer (nginx's convention):
nobody receives it, but the logs and metrics see a client's hang-up, never a server error."""

# the code of a bare HTTP status (404 from routing, 405, ...)
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
    504: "timeout",
}


def request_id(request: Request) -> str:
    """The id of this request (the client's ``X-Request-ID`` when well-formed, else new)."""
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_body(path: str, code: str, message: str, rid: str) -> dict[str, Any]:
    """The JSON body of an error on ``path``, in the shape of its protocol."""
    if path.startswith(V2_PREFIX):
        return {"error": message}
    return {"error": {"code": code, "message": message, "request_id": rid}}


def error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error response for ``request``."""
    rid = request_id(request)
    request.state.error_code = code  # read by the metrics middleware (rejection reasons)
    body = error_body(request.url.path, code, message, rid)
    return JSONResponse(
        body, status_code=status, headers={**(headers or {}), REQUEST_ID_HEADER: rid}
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for problem in exc.errors()[:5]:
        where = ".".join(str(item) for item in problem.get("loc", ()) if item != "body")
        parts.append(f"{where or 'request'}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def client_disconnected(request: Request) -> JSONResponse:
    """The answer to a request whose client hung up while its body was read: one log line,
    status 499 (sent nowhere; the server drops it, the metrics record it)."""
    logger.info(
        "request %s: the client disconnected before its request was read (%s %s)",
        request_id(request),
        request.method,
        request.url.path,
    )
    return error_response(
        request, CLIENT_CLOSED_REQUEST, "client_closed_request", "the client closed the request"
    )


def install_error_handlers(app: FastAPI) -> None:
    """Turn every exception into a JSON error body; unexpected ones are logged with their
    request id and answered 500 without internals."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, 422, "invalid_request", _validation_message(exc))

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return client_disconnected(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 400 and isinstance(exc.__cause__, ClientDisconnect):
            return client_disconnected(request)  # FastAPI wraps a hang-up while it reads a body
        if exc.status_code == 400:  # only the framework raises it: a body it cannot parse
            message = f"the request body cannot be parsed: {exc.detail}"
            return error_response(request, 422, "invalid_request", message, headers)
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("request %s failed", request_id(request))
        return error_response(request, 500, "internal", "internal error; see the server log")


class RequestIdMiddleware:
    """Pure ASGI middleware: give each HTTP request an id and put it on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = (
            dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        )
        rid = given if _CLIENT_REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)
