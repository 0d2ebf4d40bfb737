"""The evaluation report: ``report.md`` (next to its PNGs) and a self-contained ``report.html``.

See docs/evaluation.md#reports.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clip_har.evaluation.provenance import EvaluationSource
from clip_har.io import REPORT_CSS, esc, html_table, plural, write_text_atomic

__all__ = ["HTML_FILE", "MARKDOWN_FILE", "render_html", "render_markdown", "write_report"]

logger = logging.getLogger(__name__)

MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
PLOT_TITLES = {  # the order of the plots in the report; keys are write_plots' keys
    "confusion_matrix": "Confusion matrix",
    "per_class_f1": "F1 per class",
    "roc_pr": "ROC and precision-recall curves",
    "reliability": "Calibration",
    "examples": "Examples",
}
PER_CLASS_HEADERS = ("class", "precision", "recall", "F1", "support", "ROC AUC", "AP")
EXTRA_CSS = (
    ".card small{display:block;color:#777;font-size:.8rem}"
    ".warn{background:#fff4e5;border-left:4px solid #e67e22;padding:.4rem .8rem;margin:.4rem 0}"
    "figure{margin:1rem 0}"
)
DASH = "—"


def _number(value: Any, digits: int = 3) -> str:
    """A dash for None/NaN, integers as they are, other numbers with ``digits`` decimals."""
    if value is None or isinstance(value, bool):
        return DASH if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    number = float(value)
    return f"{number:.{digits}f}" if math.isfinite(number) else DASH


def _interval(bounds: Any) -> str:
    """``[lo, hi]`` of a two-number interval, or an empty string when there is none."""
    if not bounds or len(bounds) != 2 or any(b is None for b in bounds):
        return ""
    return f"[{_number(bounds[0])}, {_number(bounds[1])}]"


def _summary(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(metric, value, 95% interval)`` rows of the headline numbers."""
    macro: Mapping[str, Any] = metrics.get("macro") or {}
    weighted: Mapping[str, Any] = metrics.get("weighted") or {}
    top_k: Mapping[str, Any] = metrics.get("top_k_accuracy") or {}
    rows = [
        ("images evaluated", _number(metrics.get("n_evaluated")), ""),
        ("accuracy", _number(metrics.get("accuracy")), _interval(metrics.get("accuracy_ci"))),
    ]
    rows += [
        (f"top-{k} accuracy", _number(top_k[k]), "")
        for k in sorted(top_k, key=int)
        if int(k) != 1  # top-1 is the accuracy
    ]
    rows += [
        ("balanced accuracy", _number(metrics.get("balanced_accuracy")), ""),
        ("macro F1", _number(macro.get("f1")), _interval(metrics.get("f1_macro_ci"))),
        ("macro precision", _number(macro.get("precision")), ""),
        ("macro recall", _number(macro.get("recall")), ""),
        ("weighted F1", _number(weighted.get("f1")), ""),
        ("weighted precision", _number(weighted.get("precision")), ""),
        ("weighted recall", _number(weighted.get("recall")), ""),
        ("ROC AUC (macro, one vs rest)", _number(metrics.get("roc_auc_macro")), ""),
        ("average precision (macro)", _number(metrics.get("average_precision_macro")), ""),
        ("expected calibration error", _number(metrics.get("ece")), ""),
    ]
    return rows


