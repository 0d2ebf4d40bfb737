"""Every error the project raises on purpose: one family under :class:`ClipHarError`.

The CLI turns any ``ClipHarError`` into its message and a non-zero exit.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum


class ClipHarError(Exception):
    """Base class: every error the CLI turns into a message and a non-zero exit."""


class UsageError(ClipHarError):
    """The command line or call itself is wrong: options missing, conflicting or out of range
    (the CLI exits with its usage code)."""


# --------------------------------------------------------------------------- configuration


class ConfigError(ClipHarError):
    """A settings file, class list, prompt set or option is invalid.

    ``problems`` holds one line per invalid setting (``"predict.top_k: ..."``) when the
    error comes from validating the settings; it is empty otherwise.
    """

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


class RegistryError(ConfigError, ValueError):
    """A registry (formats, heads, strategies) has no entry of that name, or was given a name twice.

    Also a ``ValueError``: pydantic validators that look a name up report it as a field error.
    """


class PreprocessingConfigError(ConfigError, ValueError):
    """A preprocessing config (a model's ``preprocessor_config.json``) cannot be parsed.

    ``field`` names the offending key (``None`` when the whole file is unreadable);
    ``source`` is the file, once the loader that read it knows it (see :meth:`at`).
    """

    def __init__(self, field: str | None, reason: str, source: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}invalid preprocessing config: {what}{reason}")

    def at(self, source: object) -> PreprocessingConfigError:
        """The same error, naming the file it was read from."""
        return PreprocessingConfigError(self.field, self.reason, str(source))


# --------------------------------------------------------------------------- models and bundles


class ModelUnavailableError(ClipHarError):
    """Model weights are neither cached locally nor downloadable."""


class BundleError(ClipHarError):
    """A bundle directory is missing, malformed or inconsistent."""


class HeadShapeError(BundleError, ValueError):
    """Saved head tensors are missing or have the wrong shapes."""


class TensorRTError(ClipHarError):
    """A TensorRT engine could not be built, loaded or run."""


class TensorRTUnavailableError(TensorRTError):
    """This machine lacks what TensorRT needs: a CUDA GPU and the ``tensorrt`` package."""


# --------------------------------------------------------------------------- data


class DataError(ClipHarError):
    """Base of the data errors: sources, manifests, datasets, balancing, versions."""


class SourceError(DataError):
    """A data source cannot be recognised or read."""


class ManifestError(DataError):
    """A manifest file is missing or does not have the expected columns."""


class DatasetError(DataError):
    """A manifest cannot become a training dataset (labels, split)."""


class BalanceError(DataError):
    """Class weights or resampling cannot be computed from these labels and settings."""


class DataVersionError(DataError):
    """DVC is missing, failed, or the path is not under DVC control."""


class UnknownPolicyError(DataError, ValueError):
    """An augmentation policy name that is not one of ``choices``."""

    def __init__(self, policy: str, choices: Sequence[str]) -> None:
        self.policy = policy
        super().__init__(
            f"unknown augmentation policy {policy!r}; choose one of: {', '.join(choices)}"
        )


# --------------------------------------------------------------------------- runs


class TrainingError(ClipHarError):
    """Training cannot start or continue with these settings, data or checkpoint."""


class FeatureStoreError(TrainingError):
    """A manifest cannot be embedded (missing columns)."""


class DistributedError(TrainingError):
    """The distributed setup is missing or inconsistent (launcher, devices, wrapping)."""


class EvaluationError(ClipHarError):
    """Labels and predictions cannot be evaluated: empty, misshapen or inconsistent."""


class TrackingError(ClipHarError):
    """A tracking backend failed while tracking was strict (``--strict-tracking``)."""


# --------------------------------------------------------------------------- lifecycle


class ModelRegistryError(ClipHarError):
    """The MLflow model registry cannot do what was asked: unknown model, version or alias,
    an unreachable store, or a registered version that is not a clip-har bundle."""


class PromotionRefusedError(ModelRegistryError):
    """The promotion gate refused a candidate (its decision is in the promotion history)."""


class HubError(ClipHarError):
    """The Hugging Face Hub cannot be reached, refuses the token, or a repo is not a bundle."""


# --------------------------------------------------------------------------- images


class ImageProblem(str, Enum):
    """Why an image cannot be used: the reason codes of validation, predict and the API.

    ``NOT_A_FILE``, ``SYMLINK_LOOP`` and ``NO_IMAGES`` describe a named input (a path,
    folder or glob given to ``predict``) that yields no image file at all."""

    MISSING_FILE = "missing_file"
    UNREADABLE = "unreadable"
    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    CORRUPT_DATA = "corrupt_data"
    TOO_SMALL = "too_small"
    TOO_LARGE = "too_large"
    NOT_A_FILE = "not_a_file"
    SYMLINK_LOOP = "symlink_loop"
    NO_IMAGES = "no_images"


class BatchOutputError(ClipHarError):
    """A batch result file that cannot be read back, or shard outputs that do not merge."""


class ProfileError(ClipHarError):
    """A drift reference folder that cannot be used (missing, damaged, or of another schema)."""


class VideoError(ClipHarError):
    """A video source that cannot be opened or read, or an output that cannot be written."""


class ImageLoadError(ClipHarError, ValueError):
    """An image cannot be used: ``code`` classifies it, ``reason`` says why in words."""

    def __init__(self, code: ImageProblem, reason: str, source: str | None = None) -> None:
        self.code = code
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"cannot load image {where}{reason}")


# --------------------------------------------------------------------------- serving


class V2FormatError(ClipHarError, ValueError):
    """A request that does not follow the protocol; the message says what is wrong."""


class StoreError(ClipHarError):
    """The prediction store cannot be opened or written (the database refused)."""


class StoreClosedError(StoreError):
    """A write arrived after :meth:`PredictionStore.close`."""


class UnknownPredictionError(ClipHarError):
    """Feedback names a prediction id the store has never logged (the API answers 404)."""

    def __init__(self, prediction_id: str) -> None:
        super().__init__(f"no prediction with id {prediction_id!r} is logged")
        self.prediction_id = prediction_id


class InvalidFeedbackError(ClipHarError):
    """Feedback that contradicts itself or its prediction (the API answers 422)."""


class PayloadTooLargeError(ClipHarError):
    """Raised from ``receive`` once the request body passes the cap."""


class ApiError(ClipHarError):
    """An answer other than success: HTTP ``status``, a stable machine ``code`` and a message a
    person can act on; ``headers`` (e.g. ``Retry-After``) go on the response."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class QueueFullError(ClipHarError):
    """The queue holds ``max_queue`` items already (HTTP 503); retry after ``retry_after`` s."""

    def __init__(
        self, message: str = "the inference queue is full", *, retry_after: float = 1.0
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceededError(ClipHarError):
    """The item's deadline passed before its batch ran (HTTP 504); it was never computed."""


class BatcherClosedError(ClipHarError):
    """The batcher is draining or closed and takes no new work (HTTP 503)."""


class BatchInputError(ClipHarError, ValueError):
    """What was submitted cannot be queued: no items, or more than the queue can ever hold."""
