"""The client's exceptions: every API error answer becomes a :class:`HARAPIError` subclass
chosen from the server's error ``code`` (else the HTTP status), carrying the status, code,
message and request id; transport failures become :class:`HARConnectionError`."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from clip_har.errors import ClipHarError

REQUEST_ID_HEADER = "X-Request-ID"
_MESSAGE_CHARS = 300  # of a non-JSON error body (an HTML page from a proxy)


class HARClientError(ClipHarError):
    """Base of every error the client raises."""


class HARInputError(HARClientError, ValueError):
    """An argument the client cannot send: a missing image file, an unsupported image type."""


class HARConnectionError(HARClientError):
    """The server could not be reached (or the connection broke) after the retries."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class HARTimeoutError(HARConnectionError):
    """The server took longer than the client's timeout to answer."""


class HARResponseError(HARClientError):
    """A success answer that is not what the API returns (another service at that URL?)."""


class HARAPIError(HARClientError):
    """An error answer of the API: ``status``, the server's ``code``, ``message`` and the
    ``request_id`` to quote in a bug report (``retry_after``: seconds, when the server sent
    ``Retry-After``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after
        where = f" (request {request_id})" if request_id else ""
        super().__init__(f"{status} {code}: {message}{where}")


class BadRequestError(HARAPIError):
    """400: the input is unusable (empty, corrupt or too small image, bad base64 or JSON,
    a URL instead of bytes, a model without open vocabulary)."""


class UnauthorizedError(HARAPIError):
    """401: the API key is missing or wrong (set ``CLIP_HAR_API_KEY``)."""


class ForbiddenError(HARAPIError):
    """403: the key may not use this route (admin routes need an admin key)."""


class NotFoundError(HARAPIError):
    """404: no such route, model or prediction id, or no evaluation (``no_evaluation``)."""


class PayloadTooLargeError(HARAPIError):
    """413: the body, the image's pixel count or the number of images is over a limit."""


class UnsupportedMediaTypeError(HARAPIError):
    """415: not an image type the server decodes (JPEG, PNG, GIF, WebP, BMP, TIFF)."""


class InvalidRequestError(HARAPIError):
    """422: a request field is invalid (top_k, labels, templates, feedback, reload)."""


class ServiceUnavailableError(HARAPIError):
    """503: the server did not take the request (queue full, model not ready, draining);
    raised once the retries are spent. ``retry_after`` says when to try again."""


class DeadlineExceededError(HARAPIError):
    """504: the request waited in the server's queue past its deadline and was not run."""


class ServerError(HARAPIError):
    """500 and other 5xx answers: a fault on the server's side (see its log by request id)."""


ERROR_CODES: dict[str, type[HARAPIError]] = {
    # 400
    "bad_request": BadRequestError,
    "empty_image": BadRequestError,
    "invalid_image": BadRequestError,
    "image_too_small": BadRequestError,
    "invalid_base64": BadRequestError,
    "invalid_json": BadRequestError,
    "urls_not_supported": BadRequestError,
    "open_vocabulary_unavailable": BadRequestError,
    # 401, 403, 404
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "admin_disabled": ForbiddenError,
    "not_found": NotFoundError,
    "model_not_found": NotFoundError,
    "unknown_prediction": NotFoundError,
    "no_evaluation": NotFoundError,
    # 413, 415
    "payload_too_large": PayloadTooLargeError,
    "image_too_large": PayloadTooLargeError,
    "too_many_images": PayloadTooLargeError,
    "unsupported_media_type": UnsupportedMediaTypeError,
    # 422
    "invalid_request": InvalidRequestError,
    "invalid_templates": InvalidRequestError,
    "reload_failed": InvalidRequestError,
    # 503, 504, 500
    "unavailable": ServiceUnavailableError,
    "not_ready": ServiceUnavailableError,
    "queue_full": ServiceUnavailableError,
    "draining": ServiceUnavailableError,
    "timeout": DeadlineExceededError,
    "internal": ServerError,
}
"""Every error code ``clip-har serve`` answers, and its exception."""

STATUS_ERRORS: dict[int, type[HARAPIError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidRequestError,
    503: ServiceUnavailableError,
    504: DeadlineExceededError,
}
"""The exception of a status whose code is unknown (or absent: a proxy's HTML page)."""


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The ``Retry-After`` of ``response`` in seconds (a number, or an HTTP date), if any."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _error_fields(response: httpx.Response) -> tuple[str | None, str | None, str | None]:
    """``(code, message, request_id)`` from a ``/v1`` (or ``/v2``) JSON error body."""
    try:
        body: Any = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None, None, None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):  # the Open Inference Protocol's {"error": "..."}
        return None, error, None
    if not isinstance(error, dict):
        return None, None, None
    fields = (error.get("code"), error.get("message"), error.get("request_id"))
    code, message, rid = (value if isinstance(value, str) else None for value in fields)
    return code, message, rid


def api_error(response: httpx.Response) -> HARAPIError:
    """The exception for an error ``response``; a body that is not the API's JSON (a proxy's
    HTML page) still gives its status, a code ``http_<status>`` and the start of its text."""
    status = response.status_code
    code, message, rid = _error_fields(response)
    if message is None:
        text = " ".join(response.text.split())[:_MESSAGE_CHARS]
        message = text or response.reason_phrase or "no message"
        message = f"{message} (not an answer of the clip-har API)" if code is None else message
    cls = ERROR_CODES.get(code or "") or STATUS_ERRORS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else HARAPIError
    return cls(
        status,
        code or f"http_{status}",
        message,
        request_id=rid or response.headers.get(REQUEST_ID_HEADER),
        retry_after=retry_after_seconds(response),
    )
