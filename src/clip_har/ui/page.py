"""What every page script shares: running it against the backend, inside the error guard."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from clip_har.ui.backend import Backend, current_backend, parse_config
from clip_har.ui.errors import guard

IMAGE_TYPES = ["jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"]
"""What the upload widgets accept: the image types the service decodes."""


def run_page(render: Callable[[Backend], None]) -> None:
    """Render a page; an error becomes a friendly message, never a traceback."""
    with guard(parse_config().where):
        render(current_backend())


def digest(*parts: bytes | str) -> str:
    """A short fingerprint of an input, to tell a new upload from a rerun of the same one."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode() if isinstance(part, str) else part)
        hasher.update(b"\0")
    return hasher.hexdigest()[:16]
