"""The data report: ``data_report.json`` (machine-readable) and ``data_report.html`` (for people).

See docs/data.md#the-data-report.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clip_har.data.duplicates import DEFAULT_MAX_DISTANCE, exact_groups, merged_groups, near_groups
from clip_har.data.reasons import REASONS
from clip_har.io import (
    REPORT_CSS,
    esc,
    html_table,
    json_safe,
    png_base64,
    write_json_atomic,
    write_text_atomic,
)

__all__ = ["HTML_FILE", "JSON_FILE", "build_report", "render_html", "write_report"]

JSON_FILE = "data_report.json"
HTML_FILE = "data_report.html"
HISTOGRAM_BINS = 20
_SETTING_NAMES = {
    "min_side": "minimum image side (px)",
    "max_pixels": "maximum image pixels",
    "near_distance": "near-duplicate distance (bits)",
}
# Narrow columns: reason codes stay whole, paths wrap after their separators (<wbr>), and
# only a single part too long for its line breaks anywhere.
_CSS = (
    "td{word-break:normal;overflow-wrap:break-word}"
    ".code{white-space:nowrap;font-family:ui-monospace,monospace}"
    ".path{font-family:ui-monospace,monospace}"
)


def _histogram(values: pd.Series) -> dict[str, list[float] | list[int]]:
    data = values.dropna().astype("int64").to_numpy()
    if data.size == 0:
        return {"bins": [], "counts": []}
    bins = min(HISTOGRAM_BINS, max(1, len(np.unique(data))))
    counts, edges = np.histogram(data, bins=bins)
    return {"bins": [round(float(e), 2) for e in edges], "counts": counts.astype(int).tolist()}


def _group_record(frame: pd.DataFrame, rows: Sequence[int]) -> dict[str, Any]:
    part = frame.iloc[list(rows)]
    return {
        "paths": [str(p) for p in part["path"]],
        "labels": [json_safe(v) for v in part["label"]],
        "sha256": [json_safe(v) for v in part["sha256"]],
        "phash": [json_safe(v) for v in part["phash"]],
    }


def build_report(
    clean: pd.DataFrame,
    rejected: pd.DataFrame,
    *,
    classes: Sequence[str] | None = None,
    near_distance: int = DEFAULT_MAX_DISTANCE,
    settings: dict[str, Any] | None = None,
    manifest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything ``data_report.json`` holds, computed from the clean manifest and rejections.

    ``manifest`` names the manifest that was validated (path, sha256, rows; see
    :func:`clip_har.data.manifest.manifest_info`); None when it is not a file.

    Duplicate statistics are over accepted rows only. ``near_duplicate_groups`` counts
    perceptual-hash groups holding at least two *different* files (byte-identical copies
    alone are exact duplicates); ``label_conflicts`` lists every exact-or-near group whose
    labels differ.
    """
    reasons = Counter(str(r) for r in rejected["reason"]) if len(rejected) else Counter()
    labelled = bool(clean["label"].notna().any())

    counts = Counter(str(v) for v in clean["label"].dropna())
    class_counts: dict[str, int] = {}
    for name in list(classes or []) + sorted(counts):
        class_counts.setdefault(name, counts.get(name, 0))
    present = [c for c in class_counts.values() if c > 0]
    imbalance = round(max(present) / min(present), 4) if present else None

    exact = exact_groups(clean)
    exact_records = []
    for rows in exact:
        record = _group_record(clean, rows)
        record["sha256"] = record["sha256"][0]
        record.pop("phash")
        exact_records.append(record)

    near_records = []
    for rows in near_groups(clean, near_distance):
        if clean["sha256"].iloc[rows].nunique(dropna=True) >= 2:
            near_records.append(_group_record(clean, rows))

    conflicts = []
    for rows in merged_groups(clean, near_distance):
        labels = {str(v) for v in clean["label"].iloc[rows].dropna()}
        if len(labels) >= 2:
            record = _group_record(clean, rows)
            distinct_files = clean["sha256"].iloc[rows].nunique(dropna=True)
            record["kind"] = "exact" if distinct_files == 1 else "near"
            record["distinct_labels"] = sorted(labels)
            conflicts.append(record)

    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "manifest": dict(manifest) if manifest is not None else None,
        "settings": dict(settings or {}),
        "total": len(clean) + len(rejected),
        "accepted": len(clean),
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "labelled": labelled,
        "classes": list(classes) if classes is not None else None,
        "class_counts": class_counts,
        "missing_classes": [name for name, n in class_counts.items() if n == 0],
        "imbalance_ratio": imbalance,
        "width_histogram": _histogram(clean["width"]),
        "height_histogram": _histogram(clean["height"]),
        "modes": dict(Counter(str(v) for v in clean["mode"].dropna()).most_common()),
        "formats": dict(Counter(str(v) for v in clean["format"].dropna()).most_common()),
        "exact_duplicate_groups": len(exact),
        "exact_duplicate_extra_copies": sum(len(rows) - 1 for rows in exact),
        "exact_duplicates": exact_records,
        "near_duplicate_groups": len(near_records),
        "near_duplicate_distance": near_distance,
        "near_duplicates": near_records,
        "label_conflicts": conflicts,
    }


