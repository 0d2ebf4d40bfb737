"""``clip-har registry register``: a bundle becomes an MLflow pyfunc model and a registered
model version, linked to the run that produced it and tagged with its lineage.

See docs/registry.md#registering-a-bundle.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from clip_har.errors import ImageLoadError
from clip_har.evaluation import PREDICTIONS_FILE
from clip_har.evaluation.record import read_evaluation
from clip_har.imaging import load_image
from clip_har.imaging.loading import DEFAULT_MIN_SIDE
from clip_har.inference.formats import REFERENCE_FORMAT, best_served_format
from clip_har.models.bundle import Bundle, Manifest, open_verified_bundle
from clip_har.registry.store import (
    BUNDLE_ARTIFACT,
    TAG_BACKBONE,
    TAG_DATA_VERSION,
    TAG_EVALUATION_PATH,
    TAG_FORMAT,
    TAG_GIT_COMMIT,
    TAG_HAS_EVALUATION,
    TAG_METRIC,
    TAG_PARENT_BUNDLE,
    TAG_PARITY,
    TAG_TRAINING_RUN,
    check_name,
)
from clip_har.version import __version__

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.models.model import ModelInfo
    from mlflow.models.signature import ModelSignature
    from PIL import Image

    from clip_har.tracking.mlflow_backend import MLflowTracker

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the pyfunc model's name inside its run
# where an `evaluate` output folder goes in the run: EVALUATION_ARTIFACT/<logged model id>,
# one per version (TAG_EVALUATION_PATH); older versions have it at EVALUATION_ARTIFACT
EVALUATION_ARTIFACT = "evaluation"
# what the pyfunc model serves, best first: the fastest export that passed its parity gate
UNTRACKED = "untracked"  # TAG_TRAINING_RUN of a bundle no tracked run produced
EXAMPLE_SIDE = 96  # the input example's longest side (px): small, so the model stays small


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version ``register_bundle`` created, and the tags it set on it."""

    name: str
    version: int
    run_id: str
    format: str
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def check_bundle(directory: Path) -> Bundle:
    """The bundle at ``directory`` with every file sound; a damaged one is refused,
    naming the bad files."""
    return open_verified_bundle(directory, "refusing to register a damaged bundle")


def version_tags(
    bundle: Bundle, model_format: str, evaluation_metrics: Mapping[str, float]
) -> dict[str, str]:
    """The lineage tags of a version made from ``bundle`` (unknown values are left out)."""
    manifest = bundle.manifest
    lineage = manifest.lineage
    parity = {
        name: {
            "passed": record.parity.passed,
            "max_abs_diff": record.parity.max_abs_diff,
            "top1_agreement": record.parity.top1_agreement,
        }
        for name, record in manifest.exports.items()
        if record.parity is not None
    }
    tags = {
        TAG_DATA_VERSION: lineage.data_version,
        TAG_GIT_COMMIT: lineage.git_commit,
        TAG_BACKBONE: manifest.backbone.fingerprint,
        TAG_FORMAT: model_format,
        TAG_PARITY: json.dumps(parity, separators=(",", ":"), sort_keys=True),
        TAG_PARENT_BUNDLE: f"{bundle.directory.absolute()} ({manifest.name})",
        TAG_TRAINING_RUN: lineage.run_id or UNTRACKED,
    }
    metrics = {**manifest.metrics, **evaluation_metrics}
    tags.update({f"{TAG_METRIC}{key}": repr(float(value)) for key, value in metrics.items()})
    return {key: value for key, value in tags.items() if value}


