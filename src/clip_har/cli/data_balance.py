"""``clip-har data balance DIR -o OUT``: under/oversample the training split to a target count.

Registered in :mod:`clip_har.cli.data` as ``app.command("balance")(balance_command)``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import console, err_console
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.data.balance import (
    HTML_FILE,
    JSON_FILE,
    MAX_TARGET,
    SCHEMES,
    parse_target,
    render_html,
    resample,
)
from clip_har.data.manifest import read_manifest, write_manifest
from clip_har.errors import UsageError
from clip_har.io import publish_directory, write_json_atomic, write_text_atomic


def balance_command(
    directory: Path = typer.Argument(
        ..., metavar="DIR", help="Folder holding manifest.parquet (split), or the file."
    ),
    output: Path = output_option(kind="dir", help="Folder for the balanced manifest."),
    target: str = typer.Option(
        "median",
        "--target",
        help=f"Images per class: a number (at most {MAX_TARGET}), or min / max / median.",
    ),
    split: str = typer.Option("train", "--split", help="The split to balance; others are kept."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed for which rows are drawn."),
    scheme: str = typer.Option(
        "inverse", "--scheme", help=f"Class weights in the report: {', '.join(SCHEMES)}."
    ),
    force: bool = force_option(),
) -> None:
    """Balance one split by undersampling big classes and repeating rows of small ones.

    Writes manifest.parquet, balance_report.json and balance_report.html into OUT.
    Validation and test rows are never resampled.
    """
    goal = parse_target(target)
    if isinstance(goal, int) and goal > MAX_TARGET:
        raise UsageError(f"--target {goal} is above the limit of {MAX_TARGET} rows per class")
    frame = read_manifest(directory)
    prepare_output(output, kind="dir", inputs=[directory, *frame["path"].dropna()], force=force)
    result = resample(frame, goal, seed=seed, split=split, scheme=scheme)
    report = result.report

    with err_console.status("writing the balance report"), publish_directory(output) as staging:
        write_manifest(result.manifest, staging, published=output)
        write_json_atomic(staging / JSON_FILE, report)
        write_text_atomic(staging / HTML_FILE, render_html(report))

    where = report["split"] or "all rows"
    table = Table(title=escape(f"balance of {where} to {report['target']} per class (seed {seed})"))
    table.add_column("class", overflow="fold")
    table.add_column("before", justify="right", no_wrap=True)
    table.add_column("after", justify="right", no_wrap=True)
    table.add_column(f"weight ({escape(scheme)})", justify="right", no_wrap=True)
    for name, count in report["before"].items():
        weight = report["class_weights"][name]
        table.add_row(escape(name), str(count), str(report["after"][name]), f"{weight:.3f}")
    console.print(table)
    console.print(
        f"imbalance (max/min) {report['imbalance_ratio_before']:.2f} -> "
        f"{report['imbalance_ratio_after']:.2f}; rows {report['rows_before']} -> "
        f"{report['rows_after']}"
    )
    err_console.print(f"wrote {escape(str(output))}/manifest.parquet, {JSON_FILE} and {HTML_FILE}")
