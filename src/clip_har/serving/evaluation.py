"""The served model's evaluation: a ``clip-har evaluate`` output folder read at load time and
held with the model, so ``/v1/model`` and ``/v1/model/report`` always describe the model
that answers (a reload swaps both together). See docs/serving.md ("GET /v1/model").

The folder is read through :func:`clip_har.evaluation.record.read_evaluation` and checked
with :func:`~clip_har.evaluation.record.check_evaluation_of`: an evaluation of another
model is refused. No torch import here: the ONNX service stays torch-free.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_har.errors import EvaluationError
from clip_har.evaluation import DETAILS_FILE
from clip_har.evaluation.record import read_evaluation
from clip_har.io import read_text_input
from clip_har.models.bundle import Manifest

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"  # the self-contained report `evaluate` writes (evaluation.report)


@dataclass(frozen=True)
class ServedEvaluation:
    """An evaluation of the served model: its scalar metrics, the confusion matrix (rows the
    true class, columns the predicted one, both in ``class_names`` order), how many images
    it scored, where it came from, and its HTML report when the folder has one."""

    origin: str
    metrics: dict[str, float]
    class_names: list[str]
    confusion_matrix: list[list[int]]
    n_images: int
    data: str | None
    split: str | None
    format: str | None
    has_report: bool
    report_html: str | None = field(default=None, repr=False)


def _confusion(directory: Path, classes: int) -> list[list[int]]:
    """The count confusion matrix of ``DETAILS_FILE``, checked to be ``classes`` square."""
    path = directory / DETAILS_FILE
    try:
        details: Any = json.loads(read_text_input(path, "evaluation details", EvaluationError))
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{path}: not valid JSON ({exc})") from None
    matrix = details.get("confusion_matrix") if isinstance(details, dict) else None
    if (
        not isinstance(matrix, list)
        or len(matrix) != classes
        or not all(isinstance(row, list) and len(row) == classes for row in matrix)
        or not all(isinstance(v, int) and v >= 0 for row in matrix for v in row)
    ):
        raise EvaluationError(
            f"{path}: no {classes}x{classes} 'confusion_matrix' of counts: not written by "
            "`clip-har evaluate`"
        )
    return [list(row) for row in matrix]


def load_evaluation(directory: Path, manifest: Manifest, origin: str) -> ServedEvaluation:
    """The evaluation in ``directory`` of the bundle whose manifest is ``manifest``;
    raises :class:`EvaluationError` for a folder that is not an ``evaluate`` output, or
    one of another model. ``origin`` says where it came from (shown on /v1/model)."""
    record = read_evaluation(directory, manifest)
    matrix = _confusion(directory, len(record.class_names))
    counted = sum(map(sum, matrix))
    report = directory / REPORT_FILE
    html = report.read_text(encoding="utf-8", errors="replace") if report.is_file() else None
    if html is None:
        logger.warning("%s has no %s: /v1/model/report answers 404", directory, REPORT_FILE)
    source = record.source
    return ServedEvaluation(
        origin=origin,
        metrics=record.metrics,
        class_names=list(record.class_names),
        confusion_matrix=matrix,
        n_images=record.images if record.images is not None else counted,
        data=source.data if source else None,
        split=source.split if source else None,
        format=source.format if source else None,
        has_report=html is not None,
        report_html=html,
    )


def check_evaluation_option(source: str, evaluation: Path) -> None:
    """Before a command starts: refuse an ``--evaluation`` that is not an ``evaluate``
    output of the bundle folder ``source`` (one message naming the option). A models:/
    source is checked when its version loads (which fails the start as well)."""
    from clip_har.models.bundle import open_bundle
    from clip_har.registry.store import is_model_uri

    if is_model_uri(source):
        return
    try:
        load_evaluation(evaluation, open_bundle(Path(source)).manifest, str(evaluation))
    except EvaluationError as exc:
        raise EvaluationError(f"--evaluation: {exc}") from None
