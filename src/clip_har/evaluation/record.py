"""Reading back a ``clip-har evaluate`` output folder: its scalar metrics, classes and source.

The registry tags versions with these metrics and the Hub card reports them; both read the
folder here, so they accept and refuse the same folders.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_har.errors import EvaluationError
from clip_har.evaluation import DETAILS_FILE, METRICS_FILE, PREDICTIONS_FILE
from clip_har.evaluation.provenance import EvaluationSource, training_strategy
from clip_har.io import read_text_input
from clip_har.models.bundle import Manifest

log = logging.getLogger(__name__)

OTHER_MODEL = "give the evaluation of this bundle: `clip-har evaluate --bundle BUNDLE`"


@dataclass(frozen=True)
class EvaluationRecord:
    """The scalar metrics of one evaluation folder, the classes it scored and where its
    data came from (``source`` is None for evaluations made before it was recorded)."""

    directory: Path
    metrics: dict[str, float]
    class_names: list[str]
    source: EvaluationSource | None

    @property
    def images(self) -> int | None:
        value = self.metrics.get("n_evaluated")
        return None if value is None else int(value)


def _json_object(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(read_text_input(path, "evaluation results", EvaluationError))
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise EvaluationError(f"{path}: must hold a JSON object")
    return payload


def check_evaluation_of(record: EvaluationRecord, manifest: Manifest) -> None:
    """Refuse an evaluation of another model than the bundle whose manifest is ``manifest``:
    other classes, or a recorded source with another backbone, strategy, head or encoder.
    A copy of the bundle (an export of it) is the same model. An evaluation that recorded
    less (made by an older clip-har) is accepted with a warning for what it cannot check."""
    where = record.directory
    if record.class_names != manifest.class_names:
        raise EvaluationError(
            f"{where}: evaluated a model with other classes than this bundle's ({OTHER_MODEL})"
        )
    source = record.source
    if source is None:
        log.warning(
            "%s records no source (an older clip-har made it): cannot check that it is an "
            "evaluation of this bundle",
            where,
        )
        return
    encoder = manifest.encoder.sha256 if manifest.encoder is not None else None
    checks = [
        ("backbone", source.backbone, manifest.backbone.spec),
        ("backbone fingerprint", source.backbone_fingerprint, manifest.backbone.fingerprint),
        ("training strategy", source.strategy, training_strategy(manifest)),
        ("head sha256", source.head_sha256, manifest.head.sha256),
        ("encoder sha256", source.encoder_sha256, encoder),
    ]
    for what, evaluated, bundle in checks:
        if evaluated is not None and bundle is not None and evaluated != bundle:
            raise EvaluationError(
                f"{where}: evaluated another model than this bundle ({what} {evaluated} "
                f"vs the bundle's {bundle}; it evaluated {source.bundle}): {OTHER_MODEL}"
            )
    if source.head_sha256 is None or manifest.head.sha256 is None:
        log.warning(
            "%s: cannot check that it evaluated this bundle's head weights (no head sha256 "
            "recorded); checked its classes, backbone and strategy",
            where,
        )


def read_evaluation(directory: Path, manifest: Manifest | None = None) -> EvaluationRecord:
    """The evaluation in ``directory``, checked: every file ``evaluate`` writes is there,
    ``metrics.json`` has an accuracy, and (when the bundle's ``manifest`` is given) it
    evaluated that bundle (``check_evaluation_of``)."""
    if not directory.is_dir():
        raise EvaluationError(f"{directory}: not a folder (give a `clip-har evaluate` output)")
    files = (METRICS_FILE, DETAILS_FILE, PREDICTIONS_FILE)
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise EvaluationError(
            f"{directory}: not a `clip-har evaluate` output (missing {', '.join(missing)})"
        )
    flat = _json_object(directory / METRICS_FILE)
    if not isinstance(flat.get("accuracy"), int | float):
        raise EvaluationError(
            f"{directory / METRICS_FILE}: no 'accuracy': not written by `clip-har evaluate`"
        )
    scored = _json_object(directory / DETAILS_FILE).get("class_names")
    if not isinstance(scored, list) or not all(isinstance(n, str) for n in scored) or not scored:
        raise EvaluationError(f"{directory / DETAILS_FILE}: has no 'class_names' list")
    metrics = {
        key: float(value)
        for key, value in flat.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    record = EvaluationRecord(
        directory, metrics, scored, EvaluationSource.from_json(flat.get("source"))
    )
    if manifest is not None:
        check_evaluation_of(record, manifest)
    return record
