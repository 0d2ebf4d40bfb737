"""What the sync and async clients share: the server URL and headers, when to retry, and
the errors of a failed connection."""

from __future__ import annotations

import logging
import os
import random
import sys
import uuid
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import httpx

from clip_har.client.calls import Call
from clip_har.client.errors import HARConnectionError, HARTimeoutError, retry_after_seconds
from clip_har.errors import UsageError
from clip_har.version import __version__

logger = logging.getLogger(__name__)

API_KEY_ENV = "CLIP_HAR_API_KEY"
MAX_RETRY_AFTER_S = 60.0
"""The longest a ``Retry-After`` (or a backoff step) makes the client wait."""
JITTER = 0.1
"""Up to this fraction is added to each wait, so clients refused together come back apart."""

_NOT_SENT = ("ConnectError", "ConnectTimeout", "PoolTimeout")
"""Failures before the request left: retrying any method is safe."""
_BROKEN = ("ReadError", "WriteError", "RemoteProtocolError")
"""The connection broke mid-request: the server may have acted on it (retried for GET only)."""


def _http_modules() -> tuple[ModuleType, ...]:
    """httpx, and httpx2 once something has imported it: Starlette's ``TestClient`` (the
    UI's in-process service) is built on httpx2, whose classes have httpx's names and
    interface but are not httpx's. Before httpx2 is imported none of its objects exist."""
    second = sys.modules.get("httpx2")
    return (httpx,) if second is None else (httpx, second)


def http_errors(*names: str) -> tuple[type[Exception], ...]:
    """The exception classes called ``names`` in httpx and in httpx2 (when loaded)."""
    return tuple(getattr(module, name) for module in _http_modules() for name in names)


def transport_errors() -> tuple[type[Exception], ...]:
    """What a failed send raises: ``TransportError`` of httpx, or of httpx2."""
    return http_errors("TransportError")


def server_url(url: str) -> str:
    """``url`` without a trailing slash; :class:`UsageError` unless it is an http or https
    URL with a host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UsageError(f"invalid server URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"invalid server URL {url!r}: expected http://HOST[:PORT] or https://…")
    return str(parsed).rstrip("/")


@dataclass(frozen=True)
class RetryPolicy:
    """Retry up to ``retries`` times: after a connection failure (exponential ``backoff``)
    and after a 503, which the server sends only for a request it did not take (queue
    full, not ready, draining), waiting its ``Retry-After`` (at most ``max_wait``)."""

    retries: int = 3
    backoff: float = 0.5
    max_wait: float = MAX_RETRY_AFTER_S

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0:
            raise UsageError("retries and backoff must not be negative")

    def _jittered(self, seconds: float) -> float:
        seconds = min(seconds, self.max_wait)
        return seconds + random.uniform(0, JITTER * seconds)  # spreads retries, not for security

    def after_error(self, exc: Exception, call: Call[Any], attempt: int) -> float | None:
        """Seconds to wait before retrying ``call`` after ``exc`` (a transport error of httpx
        or httpx2); None: give up."""
        if attempt >= self.retries:
            return None
        not_sent = isinstance(exc, http_errors(*_NOT_SENT))
        if not_sent or (call.idempotent and isinstance(exc, http_errors(*_BROKEN))):
            return self._jittered(self.backoff * 2**attempt)
        return None

    def after_response(
        self, response: httpx.Response, call: Call[Any], attempt: int
    ) -> float | None:
        """Seconds to wait before retrying ``call`` after ``response``; None: read it."""
        if response.status_code != 503 or not call.retry_unavailable or attempt >= self.retries:
            return None
        retry_after = retry_after_seconds(response)
        return self._jittered(self.backoff * 2**attempt if retry_after is None else retry_after)


class ClientBase:
    """The configuration both clients share; see :class:`clip_har.client.HARClient`."""

    def __init__(
        self, url: str, api_key: str | None, timeout: float, retries: int, backoff: float
    ) -> None:
        if timeout <= 0:
            raise UsageError(f"timeout must be positive, got {timeout}")
        self.url = server_url(url)
        self.timeout = timeout
        self.policy = RetryPolicy(retries=retries, backoff=backoff)
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self._headers = {"User-Agent": f"clip-har-client/{__version__}"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self.url!r})"

    def _request_args(self, call: Call[Any], request_id: str) -> dict[str, Any]:
        """The keyword arguments of ``httpx.Client.request`` for ``call``."""
        return {
            "method": call.method,
            "url": self.url + call.path,
            "params": call.params or None,
            "json": call.json,
            "files": call.files,
            "data": call.data,
            "headers": {**self._headers, "X-Request-ID": request_id},
        }

    @staticmethod
    def _new_request_id() -> str:
        """One id for a call and all its retries (the server logs it and echoes it)."""
        return uuid.uuid4().hex

    def _next_step(
        self, call: Call[Any], outcome: httpx.Response | Exception, attempt: int
    ) -> httpx.Response | float:
        """After attempt ``attempt`` (0: the first) of ``call`` ended in ``outcome`` (a
        response, or the transport error the send raised): the response to read, or the
        seconds to wait before the next attempt. Raises the connection error once the policy
        gives up (both clients loop over this). A response is anything with httpx's
        ``Response`` interface (httpx2's too), so it is told apart from the error only."""
        if not isinstance(outcome, Exception):
            wait = self.policy.after_response(outcome, call, attempt)
            if wait is None:
                return outcome
            self._log_retry(call, "503 unavailable", wait, attempt)
            return wait
        wait = self.policy.after_error(outcome, call, attempt)
        if wait is None:
            raise self._connection_error(outcome, call, attempt + 1) from outcome
        self._log_retry(call, str(outcome) or type(outcome).__name__, wait, attempt)
        return wait

    def _log_retry(self, call: Call[Any], why: str, wait: float, attempt: int) -> None:
        logger.info(
            "%s %s: %s; retry %d of %d in %.1f s",
            *(call.method, call.path, why, attempt + 1, self.policy.retries, wait),
        )

    def _connection_error(
        self, exc: Exception, call: Call[Any], attempts: int
    ) -> HARConnectionError:
        """The error for a call that failed to get an answer ``attempts`` times."""
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        timed_out = isinstance(exc, http_errors("TimeoutException"))
        if timed_out and not isinstance(exc, http_errors(*_NOT_SENT)):
            return HARTimeoutError(
                f"{call.method} {self.url}{call.path}: no answer within {self.timeout:g} s{tries}",
                url=self.url,
            )
        reason = str(exc) or type(exc).__name__
        return HARConnectionError(
            f"cannot reach the clip-har server at {self.url}{tries}: {reason}", url=self.url
        )
