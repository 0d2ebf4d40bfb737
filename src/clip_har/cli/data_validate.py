"""``clip-har data validate DIR -o OUT``: decode every image, queue rejections, report duplicates.

Registered in :mod:`clip_har.cli.data` as ``app.command("validate")(validate_command)``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import ProgressBar, console, drop_none, err_console, settings_from
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.config import DEFAULT_NEAR_DISTANCE
from clip_har.data.manifest import manifest_info, read_manifest, write_manifest
from clip_har.data.report import write_report
from clip_har.data.validate import REASONS, REJECTED_COLUMNS, validate
from clip_har.imaging import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from clip_har.io import plural, publish_directory, write_text_atomic
from clip_har.models.prompts import resolve_class_names

REJECTED_FILE = "rejected.csv"


def validate_command(
    ctx: typer.Context,
    directory: Path = typer.Argument(
        ...,
        metavar="DIR",
        help="Folder holding manifest.parquet (from `clip-har data import`), or the file.",
    ),
    output: Path = output_option(kind="dir", help="Folder for the results."),
    classes: str | None = typer.Option(
        None,
        "--classes",
        help="Known labels: a built-in list (har15), a file with one name per line, or a,b,c. "
        "Rows with other labels are rejected as unknown_label.",
    ),
    min_side: int | None = typer.Option(
        None,
        "--min-side",
        min=1,
        help="Reject images whose shorter side is smaller "
        f"(default: params data.min_image_side, {DEFAULT_MIN_SIDE}).",
    ),
    max_pixels: int | None = typer.Option(
        None,
        "--max-pixels",
        min=1,
        help="Reject larger images from their header, without decoding (bomb guard) "
        f"(default: params data.max_image_pixels, {DEFAULT_MAX_PIXELS}).",
    ),
    near_distance: int | None = typer.Option(
        None,
        "--near-distance",
        min=0,
        max=63,
        help="Near duplicates: perceptual hashes at most this many bits apart "
        f"(default: params data.near_distance, {DEFAULT_NEAR_DISTANCE}).",
    ),
    force: bool = force_option(),
) -> None:
    """Fully decode every image; write a clean manifest, rejected.csv and the data report.

    Source files are only read. Duplicates are reported, not rejected. Exits 0 even when
    files are rejected: the rejection queue is the result.
    """
    data = settings_from(
        ctx,
        {
            "data": drop_none(
                {
                    "min_image_side": min_side,
                    "max_image_pixels": max_pixels,
                    "near_distance": near_distance,
                }
            )
        },
    ).data
    frame = read_manifest(directory)
    known = None if classes is None else resolve_class_names(classes, source="--classes")
    read = [directory, classes, *frame["path"].dropna()]
    prepare_output(output, kind="dir", inputs=read, force=force)

    with ProgressBar("validating") as bar:
        result = validate(
            frame,
            classes=known,
            min_side=data.min_image_side,
            max_pixels=data.max_image_pixels,
            near_distance=data.near_distance,
            progress=bar,
            manifest=manifest_info(directory, len(frame)),
        )
    result.require_accepted()

    rejected_csv = result.rejected[REJECTED_COLUMNS].to_csv(index=False, lineterminator="\n")
    with err_console.status("writing the data report"), publish_directory(output) as staging:
        write_text_atomic(staging / REJECTED_FILE, rejected_csv)
        write_report(result.report, staging, result.rejected)
        write_manifest(result.manifest, staging, published=output)

    report = result.report
    table = Table(title=escape(f"validation of {plural(len(frame), 'file')}"), show_header=True)
    table.add_column("")  # words wrap (a reason's explanation)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_row("accepted", f"[green]{report['accepted']}[/green]")
    table.add_row("rejected", f"[red]{report['rejected']}[/red]" if report["rejected"] else "0")
    for code, count in report["rejected_by_reason"].items():
        table.add_row(f"  {escape(code)} [dim]({escape(REASONS.get(code, ''))})[/dim]", str(count))
    table.add_row("exact duplicate groups", str(report["exact_duplicate_groups"]))
    table.add_row("  extra copies", str(report["exact_duplicate_extra_copies"]))
    table.add_row(
        f"near-duplicate groups (≤{data.near_distance} bits)", str(report["near_duplicate_groups"])
    )
    conflicts = len(report["label_conflicts"])
    table.add_row("label conflicts", f"[yellow]{conflicts}[/yellow]" if conflicts else "0")
    if report["imbalance_ratio"] is not None:
        table.add_row("class imbalance (max/min)", f"{report['imbalance_ratio']:.2f}")
    console.print(table)
    err_console.print(
        f"wrote {escape(str(output))}/manifest.parquet, {REJECTED_FILE}, "
        "data_report.json and data_report.html"
    )
