"""CLIP HAR: human action recognition in images with CLIP."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clip-har")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
