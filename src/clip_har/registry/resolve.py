"""``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` wherever a bundle folder is accepted.

A registered version is an MLflow pyfunc model whose artifact ``bundle``
(:data:`~clip_har.registry.store.BUNDLE_ARTIFACT`) holds the bundle folder. It is
downloaded once into ``CACHE/registry/<store>/<NAME>/<VERSION>/`` (``<store>``: the first
12 hex digits of the sha256 of the tracking URI, so two stores never share an entry),
verified like any bundle, and published atomically. An alias is resolved to its version on
every call, since aliases move; a version, once cached, is reused without downloading as
long as every file still matches the sha256 its manifest records (a damaged copy is
downloaded again).

:func:`resolve_registered` also returns the format the version serves (its
:data:`~clip_har.registry.store.TAG_FORMAT` tag), so that ``predict`` and ``evaluate`` on
``models:/`` give the probabilities ``mlflow models serve`` gives.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clip_har.errors import BundleError, ModelRegistryError
from clip_har.inference.formats import REFERENCE_FORMAT
from clip_har.io import file_lock, replace_directory, staging_directory
from clip_har.models.bundle import open_bundle, verify_bundle
from clip_har.registry.store import (
    BUNDLE_ARTIFACT,
    TAG_FORMAT,
    ModelRef,
    existing_registry_client,
    get_version,
    is_model_uri,
    parse_ref,
    tracking_uri,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CACHE_FOLDER = "registry"  # under the clip-har cache root
EVALUATION_SUFFIX = ".evaluation"  # a version's registered evaluation: <VERSION>.evaluation
_MLMODEL = "MLmodel"
_PYFUNC = "python_function"


@dataclass(frozen=True)
class ResolvedBundle:
    """A bundle folder, and for a registered version the format its pyfunc model serves
    (``None`` for a plain path, or a version registered without the format tag)."""

    path: Path
    served_format: str | None = None
    evaluation: Path | None = None  # the registered evaluation (``with_evaluation``)

    def format_for(self, requested: str | None) -> str:
        """The format to run: ``requested`` (an explicit ``--format``) when given, else the
        one the registered version serves, else torch (:data:`REFERENCE_FORMAT`)."""
        chosen = requested or self.served_format or REFERENCE_FORMAT
        log.info("running %s in format %s", self.path, chosen)
        return chosen

    def format_note(self, chosen: str) -> str | None:
        """For a person: which format runs and why (``None`` for a plain bundle path)."""
        if self.served_format is None:
            return None
        if chosen == self.served_format:
            return f"format {chosen}, the one this registered version serves"
        return f"format {chosen} (--format); this registered version serves {self.served_format}"


def resolve_bundle(reference: str | Path, *, cache_dir: Path) -> Path:
    """The bundle folder ``reference`` names: a path as given, or the verified local copy
    of the registered version a ``models:/`` reference names (downloaded on first use).
    Raises as :func:`resolve_registered` does."""
    return resolve_registered(reference, cache_dir=cache_dir).path


def resolve_registered(
    reference: str | Path, *, cache_dir: Path, with_evaluation: bool = False
) -> ResolvedBundle:
    """The bundle folder ``reference`` names and, for a ``models:/`` reference, the format
    the registered version serves; ``with_evaluation``: also the evaluation registered
    with that version, cached beside it (:func:`registered_evaluation`).

    Raises :class:`ModelRegistryError` for an unknown model, version or alias, an
    unreachable store, a version that is not a clip-har pyfunc model, or a download whose
    files fail :func:`~clip_har.models.bundle.verify_bundle` (nothing is cached then)."""
    if isinstance(reference, Path) or not is_model_uri(reference):
        return ResolvedBundle(Path(reference))
    ref = parse_ref(reference)
    uri = tracking_uri()
    try:
        client = existing_registry_client(uri)
        found = get_version(client, ref)
    except ModelRegistryError as exc:  # name the reference: a command may take several
        raise ModelRegistryError(f"{reference}: {exc}") from None
    version = int(found.version)
    served = (found.tags or {}).get(TAG_FORMAT) or None
    target = cache_path(cache_dir, uri, ref.name, version)
    if not _usable(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(target.parent):  # one download per version at a time; others reuse it
            if not _usable(target, warn=False):  # unless another process just fetched it
                _download(client, uri, ModelRef(ref.name, version), target)
    else:
        log.info("models:/%s is version %d, cached in %s", ref, version, target)
    evaluation = registered_evaluation(client, found, target) if with_evaluation else None
    return ResolvedBundle(target, served, evaluation)


def registered_evaluation(client: MlflowClient, version: ModelVersion, bundle: Path) -> Path | None:
    """The evaluation registered with ``version`` (``registry register --evaluation``),
    cached in ``<bundle>.evaluation`` beside its cached ``bundle`` and downloaded on first
    use; None when it was registered without one, or when it cannot be fetched (a
    warning: the model itself is sound)."""
    from clip_har.registry.lineage import evaluation_artifact

    artifact = evaluation_artifact(version)
    if artifact is None or not version.run_id:
        return None
    target = bundle.with_name(f"{bundle.name}{EVALUATION_SUFFIX}")
    with file_lock(bundle.parent):
        if not target.is_dir():  # published whole (replace_directory) or not at all
            try:
                with staging_directory(target) as staging:
                    path = client.download_artifacts(version.run_id, artifact, str(staging))
                    replace_directory(path, target)
            except Exception as exc:  # mlflow raises many types: a lost run, the server
                log.warning(
                    "cannot fetch the evaluation of %s/%s (run %s); going on without it: %s",
                    version.name,
                    version.version,
                    version.run_id,
                    _first_line(exc),
                )
                return None
    return target


def cache_path(cache_dir: Path, uri: str, name: str, version: int) -> Path:
    """Where version ``version`` of ``name`` from the store at ``uri`` is cached."""
    store = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return cache_dir / CACHE_FOLDER / store / name / str(version)


def _usable(target: Path, *, warn: bool = True) -> bool:
    """Whether the cached copy at ``target`` is sound: it opens as a bundle and every file
    matches the sha256 its manifest records (:func:`verify_bundle`). A damaged copy (a file
    deleted, changed in place or a manifest broken after it was cached) is not used: it is
    downloaded again and replaced."""
    if not target.is_dir():
        return False
    try:
        open_bundle(target)
        problems = [f"{v.file}: {v.problem}" for v in verify_bundle(target) if not v.ok]
    except BundleError as exc:
        problems = [str(exc)]
    if problems and warn:
        log.warning(
            "the cached copy %s is damaged (%s); downloading it again", target, "; ".join(problems)
        )
    return not problems


def _download(client: MlflowClient, uri: str, ref: ModelRef, target: Path) -> None:
    """Download the bundle artifact of ``ref`` (a version) beside ``target``, verify every
    file, and only then publish it at ``target``."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    source = client.get_model_version_download_uri(ref.name, str(ref.version)).rstrip("/")
    with staging_directory(target) as staging:
        holder = staging.parent  # unique to this call; deleted with everything in it
        try:
            mlmodel = download_artifacts(
                artifact_uri=f"{source}/{_MLMODEL}", dst_path=str(holder), tracking_uri=uri
            )
            relative = _bundle_path(Path(mlmodel), ref)
            downloaded = Path(
                download_artifacts(
                    artifact_uri=f"{source}/{relative}",
                    dst_path=str(holder / "download"),
                    tracking_uri=uri,
                )
            )
        except (MlflowException, OSError) as exc:
            raise ModelRegistryError(
                f"could not download models:/{ref} from {uri}: {_first_line(exc)}"
            ) from None
        _verify(downloaded, ref, uri)
        replace_directory(downloaded, target)
    log.info("downloaded models:/%s from %s into %s", ref, uri, target)


