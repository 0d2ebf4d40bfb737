"""``clip-har evaluate compare``: evaluations of several models on the same images, side by
side, each against the first. See docs/evaluation.md#comparing-runs.
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clip_har.errors import ClipHarError, EvaluationError
from clip_har.evaluation import BOOTSTRAP_RESAMPLES, DETAILS_FILE, PREDICTIONS_FILE
from clip_har.evaluation.compare import compare_predictions
from clip_har.evaluation.metrics import EvalArrays
from clip_har.evaluation.provenance import NOT_RECORDED, EvaluationSource
from clip_har.io import (
    REPORT_CSS,
    esc,
    html_table,
    noun_form,
    plural,
    png_base64,
    read_text_input,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Evaluation:
    """One evaluation's per-image predictions, its class list and its source (None for an
    evaluation made before clip-har recorded it)."""

    name: str
    predictions: pd.DataFrame
    class_names: list[str]
    source: EvaluationSource | None = None


def load_evaluation(reference: str, download_to: Path) -> Evaluation:
    """An evaluation folder, or the ``evaluation`` artifacts of an MLflow run id."""
    folder = Path(reference)
    if not folder.is_dir() and RUN_ID.match(reference):
        folder = _download_run(reference, download_to)
    files = [folder / PREDICTIONS_FILE, folder / DETAILS_FILE]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise EvaluationError(
            f"{reference}: not an evaluation folder or MLflow run (missing {', '.join(missing)})"
        )
    class_names, source = _details(files[1])
    return Evaluation(reference, _predictions(files[0], class_names), class_names, source)


def _details(path: Path) -> tuple[list[str], EvaluationSource | None]:
    """The class list and the source of an evaluation's metrics_full.json."""
    try:
        details = json.loads(read_text_input(path, "evaluation details", EvaluationError))
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{path}: not valid JSON ({exc})") from None
    names = details.get("class_names") if isinstance(details, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise EvaluationError(f"{path}: has no 'class_names' list: not a clip-har evaluation")
    return names, EvaluationSource.from_json(details.get("source"))


def _predictions(path: Path, class_names: list[str]) -> pd.DataFrame:
    """An evaluation's predictions.csv, checked: the columns compare needs, and labels and
    predictions that are among ``class_names``."""
    text = {"label": "string", "predicted": "string", "sha256": "string", "path": "string"}
    try:
        csv = read_text_input(path, "predictions table", EvaluationError)
        predictions = pd.read_csv(io.StringIO(csv), dtype=text)
    except ValueError as exc:  # pandas' ParserError and EmptyDataError
        raise EvaluationError(f"{path}: not a readable CSV table ({exc})") from None
    missing = sorted({"path", "label", "predicted"} - set(predictions.columns))
    if missing:
        raise EvaluationError(
            f"{path}: lacks the {noun_form(len(missing), 'column')} {', '.join(missing)}"
        )
    known = set(class_names)
    for column in ("label", "predicted"):
        stray = sorted(set(predictions[column].dropna()) - known)
        if stray:
            raise EvaluationError(
                f"{path}: {column} {', '.join(map(repr, stray[:3]))} not among the classes of "
                f"its {DETAILS_FILE}"
            )
    return predictions


def _download_run(run_id: str, target: Path) -> Path:
    from mlflow import MlflowClient

    from clip_har.tracking.mlflow_backend import default_tracking_uri

    try:
        client = MlflowClient(default_tracking_uri(Path.cwd()))
        path = client.download_artifacts(run_id, "evaluation", str(target / run_id))
    except Exception as exc:  # mlflow raises many types: missing run, server down, no artifact
        raise ClipHarError(f"cannot fetch the evaluation of MLflow run {run_id}: {exc}") from None
    return Path(path)


def _keyed(predictions: pd.DataFrame) -> pd.DataFrame:
    """Evaluated rows keyed by image content (sha256), so evaluations made in different
    checkouts or machines pair up; byte-identical copies count once."""
    rows = predictions.dropna(subset=["predicted"])
    key = rows["sha256"].fillna(rows["path"]) if "sha256" in rows else rows["path"]
    return rows.assign(key=key).drop_duplicates("key").set_index("key")


def _paired(base: Evaluation, other: Evaluation) -> tuple[EvalArrays, EvalArrays, int]:
    """Both models' predictions on the images both could read, in the same order."""
    if base.class_names != other.class_names:
        raise ClipHarError(f"{other.name}: its classes differ from {base.name}'s")
    a, b = (_keyed(e.predictions) for e in (base, other))
    shared = a.index.intersection(b.index)
    if shared.empty:
        raise ClipHarError(f"{base.name} and {other.name} share no evaluated image")
    if not (a.loc[shared, "label"] == b.loc[shared, "label"]).all():
        raise ClipHarError(f"{base.name} and {other.name} disagree on true labels")
    index = {name: i for i, name in enumerate(base.class_names)}
    y_true = np.array([index[x] for x in a.loc[shared, "label"]], dtype=np.int64)

    def arrays(frame: pd.DataFrame) -> EvalArrays:
        predicted = np.array([index[x] for x in frame.loc[shared, "predicted"]])
        one_hot = np.eye(len(index))[predicted]  # the comparison needs only the top-1 choice
        return EvalArrays(y_true=y_true, probs=one_hot, class_names=base.class_names)

    return arrays(a), arrays(b), len(a) + len(b) - 2 * len(shared)


def compare_evaluations(
    references: list[str], output: Path, *, n_bootstrap: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """Compare every evaluation with the first; write ``compare.{json,md,html}`` + the plot."""
    if len(references) < 2:
        raise ClipHarError("compare needs at least two evaluations")
    output.mkdir(parents=True, exist_ok=True)
    evaluations = [load_evaluation(ref, output / "downloads") for ref in references]
    base = evaluations[0]
    rows = []
    data_warnings = []
    for other in evaluations[1:]:
        a, b, unmatched = _paired(base, other)
        result = compare_predictions(a, b, n_bootstrap=n_bootstrap, seed=seed)
        rows.append({"baseline": base.name, "model": other.name, "unpaired": unmatched, **result})
        data_warnings += _data_warning(base, other, result["n"])
    report = {
        "baseline": base.name,
        "sources": [
            {"name": e.name, "source": None if e.source is None else e.source.to_json()}
            for e in evaluations
        ],
        "warnings": list(
            dict.fromkeys(e.source.warning for e in evaluations if e.source and e.source.warning)
        )
        + data_warnings,
        "comparisons": rows,
    }
    write_json_atomic(output / "compare.json", report)
    plot = _delta_plot(rows, output / "compare_delta.png")
    write_text_atomic(output / "compare.md", _markdown(report))
    write_text_atomic(output / "compare.html", _html(report, plot))
    return report


def _data_warning(base: Evaluation, other: Evaluation, shared: int) -> list[str]:
    """The caveat when ``other`` was evaluated on different data than ``base`` (another
    manifest content or other rows): the comparison covers only the images both evaluated."""
    if base.source is None or other.source is None:
        return []
    differences = base.source.data_differences(other.source)
    if not differences:
        return []
    return [
        f"{other.name} was evaluated on different data than {base.name} "
        f"({'; '.join(differences)}): they are compared only on the "
        f"{plural(shared, 'image')} both evaluated"
    ]


SOURCE_HEADERS = ("evaluation", "backbone", "strategy", "data", "rows", "data sha256")


def source_rows(sources: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per evaluation of a comparison's ``sources``: the model and the data it came
    from ("not recorded" for an evaluation made before clip-har recorded them)."""
    rows = []
    for entry in sources:
        source = EvaluationSource.from_json(entry["source"])
        fields = dict(source.rows()) if source is not None else {}
        rows.append(
            (str(entry["name"]), *(fields.get(h, NOT_RECORDED) for h in SOURCE_HEADERS[1:]))
        )
    return rows


def _interval(ci: list[float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def table_rows(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """One row per comparison: model, accuracies, deltas with CIs, McNemar p."""
    return [
        (
            str(r["model"]),
            f"{r['accuracy']['a']:.4f} → {r['accuracy']['b']:.4f}",
            f"{r['accuracy']['delta']:+.4f} {_interval(r['accuracy']['delta_ci'])}",
            f"{r['f1_macro']['delta']:+.4f} {_interval(r['f1_macro']['delta_ci'])}",
            f"{r['p_value']:.4g} ({r['method']}, {r['b01']}/{r['b10']})",
            str(r["n"]),
        )
        for r in rows
    ]


HEADERS = ("model", "accuracy", "Δ accuracy [95% CI]", "Δ macro-F1 [95% CI]", "McNemar p", "n")


def _markdown_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# Comparison with {report['baseline']}", ""]
    for note in report["warnings"]:
        lines += [f"**Warning:** {note}", ""]
    lines += _markdown_table(HEADERS, table_rows(report["comparisons"]))
    lines += [
        "",
        "McNemar counts: baseline right & model wrong / baseline wrong & model right.",
        "",
    ]
    lines += ["## Sources", "", *_markdown_table(SOURCE_HEADERS, source_rows(report["sources"]))]
    lines.append("")
    lines.append("![deltas](compare_delta.png)")
    return "\n".join(lines) + "\n"


def _html(report: dict[str, Any], plot: str) -> str:
    cells = [tuple(esc(c) for c in row) for row in table_rows(report["comparisons"])]
    sources = [tuple(esc(c) for c in row) for row in source_rows(report["sources"])]
    warnings = "".join(f"<p><b>Warning:</b> {esc(note)}</p>" for note in report["warnings"])
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Comparison</title>"
        f"<style>{REPORT_CSS}</style></head><body>"
        f"<h1>Comparison with {esc(report['baseline'])}</h1>{warnings}"
        f"{html_table(list(HEADERS), cells)}"
        f"<h2>Sources</h2>{html_table(list(SOURCE_HEADERS), sources)}"
        f"<img alt='deltas' src='data:image/png;base64,{plot}'></body></html>\n"
    )


def _delta_plot(rows: list[dict[str, Any]], path: Path) -> str:
    """Bars of Δ accuracy and Δ macro-F1 with their CIs; returns the PNG as base64."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 1.2 + 0.6 * len(rows)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(rows))
    for offset, key, colour in ((0.2, "accuracy", "#4c72b0"), (-0.2, "f1_macro", "#dd8452")):
        deltas = np.array([r[key]["delta"] for r in rows])
        cis = [r[key]["delta_ci"] or [d, d] for r, d in zip(rows, deltas, strict=True)]
        errors = np.array([[d - lo, hi - d] for d, (lo, hi) in zip(deltas, cis, strict=True)]).T
        axes.barh(positions + offset, deltas, height=0.4, xerr=errors, color=colour, label=key)
    axes.axvline(0, color="#333", linewidth=1)
    axes.set_yticks(positions, [str(r["model"]) for r in rows])
    axes.set_xlabel(f"difference vs {rows[0]['baseline']} (95% bootstrap CI)")
    axes.legend(loc="best", frameon=False)
    figure.tight_layout()
    encoded = png_base64(figure)
    write_bytes_atomic(path, base64.b64decode(encoded))
    return encoded
