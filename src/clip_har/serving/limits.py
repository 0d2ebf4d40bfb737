"""The request-body cap: pure ASGI middleware answering 413 ``payload_too_large``.

A ``Content-Length`` over the cap is refused before the app runs. A body without one
(chunked) is counted while the app reads it; once it passes the cap the app's read fails
and the answer is the same 413, whatever the app was about to say.
"""

from __future__ import annotations

import json
import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clip_har.errors import PayloadTooLargeError
from clip_har.serving.errors import REQUEST_ID_HEADER, error_body

logger = logging.getLogger(__name__)

_DRAIN_FACTOR = 4
"""A refused body up to this many times the cap is read and discarded before the answer, so
the client (which is still sending) sees the 413 instead of a reset connection."""


class BodySizeLimitMiddleware:
    """Cap every HTTP request body at ``max_bytes`` (413 ``payload_too_large`` beyond)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = _content_length(headers.get(b"content-length"))
        if declared is not None and declared > self.max_bytes:
            # a client waiting for "100 Continue" has sent nothing yet: answer at once
            expects = headers.get(b"expect", b"").lower() == b"100-continue"
            drained = not expects and await self._drain(receive, declared)
            await self._refuse(scope, send, declared, keep_alive=drained)
            return

        received = 0
        passed_cap = False
        body_done = False  # the last body message came: reading on would wait for disconnect
        started = False

        async def capped_receive() -> Message:
            nonlocal received, passed_cap, body_done
            if passed_cap:
                raise PayloadTooLargeError
            message = await receive()
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    passed_cap = True
                    raise PayloadTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if passed_cap and not started:
                return  # the app's own answer to its failed read is replaced by the 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except PayloadTooLargeError:
            if started:
                raise
        if passed_cap and not started:
            drained = body_done or await self._drain(receive, None)
            await self._refuse(scope, send, None, keep_alive=drained)

    async def _drain(self, receive: Receive, declared: int | None) -> bool:
        """Read and discard the rest of a refused body, up to a bound; whether it all came."""
        budget = self.max_bytes * _DRAIN_FACTOR
        if declared is not None and declared > budget:
            return False
        while budget > 0:
            message = await receive()
            if message["type"] != "http.request":
                return False
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return False

    async def _refuse(
        self, scope: Scope, send: Send, declared: int | None, *, keep_alive: bool
    ) -> None:
        """Send the 413 (the connection closes unless the whole body was read)."""
        # RequestIdMiddleware (outside this one) has set the id; a new one otherwise
        rid = str(scope.get("state", {}).get("request_id", "")) or uuid.uuid4().hex
        size = f"{declared} bytes" if declared is not None else "the body"
        message = f"request too large: {size} is over the limit of {self.max_bytes} bytes"
        logger.info("request %s refused: %s", rid, message)
        body = json.dumps(error_body(scope.get("path", ""), "payload_too_large", message, rid))
        encoded = body.encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(encoded)).encode()),
            (REQUEST_ID_HEADER.lower().encode(), rid.encode()),
        ]
        if not keep_alive:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": encoded})


def _content_length(value: bytes | None) -> int | None:
    """The declared body size (``None``: absent or not a number; the server rejects those)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
