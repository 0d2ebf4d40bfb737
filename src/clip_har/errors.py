"""Exceptions with messages written for the person at the terminal."""


class ClipHarError(Exception):
    """Base class: every error the CLI turns into a message and a non-zero exit."""


class ModelUnavailableError(ClipHarError):
    """Model weights are neither cached locally nor downloadable."""


class BundleError(ClipHarError):
    """A bundle directory is missing, malformed or inconsistent."""


class ConfigError(ClipHarError):
    """A settings file, class list or prompt set is invalid."""