def signature() -> ModelSignature:
    """Input: ``image`` (base64) or ``path``, both optional strings; output: label,
    confidence and the probabilities of every class."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    from clip_har.registry.pyfunc import IMAGE_COLUMN, PATH_COLUMN

    inputs = Schema(
        [
            ColSpec("string", IMAGE_COLUMN, required=False),
            ColSpec("string", PATH_COLUMN, required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "label"),
            ColSpec("double", "confidence"),
            ColSpec(Array("double"), "probabilities"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def _example_image(evaluation: Path | None) -> Image.Image:
    """A real photo of the evaluation when one is readable, else a generated one."""
    from PIL import Image

    if evaluation is not None:
        try:
            paths = pd.read_csv(evaluation / PREDICTIONS_FILE, usecols=["path"])["path"]
        except (ValueError, OSError):
            paths = pd.Series(dtype=str)
        for path in paths.dropna().head(20):
            try:
                image = load_image(Path(str(path)))
            except ImageLoadError:
                continue
            image = image.convert("RGB")
            image.thumbnail((EXAMPLE_SIDE, EXAMPLE_SIDE))
            if min(image.size) >= DEFAULT_MIN_SIDE:
                return image
    side = max(EXAMPLE_SIDE, DEFAULT_MIN_SIDE)
    ramp = bytes(range(0, 256, 256 // side or 1))[:side]
    gradient = Image.frombytes("L", (side, 1), ramp).resize((side, side))
    return Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90), gradient))


def input_example(evaluation: Path | None) -> pd.DataFrame:
    """One row (MLflow runs the model on it when logging): a small PNG, base64."""
    from clip_har.registry.pyfunc import IMAGE_COLUMN

    buffer = io.BytesIO()
    _example_image(evaluation).save(buffer, format="PNG")
    return pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(buffer.getvalue()).decode("ascii")]})


# MLflow's warning that a python_model object is pickled: clip-har's BundleModel is a
# small class with no state (the bundle travels as an artifact), so it is only noise
_CLOUDPICKLE_WARNING = "Passing a Python object as `python_model`"


def _not_cloudpickle_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_CLOUDPICKLE_WARNING)


@contextmanager
def _quiet_cloudpickle_warning() -> Iterator[None]:
    """MLflow's CloudPickle warning (logger ``mlflow.pyfunc``) dropped for the duration."""
    logger = logging.getLogger("mlflow.pyfunc")
    logger.addFilter(_not_cloudpickle_warning)
    try:
        yield
    finally:
        logger.removeFilter(_not_cloudpickle_warning)


@contextmanager
def _store(uri: str) -> Iterator[None]:
    """MLflow's fluent API (start_run, log_model, and the registry's lookup of a logged
    model) aimed at ``uri`` for the duration; an unset tracking URI is unset again after."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        yield


def _training_run(client: MlflowClient, run_id: str | None) -> Any:
    """The training run ``run_id`` when this store holds it (and it is not deleted)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.lifecycle_stage == "active" else None


def _summary(manifest: Manifest, model_format: str, metrics: Mapping[str, float]) -> str:
    """The version's one-line description."""
    shown = ", ".join(
        f"{key} {metrics[key]:.4f}"
        for key in ("accuracy", "f1_macro", "val_accuracy", "zero_shot_val_accuracy")
        if key in metrics
    )
    strategy = manifest.lineage.strategy or manifest.head.type
    return (
        f"{manifest.name}: {strategy} ({manifest.head.type} head) on {manifest.backbone.spec}, "
        f"{len(manifest.class_names)} classes, serves {model_format}"
        + (f"; {shown}" if shown else "")
    )


def evaluation_path(model_id: str) -> str:
    """Where the evaluation of the logged model ``model_id`` goes in its run."""
    return f"{EVALUATION_ARTIFACT}/{model_id}"


