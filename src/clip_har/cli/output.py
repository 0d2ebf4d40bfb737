"""Render prediction results as a table, JSON or CSV, to the terminal or a file."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from clip_har.cli.tables import PathCell
from clip_har.errors import ClipHarError
from clip_har.inference.predictor import FileResult
from clip_har.io import write_text_atomic


class Rendering(str, Enum):
    """How ``predict`` prints its results on stdout (``--print``)."""

    table = "table"
    json = "json"
    csv = "csv"


CSV_COLUMNS = ("path", "label", "score", "top_k", "error", "error_code")


def result_row(result: FileResult) -> dict[str, Any]:
    """A flat record: failures keep their row, with an empty label, the reason and its code."""
    prediction = result.prediction
    return {
        "path": str(result.path),
        "label": prediction.label if prediction else None,
        "score": round(prediction.score, 6) if prediction else None,
        "top_k": [{"label": label, "score": round(score, 6)} for label, score in prediction.top_k]
        if prediction
        else [],
        "error": result.error,
        "error_code": result.code.value if result.code else None,
    }


def to_json(results: Sequence[FileResult]) -> str:
    return json.dumps([result_row(r) for r in results], indent=2) + "\n"


def to_csv(results: Sequence[FileResult]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        row = result_row(result)
        row["top_k"] = ";".join(f"{item['label']}:{item['score']:.4f}" for item in row["top_k"])
        writer.writerow(row)
    return buffer.getvalue()


def to_table(results: Sequence[FileResult], title: str) -> Table:
    table = Table(title=title, show_lines=False)
    table.add_column("image")  # a path, broken after a "/" when it must be
    table.add_column("label", style="bold green", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("runners-up", style="dim", overflow="fold")
    for result in results:
        if result.prediction is None:
            reason = escape(result.error or "")
            table.add_row(PathCell(result.path), "[red]error[/red]", "", f"[red]{reason}[/red]")
            continue
        prediction = result.prediction
        others = ", ".join(f"{label} {score:.2f}" for label, score in prediction.top_k[1:])
        table.add_row(
            PathCell(result.path),
            escape(prediction.label),
            f"{prediction.score:.3f}",
            escape(others),
        )
    return table


RENDERERS = {".csv": to_csv, ".json": to_json}


def write_results(path: Path, results: Sequence[FileResult]) -> None:
    """Write results atomically, as CSV or JSON according to the file suffix."""
    render = RENDERERS.get(path.suffix.lower())
    if render is None:
        raise ClipHarError(f"cannot tell how to write {path}: use a .csv or .json name")
    write_text_atomic(path, render(results))
