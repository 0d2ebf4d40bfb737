"""The installed package version (ground layer, so every layer can record it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clip-har")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"