def _per_class(metrics: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One row of formatted scores per class; recall and F1 of a class without images are
    undefined, and so is its precision unless it was predicted."""
    predicted_absent = set(metrics.get("predicted_but_absent") or [])
    rows: list[tuple[str, ...]] = []
    for name, scores in (metrics.get("per_class") or {}).items():
        support = scores.get("support")
        empty = support == 0
        rows.append(
            (
                str(name),
                DASH
                if empty and name not in predicted_absent
                else _number(scores.get("precision")),
                DASH if empty else _number(scores.get("recall")),
                DASH if empty else _number(scores.get("f1")),
                _number(support),
                _number(scores.get("roc_auc")),
                _number(scores.get("average_precision")),
            )
        )
    return rows


def _warnings(
    metrics: Mapping[str, Any], meta: Mapping[str, Any], source: EvaluationSource | None
) -> list[str]:
    """Plain-text caveats a reader must know before trusting the numbers."""
    notes = [source.warning] if source is not None and source.warning else []
    absent = list(metrics.get("classes_without_support") or [])
    if absent:
        notes.append(
            f"No evaluation images of {plural(len(absent), 'class')}: "
            f"{', '.join(map(str, absent))}. "
            "Their recall and F1 are undefined; the macro averages count them as 0."
        )
    predicted = list(metrics.get("predicted_but_absent") or [])
    if predicted:
        notes.append(
            f"Predicted but absent from the labels: {', '.join(map(str, predicted))}. "
            "Every such prediction is wrong."
        )
    undefined = list(metrics.get("auc_undefined_for") or [])
    if undefined:
        notes.append(
            "ROC AUC and average precision are undefined (no positive or no negative images) "
            f"for: {', '.join(map(str, undefined))}; the macro values average the other classes."
        )
    unreadable = meta.get("unreadable")
    if unreadable:
        notes.append(f"{plural(unreadable, 'image')} could not be read and were not evaluated.")
    return notes


def _meta(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(field, value)`` rows of the run description, floats rounded to two decimals."""
    return [
        (str(key), _number(value, 2) if isinstance(value, float) else str(value))
        for key, value in meta.items()
        if value is not None
    ]


def _plots(plots: Mapping[str, str | os.PathLike[str]]) -> list[tuple[str, str, Path]]:
    """``(key, title, path)`` of the given plots, in report order."""
    return [(key, title, Path(plots[key])) for key, title in PLOT_TITLES.items() if key in plots]


# --------------------------------------------------------------------------- Markdown


def _md(value: Any) -> str:
    """``value`` as literal Markdown text: HTML entities, escaped table and link syntax."""
    text = html.escape(str(value), quote=False).replace("\r", " ").replace("\n", " ")
    for char in "\\`*_[]|":
        text = text.replace(char, "\\" + char)
    return text


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> str:
    """A GitHub-flavoured Markdown table; columns from ``numeric_from`` on align right."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(
    metrics: Mapping[str, Any],
    meta: Mapping[str, Any],
    plots: Mapping[str, str | os.PathLike[str]],
    *,
    base: str | os.PathLike[str] | None = None,
    source: EvaluationSource | None = None,
) -> str:
    """``report.md``: source, run, summary and per-class tables, warnings and the plots.

    Plots are linked relative to ``base`` (the folder the Markdown is written to); without
    it, by file name.
    """
    parts = ["# Evaluation report", ""]
    if source is not None:
        parts += [_md(source.title), ""]
    notes = _warnings(metrics, meta, source)
    if notes:
        parts += ["## Warnings", "", *(f"- **Warning:** {_md(note)}" for note in notes), ""]
    if source is not None:
        parts += ["## Source", "", _md_table(("field", "value"), source.rows(), 2), ""]
    parts += ["## Summary", "", _md_table(("metric", "value", "95% CI"), _summary(metrics), 1), ""]
    parts += ["## Per class", "", _md_table(PER_CLASS_HEADERS, _per_class(metrics), 1), ""]
    figures = _plots(plots)
    if figures:
        parts += ["## Plots", ""]
    for _, title, path in figures:
        link = Path(os.path.relpath(path, base)).as_posix() if base is not None else path.name
        parts += [f"### {title}", "", f"![{title}](<{link}>)", ""]
    run = _meta(meta)
    if run:
        parts += ["## Run", "", _md_table(("field", "value"), run, numeric_from=2), ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------- HTML


def _data_uri(path: Path) -> str:
    """The PNG at ``path`` as a base64 ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _card(label: str, value: str, interval: str = "") -> str:
    note = f"<small>95% CI {esc(interval)}</small>" if interval else ""
    return f"<div class='card'><b>{esc(value)}</b>{esc(label)}{note}</div>"


def render_html(
    metrics: Mapping[str, Any],
    meta: Mapping[str, Any],
    plots: Mapping[str, str | os.PathLike[str]],
    *,
    source: EvaluationSource | None = None,
) -> str:
    """A self-contained page: the source, summary cards with intervals, warnings, tables and
    every plot embedded as a data URI (no script, no external resource)."""
    macro: Mapping[str, Any] = metrics.get("macro") or {}
    top_k: Mapping[str, Any] = metrics.get("top_k_accuracy") or {}
    cards = [
        _card("accuracy", _number(metrics.get("accuracy")), _interval(metrics.get("accuracy_ci"))),
        _card("macro F1", _number(macro.get("f1")), _interval(metrics.get("f1_macro_ci"))),
        _card("balanced accuracy", _number(metrics.get("balanced_accuracy"))),
        *(
            _card(f"top-{k} accuracy", _number(top_k[k]))
            for k in sorted(top_k, key=int)
            if int(k) != 1
        ),
        _card("ROC AUC (macro)", _number(metrics.get("roc_auc_macro"))),
        _card("ECE", _number(metrics.get("ece"))),
        _card("images evaluated", _number(metrics.get("n_evaluated"))),
    ]
    subtitle = (
        f"{source.title} · backbone {source.backbone_label} · strategy {source.strategy}"
        if source is not None
        else " · ".join(
            f"{key} {value}" for key, value in _meta(meta) if key in ("bundle", "split")
        )
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Evaluation report</title><style>{REPORT_CSS}{EXTRA_CSS}</style></head><body>",
        "<h1>Evaluation report</h1>",
        f"<p class='none'>{esc(subtitle)}</p>" if subtitle else "",
        "<div class='cards'>",
        *cards,
        "</div>",
    ]
    notes = _warnings(metrics, meta, source)
    if notes:
        parts.append("<h2>Warnings</h2>")
        parts += [f"<p class='warn'>{esc(note)}</p>" for note in notes]
    if source is not None:
        parts.append("<h2>Source</h2>")
        parts.append(html_table(["field", "value"], [(esc(k), esc(v)) for k, v in source.rows()]))
    parts.append("<h2>Summary</h2>")
    parts.append(
        html_table(
            ["metric", "value", "95% CI"],
            [
                (esc(name), f"<span class='num'>{esc(value)}</span>", esc(interval))
                for name, value, interval in _summary(metrics)
            ],
        )
    )
    parts.append("<h2>Per class</h2>")
    parts.append(
        html_table(
            PER_CLASS_HEADERS,
            [
                (esc(row[0]), *(f"<span class='num'>{esc(cell)}</span>" for cell in row[1:]))
                for row in _per_class(metrics)
            ],
        )
    )
    for key, title, path in _plots(plots):
        parts.append(f"<h2>{esc(title)}</h2>")
        parts.append(
            f"<figure><img id='{esc(key.replace('_', '-'))}' alt='{esc(title)}' "
            f"src='{_data_uri(path)}'></figure>"
        )
    run = _meta(meta)
    if run:
        parts.append("<h2>Run</h2>")
        parts.append(html_table(["field", "value"], [(esc(k), esc(v)) for k, v in run]))
    parts.append("</body></html>\n")
    return "\n".join(part for part in parts if part)


# --------------------------------------------------------------------------- files


def write_report(
    metrics: Mapping[str, Any],
    meta: Mapping[str, Any],
    plots: Mapping[str, str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    source: EvaluationSource | None = None,
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir`` (atomically); their paths.
    ``source`` (the model and data evaluated) heads both, with its warnings."""
    folder = Path(out_dir)
    markdown = write_text_atomic(
        folder / MARKDOWN_FILE, render_markdown(metrics, meta, plots, base=folder, source=source)
    )
    page = write_text_atomic(folder / HTML_FILE, render_html(metrics, meta, plots, source=source))
    logger.info("wrote %s and %s", markdown, page)
    return markdown, page
