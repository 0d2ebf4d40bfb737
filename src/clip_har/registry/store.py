"""The registry store (MLflow's, where tracking goes) and references to registered versions.

A reference names one registered version: ``NAME/VERSION`` or ``NAME@ALIAS``, with or
without the ``models:/`` scheme MLflow uses. Tags set on every version by ``register``
are named here once, so promotion, lineage and the ``models:/`` resolver read the same keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clip_har.errors import ModelRegistryError, UsageError
from clip_har.tracking.mlflow_backend import default_tracking_uri, probe_server

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

SCHEME = "models:/"
# MLflow accepts more; these names survive URIs, paths and shells unquoted
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}"
_ALIAS = r"[A-Za-z_][A-Za-z0-9_-]{0,254}"
_REFERENCE = re.compile(rf"^(?P<name>{_NAME})(?:/(?P<version>[1-9][0-9]*)|@(?P<alias>{_ALIAS}))$")

# tags ``register`` sets on every model version (``TAG_METRIC`` + metric name per metric)
TAG_PREFIX = "clip_har."
TAG_METRIC = f"{TAG_PREFIX}metric."
TAG_DATA_VERSION = f"{TAG_PREFIX}data_version"
TAG_GIT_COMMIT = f"{TAG_PREFIX}git_commit"
TAG_BACKBONE = f"{TAG_PREFIX}backbone_fingerprint"
TAG_FORMAT = f"{TAG_PREFIX}format"  # the format the pyfunc model serves
TAG_PARITY = f"{TAG_PREFIX}parity"  # JSON: {format: {passed, max_abs_diff, top1_agreement}}
TAG_TRAINING_RUN = f"{TAG_PREFIX}training_run_id"
TAG_PARENT_BUNDLE = f"{TAG_PREFIX}parent_bundle"  # where the registered bundle came from
TAG_HAS_EVALUATION = f"{TAG_PREFIX}evaluation"  # "true" when the run holds `evaluation/`
# the run artifact path of this version's own evaluation (versions registered before it
# was recorded have their evaluation at the run's `evaluation/`)
TAG_EVALUATION_PATH = f"{TAG_PREFIX}evaluation_path"
BUNDLE_ARTIFACT = "bundle"  # the pyfunc model's artifact key holding the bundle folder
NO_PROMOTION = "none"  # params registry.promote / register --promote: promote nothing


def check_name(name: str) -> str:
    """``name`` if it can be a registered model name, else a :class:`UsageError`."""
    if not re.fullmatch(_NAME, name):
        raise UsageError(
            f"invalid registered model name {name!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit)"
        )
    return name


def check_alias(alias: str) -> str:
    """``alias`` if it can be an MLflow alias (not a version number), else a UsageError."""
    if not re.fullmatch(_ALIAS, alias):
        raise UsageError(
            f"invalid alias {alias!r}: use letters, digits, '_' and '-', starting with a letter"
        )
    return alias


@dataclass(frozen=True)
class ModelRef:
    """One registered version: by number (``version``) or by alias (``alias``)."""

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        """The ``models:/`` URI MLflow understands."""
        return f"{SCHEME}{self}"

    def __str__(self) -> str:
        return (
            f"{self.name}/{self.version}"
            if self.version is not None
            else f"{self.name}@{self.alias}"
        )


def is_model_uri(text: str) -> bool:
    """Whether ``text`` is a ``models:/`` URI (rather than a bundle path)."""
    return text.startswith(SCHEME)


def parse_ref(text: str) -> ModelRef:
    """``[models:/]NAME/VERSION`` or ``[models:/]NAME@ALIAS``; anything else is a UsageError."""
    match = _REFERENCE.match(text.removeprefix(SCHEME))
    if match is None:
        raise UsageError(
            f"{text!r} is not a registered model reference: use models:/NAME/VERSION or "
            "models:/NAME@ALIAS (e.g. models:/clip-har@production)"
        )
    version = match["version"]
    return ModelRef(match["name"], int(version) if version else None, match["alias"])


def tracking_uri() -> str:
    """The store the registry uses: ``MLFLOW_TRACKING_URI``, else ``./mlruns.db``."""
    return default_tracking_uri(Path.cwd())


def store_is_missing(uri: str) -> bool:
    """Whether ``uri`` is a SQLite store whose file does not exist: it holds no model, and
    opening it would create an empty database where nobody asked for one."""
    if not uri.startswith("sqlite:///"):
        return False
    path = Path(uri.removeprefix("sqlite:///"))
    return not (path if path.is_absolute() else Path.cwd() / path).is_file()


def existing_registry_client(uri: str | None = None) -> MlflowClient:
    """:func:`registry_client` for reading: a SQLite store that does not exist holds no
    model, so it is a clear error instead of a new empty database where nobody asked."""
    uri = uri or tracking_uri()
    if store_is_missing(uri):
        raise ModelRegistryError(
            f"no model registry at {uri}: register a bundle first (`clip-har registry "
            "register`), or set MLFLOW_TRACKING_URI to the store that holds the model"
        )
    return registry_client(uri)


def registry_client(uri: str | None = None) -> MlflowClient:
    """An MLflow client on ``uri`` (default :func:`tracking_uri`); a server that does not
    answer fails within seconds, naming the fix."""
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            probe_server(uri)
        except Exception as exc:
            raise ModelRegistryError(str(exc)) from None
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def get_model(client: MlflowClient, name: str) -> RegisteredModel:
    """The registered model ``name``; a clear error when the store has none of that name."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise ModelRegistryError(
            f"no registered model '{name}' in {client.tracking_uri}: "
            "`clip-har registry list` shows the registered models"
        ) from None


def get_version(client: MlflowClient, ref: ModelRef) -> ModelVersion:
    """The model version ``ref`` names; a clear error for an unknown model, version or alias."""
    from mlflow.exceptions import MlflowException

    get_model(client, ref.name)
    try:
        if ref.alias is not None:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        return client.get_model_version(ref.name, str(ref.version))
    except MlflowException:
        what = f"alias @{ref.alias}" if ref.alias is not None else f"version {ref.version}"
        raise ModelRegistryError(
            f"registered model '{ref.name}' has no {what}: "
            f"`clip-har registry show {ref.name}` lists its versions and aliases"
        ) from None