def register_bundle(
    bundle_dir: Path,
    name: str,
    *,
    client: MlflowClient,
    evaluation: Path | None = None,
    experiment: str = "clip-har",
) -> RegisteredVersion:
    """Log ``bundle_dir`` as a pyfunc model and register it as a new version of ``name``.

    The model goes into the bundle's training run when this store holds it (its status is
    restored afterwards), else into a new run ``register-NAME`` of ``experiment``.
    ``evaluation`` (an ``evaluate`` output folder) is logged with it, and its metrics tag
    the version."""
    from mlflow.exceptions import MlflowException

    from clip_har.tracking.mlflow_backend import MLflowTracker

    check_name(name)
    bundle = check_bundle(Path(bundle_dir))
    manifest = bundle.manifest
    evaluation_metrics = (
        read_evaluation(evaluation, manifest).metrics if evaluation is not None else {}
    )
    model_format = best_served_format(bundle)
    if model_format == REFERENCE_FORMAT and not manifest.backbone.embedded:
        log.warning(
            "the torch engine loads backbone '%s' from the model cache wherever the model "
            "is served; export the bundle (onnx) to serve it self-contained",
            manifest.backbone.spec,
        )
    tags = version_tags(bundle, model_format, evaluation_metrics)
    if evaluation is not None:
        tags[TAG_HAS_EVALUATION] = "true"  # compare's paired test needs it
    uri = client.tracking_uri
    training = _training_run(client, manifest.lineage.run_id)
    tracker: MLflowTracker | None = None
    if training is not None:
        run_id = training.info.run_id
        log.info("logging the model into training run %s", run_id)
    else:
        tracker = MLflowTracker(experiment, tracking_uri=uri, root=Path.cwd())
        lineage = manifest.lineage.model_dump(mode="json", exclude_none=True)
        tracker.start(
            f"register-{name}",
            params={"bundle": {"name": manifest.name, "lineage": lineage}},
            tags={TAG_TRAINING_RUN: manifest.lineage.run_id or UNTRACKED},
        )
        run_id = str(tracker.run_id)
    with _store(uri):  # MLflow resolves the new version's models:/ source through it
        info = _log_model(client, run_id, bundle, model_format, evaluation, training, tracker)
        if evaluation is not None:
            tags[TAG_EVALUATION_PATH] = evaluation_path(info.model_id)
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        metrics = {**manifest.metrics, **evaluation_metrics}
        version = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run_id,
            tags=tags,
            description=_summary(manifest, model_format, metrics),
            model_id=info.model_id,
        )
    log.info("registered %s version %s from %s", name, version.version, bundle.directory)
    return RegisteredVersion(name, int(version.version), run_id, model_format, tags)


def _log_model(
    client: MlflowClient,
    run_id: str,
    bundle: Bundle,
    model_format: str,
    evaluation: Path | None,
    training: Any,
    tracker: MLflowTracker | None,
) -> ModelInfo:
    """Log the pyfunc model (and the evaluation, under ``evaluation_path`` of the logged
    model) into ``run_id``, then end the run as it was: a reopened training run gets its
    status and end time back."""
    import mlflow

    from clip_har.registry.pyfunc import FORMAT_KEY, BundleModel

    manifest = bundle.manifest
    try:
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            with _quiet_cloudpickle_warning():
                info: ModelInfo = mlflow.pyfunc.log_model(
                    name=MODEL_NAME,
                    python_model=BundleModel(),
                    artifacts={BUNDLE_ARTIFACT: str(bundle.directory)},
                    model_config={FORMAT_KEY: model_format},
                    signature=signature(),
                    input_example=input_example(evaluation),
                    pip_requirements=[f"clip-har=={__version__}"],
                    metadata={
                        "class_names": manifest.class_names,
                        "clip_har_version": __version__,
                    },
                )
            if evaluation is not None:  # per model: a later version never overwrites it
                where = evaluation_path(info.model_id)
                client.log_artifacts(run_id, str(evaluation), artifact_path=where)
                mlflow.set_tag(TAG_HAS_EVALUATION, "true")
            return info
    finally:
        if training is not None:  # start_run reopened it: put back how it ended
            client.set_terminated(
                run_id, status=training.info.status, end_time=training.info.end_time
            )
        elif tracker is not None:
            tracker.finish()
