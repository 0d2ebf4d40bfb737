"""Every error the project raises on purpose: one family under :class:`ClipHarError`.

The CLI turns any ``ClipHarError`` into its message and a non-zero exit; the service
into an HTTP 4xx with a JSON body.
"""

from __future__ import annotations

from enum import Enum


class ClipHarError(Exception):
    """Base class: every error the CLI turns into a message and a non-zero exit."""


class ModelUnavailableError(ClipHarError):
    """Model weights are neither cached locally nor downloadable."""


class BundleError(ClipHarError):
    """A bundle directory is missing, malformed or inconsistent."""


class ConfigError(ClipHarError):
    """A settings file, class list or prompt set is invalid."""


class ImageProblem(str, Enum):
    """Why an image cannot be used: the reason codes of validation, predict and the API."""

    MISSING_FILE = "missing_file"
    UNREADABLE = "unreadable"
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT_DATA = "corrupt_data"
    TOO_SMALL = "too_small"
    TOO_LARGE = "too_large"


class ImageLoadError(ClipHarError, ValueError):
    """An image cannot be used: ``code`` classifies it, ``reason`` says why in words."""

    def __init__(self, code: ImageProblem, reason: str, source: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"cannot load image {where}{reason}")
