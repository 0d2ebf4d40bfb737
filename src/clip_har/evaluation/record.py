"""Reading back a ``clip-har evaluate`` output folder: its scalar metrics, classes and source.

The registry tags versions with these metrics and the Hub card reports them; both read the
folder here, so they accept and refuse the same folders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_har.errors import EvaluationError
from clip_har.evaluation.provenance import EvaluationSource
from clip_har.evaluation.run import DETAILS_FILE, METRICS_FILE, PREDICTIONS_FILE
from clip_har.io import read_text_input


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


def read_evaluation(directory: Path, class_names: list[str] | None = None) -> EvaluationRecord:
    """The evaluation in ``directory``, checked: every file ``evaluate`` writes is there,
    ``metrics.json`` has an accuracy, and (when ``class_names`` is given) it scored a model
    with exactly those classes."""
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
    if class_names is not None and scored != class_names:
        raise EvaluationError(
            f"{directory}: evaluated a model with other classes than this bundle's "
            "(give the evaluation of this bundle)"
        )
    metrics = {
        key: float(value)
        for key, value in flat.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    return EvaluationRecord(
        directory, metrics, scored, EvaluationSource.from_json(flat.get("source"))
    )