def _bundle_path(mlmodel: Path, ref: ModelRef) -> str:
    """The bundle folder's path inside the model, as its ``MLmodel`` file records it."""
    from mlflow.models import Model

    try:
        flavors = Model.load(str(mlmodel)).flavors
        path = flavors[_PYFUNC]["artifacts"][BUNDLE_ARTIFACT]["path"]
    except Exception as exc:  # a missing key, a wrong type, YAML that does not parse
        raise ModelRegistryError(
            f"models:/{ref} is not a clip-har model: its {_MLMODEL} names no "
            f"'{BUNDLE_ARTIFACT}' artifact of the {_PYFUNC} flavour ({exc!r})"
        ) from None
    if (
        not isinstance(path, str)
        or not path
        or Path(path).is_absolute()
        or ".." in Path(path).parts
    ):
        raise ModelRegistryError(
            f"models:/{ref}: its {_MLMODEL} gives the bundle an unusable path {path!r}"
        )
    return path


def _verify(folder: Path, ref: ModelRef, uri: str) -> None:
    """Refuse a downloaded bundle with any unsound file, naming each."""
    if not folder.is_dir():
        raise ModelRegistryError(f"models:/{ref} from {uri}: the bundle artifact is not a folder")
    problems = [f"{v.file}: {v.problem}" for v in verify_bundle(folder) if not v.ok]
    if problems:
        raise ModelRegistryError(
            f"models:/{ref} downloaded from {uri} is damaged, so it was not cached: "
            + "; ".join(problems)
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
