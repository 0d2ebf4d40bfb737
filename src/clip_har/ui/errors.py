"""Errors as messages a person can act on: the server's message and request id, and a hint
(401: set ``CLIP_HAR_API_KEY``; unreachable: is the API running at that URL?). Pages run
inside :func:`guard`, so no traceback ever reaches the browser (it goes to the log)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import streamlit as st

from clip_har.client.errors import (
    HARAPIError,
    HARConnectionError,
    HARInputError,
    HARResponseError,
    HARTimeoutError,
)
from clip_har.errors import ClipHarError

logger = logging.getLogger(__name__)

_STATUS_HINTS = {
    400: "Check the file: it must be a readable photo of at least 32 pixels a side.",
    401: "Set CLIP_HAR_API_KEY to a key the service accepts (its CLIP_HAR_SERVE_API_KEYS) "
    "and restart `clip-har ui`.",
    403: "This key may not use this route.",
    404: "The service does not know it: was the prediction made by another server or store?",
    413: "Use a smaller image, or fewer images at once.",
    415: "Use a JPEG, PNG, GIF, WebP, BMP or TIFF image.",
    422: "Check the values entered on this page.",
    503: "The service is busy or still loading its model: try again in a moment.",
    504: "The service was too busy to answer in time: try again, or with fewer images.",
}


@dataclass(frozen=True)
class FriendlyMessage:
    """What went wrong (``message``), what to do (``hint``), and the ``request_id`` and
    ``code`` to quote."""

    message: str
    hint: str | None = None
    request_id: str | None = None
    code: str | None = None

    def markdown(self) -> str:
        """The message, hint and request id as Markdown lines."""
        lines = [f"**{self.message}**"]
        if self.hint:
            lines.append(self.hint)
        details = [f"code `{self.code}`"] if self.code else []
        if self.request_id:
            details.append(f"request id `{self.request_id}`")
        if details:
            lines.append(" · ".join(details))
        return "\n\n".join(lines)


def explain(exc: BaseException, where: str) -> FriendlyMessage:
    """``exc`` in words; ``where`` names the service (a URL, or the in-process bundle)."""
    if isinstance(exc, HARAPIError):
        hint = _STATUS_HINTS.get(exc.status)
        if hint is None and exc.status >= 500:
            hint = "The service failed: its log has the details under this request id."
        return FriendlyMessage(
            f"The service answered {exc.status}: {exc.message}", hint, exc.request_id, exc.code
        )
    if isinstance(exc, HARTimeoutError):
        return FriendlyMessage(
            f"The service at {where} did not answer in time.",
            "It may be overloaded, or the image very large: try again.",
        )
    if isinstance(exc, HARConnectionError):
        return FriendlyMessage(
            f"Cannot reach the service at {where}.",
            "Is the API running at that URL? Start it with `clip-har serve --bundle DIR`, "
            "or run `clip-har ui --bundle DIR` to serve a bundle inside the UI.",
        )
    if isinstance(exc, HARResponseError):
        return FriendlyMessage(
            f"{where} did not answer like the clip-har API: {exc}",
            "Check --api-url: it should be the service's base URL.",
        )
    if isinstance(exc, HARInputError | ClipHarError):
        return FriendlyMessage(str(exc))
    return FriendlyMessage(
        f"Something went wrong: {type(exc).__name__}: {exc}",
        "This is a bug in the UI; the traceback is in the terminal running `clip-har ui`.",
    )


def show(error: FriendlyMessage) -> None:
    """Show ``error`` on the page."""
    st.error(error.markdown(), icon="⚠️")


@contextmanager
def guard(where: str) -> Iterator[None]:
    """Show any exception raised in the block as a :class:`FriendlyMessage` and stop there.
    Streamlit's own control flow (rerun, stop) derives from BaseException and passes."""
    try:
        yield
    except Exception as exc:
        expected = isinstance(exc, ClipHarError)
        logger.log(
            logging.INFO if expected else logging.ERROR,
            "page error: %s",
            exc,
            exc_info=not expected,
        )
        show(explain(exc, where))
