"""``clip-har data balance DIR -o OUT``: under/oversample the training split to a target count.

Registered in :mod:`clip_har.cli.data` as ``app.command("balance")(balance_command)``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import console, err_console
from clip_har.data.balance import HTML_FILE, JSON_FILE, SCHEMES, parse_target, render_html, resample
from clip_har.data.manifest import read_manifest, write_manifest
from clip_har.errors import ClipHarError
from clip_har.io import write_json_atomic, write_text_atomic


def balance_command(
    directory: Path = typer.Argument(
        ..., help="Folder holding manifest.parquet (split), or the file."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the balanced manifest."),
    target: str = typer.Option(
        "median", "--target", help="Images per class: a number, or min / max / median."
    ),
    split: str = typer.Option("train", "--split", help="The split to balance; others are kept."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed for which rows are drawn."),
    scheme: str = typer.Option(
        "inverse", "--scheme", help=f"Class weights in the report: {', '.join(SCHEMES)}."
    ),
) -> None:
    """Balance one split by undersampling big classes and repeating rows of small ones.

    Writes manifest.parquet, balance_report.json and balance_report.html into OUT.
    Validation and test rows are never resampled.
    """
    goal = parse_target(target)
    if output.exists() and not output.is_dir():
        raise ClipHarError(f"--output {output} exists and is not a folder")
    result = resample(read_manifest(directory), goal, seed=seed, split=split, scheme=scheme)
    report = result.report

    write_manifest(result.manifest, output)
    write_json_atomic(output / JSON_FILE, report)
    write_text_atomic(output / HTML_FILE, render_html(report))

    where = report["split"] or "all rows"
    table = Table(title=escape(f"balance of {where} to {report['target']} per class (seed {seed})"))
    table.add_column("class")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column(f"weight ({escape(scheme)})", justify="right")
    for name, count in report["before"].items():
        weight = report["class_weights"][name]
        table.add_row(escape(name), str(count), str(report["after"][name]), f"{weight:.3f}")
    console.print(table)
    console.print(
        f"imbalance (max/min) {report['imbalance_ratio_before']:.2f} -> "
        f"{report['imbalance_ratio_after']:.2f}; rows {report['rows_before']} -> "
        f"{report['rows_after']}"
    )
    if report["split"] is None:
        err_console.print("[yellow]the manifest has no splits: all rows were balanced[/yellow]")
    err_console.print(f"wrote {escape(str(output))}/manifest.parquet, {JSON_FILE} and {HTML_FILE}")