# --------------------------------------------------------------------------- HTML


def _plots(report: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs: the class histogram and the width/height histograms."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plots: dict[str, str] = {}
    counts: dict[str, int] = report.get("class_counts") or {}
    if counts:
        figure = Figure(figsize=(7, max(2.0, 0.3 * len(counts) + 1)))
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        names = list(counts)[::-1]
        axes.barh(names, [counts[n] for n in names], color="#4c72b0")
        axes.set_xlabel("images")
        axes.set_title("Images per class")
        plots["classes"] = png_base64(figure)
    histograms = [(k, report.get(f"{k}_histogram") or {}) for k in ("width", "height")]
    if any(h.get("counts") for _, h in histograms):
        figure = Figure(figsize=(9, 3))
        FigureCanvasAgg(figure)
        for index, (name, hist) in enumerate(histograms, start=1):
            axes = figure.add_subplot(1, 2, index)
            edges, values = hist.get("bins") or [], hist.get("counts") or []
            if values:
                axes.stairs(values, edges, fill=True, color="#55a868")
            axes.set_xlabel(f"{name} (px)")
            axes.set_ylabel("images")
            axes.set_title(f"Image {name}")
        plots["sizes"] = png_base64(figure)
    return plots


def _lines(values: Iterable[str]) -> str:
    """Pre-rendered HTML pieces, one per line."""
    return "<br>".join(values)


def _path(value: Any) -> str:
    """An escaped path that wraps only after its separators (see :data:`_CSS`)."""
    text = esc(value)
    for separator in ("/", "\\"):
        text = text.replace(separator, separator + "<wbr>")
    return f"<span class='path'>{text}</span>"


def _code(value: Any) -> str:
    """A reason code, never broken across lines."""
    return f"<span class='code'>{esc(value)}</span>"


def _label(value: Any) -> str:
    """A row's label as shown beside its path: ``unlabelled`` for a missing one."""
    return esc(value) if value is not None else "<i>unlabelled</i>"


def _member(path: Any, label: Any, extra: str = "") -> str:
    """One member of a duplicate group: its path, [label] and an optional hash."""
    tail = f" <span class='code'>{esc(extra)}</span>" if extra else ""
    return f"{_path(path)} [{_label(label)}]{tail}"


def _header(report: dict[str, Any]) -> list[str]:
    """What the report describes (the manifest: path, sha256, rows) and its settings."""
    rows: list[tuple[str, str]] = []
    source: dict[str, Any] = report.get("manifest") or {}
    if source:
        rows.append(("manifest", _path(source.get("path"))))
        rows.append(("manifest sha256", _code(source.get("sha256"))))
        if source.get("rows") is not None:
            rows.append(("manifest rows", f"<span class='num'>{esc(source['rows'])}</span>"))
    for key, value in (report.get("settings") or {}).items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        rows.append((esc(_SETTING_NAMES.get(key, key)), esc(shown)))
    rows.append(("created", esc(report.get("created_at"))))
    described = (
        f"Validation of {_path(source.get('path'))}"
        if source
        else "Validation of a manifest that was not read from a file"
    )
    return [f"<p>{described}</p>", html_table(["manifest and settings", "value"], rows)]


def render_html(report: dict[str, Any], rejected: pd.DataFrame | None = None) -> str:
    """A self-contained HTML page for the report (and the rejection queue, when given)."""
    plots = _plots(report)
    cards = [
        ("accepted", report.get("accepted"), ""),
        ("rejected", report.get("rejected"), "bad" if report.get("rejected") else ""),
        ("exact duplicate groups", report.get("exact_duplicate_groups"), ""),
        ("extra exact copies", report.get("exact_duplicate_extra_copies"), ""),
        ("near-duplicate groups", report.get("near_duplicate_groups"), ""),
        (
            "label conflicts",
            len(report.get("label_conflicts") or []),
            "bad" if report.get("label_conflicts") else "",
        ),
        ("imbalance ratio", report.get("imbalance_ratio"), ""),
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Data report</title><style>{REPORT_CSS}{_CSS}</style></head><body>",
        "<h1>Data report</h1>",
        *_header(report),
        "<div class='cards'>",
        *(
            f"<div class='card {cls}'><b>{esc('—' if v is None else v)}</b>{esc(k)}</div>"
            for k, v, cls in cards
        ),
        "</div>",
    ]

    parts.append("<h2>Rejections by reason</h2>")
    by_reason: dict[str, int] = report.get("rejected_by_reason") or {}
    parts.append(
        html_table(
            ["reason", "meaning", "files"],
            [
                (_code(code), esc(REASONS.get(code, "")), f"<span class='num'>{n}</span>")
                for code, n in by_reason.items()
            ],
        )
    )
    if rejected is not None and len(rejected):
        parts.append("<h2>Rejected files</h2>")
        parts.append(
            html_table(
                ["path", "reason", "detail", "label"],
                [
                    (
                        _path(json_safe(row.get("path"))),
                        _code(json_safe(row.get("reason"))),
                        esc(json_safe(row.get("detail"))),
                        esc(json_safe(row.get("label"))),
                    )
                    for row in rejected.to_dict("records")
                ],
            )
        )

    parts.append("<h2>Classes</h2>")
    if not report.get("labelled"):
        parts.append("<p class='none'>Unlabelled manifest.</p>")
    if "classes" in plots:
        parts.append(f"<img alt='images per class' src='data:image/png;base64,{plots['classes']}'>")
    counts: dict[str, int] = report.get("class_counts") or {}
    parts.append(
        html_table(
            ["class", "images"],
            [(esc(k), f"<span class='num'>{v}</span>") for k, v in counts.items()],
        )
    )

    parts.append("<h2>Image sizes, modes and formats</h2>")
    if "sizes" in plots:
        parts.append(f"<img alt='size histograms' src='data:image/png;base64,{plots['sizes']}'>")
    for key in ("modes", "formats"):
        values: dict[str, int] = report.get(key) or {}
        parts.append(
            html_table([key[:-1], "images"], [(esc(k), str(v)) for k, v in values.items()])
        )

    parts.append("<h2>Label conflicts</h2>")
    parts.append(
        html_table(
            ["kind", "labels", "files"],
            [
                (
                    esc(c.get("kind")),
                    esc(", ".join(c.get("distinct_labels") or [])),
                    _lines(_member(p, lab) for p, lab in zip(c["paths"], c["labels"], strict=True)),
                )
                for c in report.get("label_conflicts") or []
            ],
        )
    )
    parts.append("<h2>Exact duplicate groups (same bytes)</h2>")
    parts.append(
        html_table(
            ["sha256", "copies", "files"],
            [
                (
                    _code(str(g.get("sha256"))[:16] + "…"),
                    str(len(g["paths"])),
                    _lines(_member(p, lab) for p, lab in zip(g["paths"], g["labels"], strict=True)),
                )
                for g in report.get("exact_duplicates") or []
            ],
        )
    )
    parts.append(
        f"<h2>Near-duplicate groups (perceptual hash within "
        f"{esc(report.get('near_duplicate_distance'))} bits)</h2>"
    )
    parts.append(
        html_table(
            ["files", "members"],
            [
                (
                    str(len(g["paths"])),
                    _lines(
                        _member(p, lab, h)
                        for p, lab, h in zip(g["paths"], g["labels"], g["phash"], strict=True)
                    ),
                )
                for g in report.get("near_duplicates") or []
            ],
        )
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- files


def write_report(
    report: dict[str, Any], directory: str | os.PathLike[str], rejected: pd.DataFrame | None = None
) -> tuple[Path, Path]:
    """Write ``data_report.json`` and ``data_report.html`` into ``directory`` (atomically)."""
    folder = Path(directory)
    json_path = write_json_atomic(folder / JSON_FILE, report)
    html_path = write_text_atomic(folder / HTML_FILE, render_html(report, rejected))
    return json_path, html_path
