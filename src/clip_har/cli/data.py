"""``clip-har data``: import, validate and split datasets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import ProgressBar, console, err_console, settings_from
from clip_har.cli.data_augment import preview_augment_command
from clip_har.cli.data_balance import balance_command
from clip_har.cli.data_split import split_command
from clip_har.cli.data_validate import validate_command
from clip_har.cli.data_version import (
    pull_command,
    push_command,
    remote_app,
    track_command,
    version_command,
)
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.data.manifest import MANIFEST_FILE, read_manifest, write_manifest
from clip_har.data.sources import import_source
from clip_har.io import plural, publish_directory

app = typer.Typer(
    help="Import, validate, split, balance and version datasets.", no_args_is_help=True
)
app.command("validate")(validate_command)
app.command("split")(split_command)
app.command("balance")(balance_command)
app.command("preview-augment")(preview_augment_command)
app.command("track")(track_command)
app.add_typer(remote_app, name="remote")
app.command("push")(push_command)
app.command("pull")(pull_command)
app.command("version")(version_command)


@app.command("import")
def import_data(
    ctx: typer.Context,
    source: str = typer.Argument(
        ...,
        metavar="SOURCE",
        help="Folder (class sub-folders, flat images, labels.csv + images/, save_to_disk or "
        "parquet), a .csv file, or hf:NAME[:split].",
    ),
    output: Path = output_option(kind="dir", help="Directory for manifest.parquet."),
    images_dir: Path | None = typer.Option(
        None, "--images-dir", help="Folder the CSV's filenames are relative to."
    ),
    force: bool = force_option(),
) -> None:
    """Read SOURCE into DIR/manifest.parquet: paths, labels, hashes, sizes. Files stay as-is."""
    settings = settings_from(ctx)
    prepare_output(output, kind="dir", inputs=[source, images_dir], force=force)
    with ProgressBar("hashing") as bar:
        frame = import_source(
            source,
            images_dir=images_dir,
            progress=bar,
            cache_dir=settings.cache_dir,
            max_pixels=settings.data.max_image_pixels,
        )
    # the files a CSV lists are inputs too: the output folder must not hold one
    prepare_output(output, kind="dir", inputs=frame["path"].dropna(), force=True)
    with publish_directory(output) as staging:
        write_manifest(frame, staging, published=output)
    path = output / MANIFEST_FILE
    _print_import_summary(frame)
    err_console.print(f"wrote {escape(str(path))}")


def _print_import_summary(frame: pd.DataFrame) -> None:
    labels = frame["label"]
    counts = labels.dropna().value_counts().sort_index()
    if len(counts):
        table = Table(title="images per class")
        table.add_column("label", overflow="fold")
        table.add_column("images", justify="right", no_wrap=True)
        for label, count in counts.items():
            table.add_row(escape(str(label)), str(count))
        console.print(table)
    unreadable = int(frame["sha256"].isna().sum())
    undecodable = int((frame["sha256"].notna() & frame["phash"].isna()).sum())
    err_console.print(
        f"{plural(len(frame), 'row')}: {int(labels.notna().sum())} labelled, "
        f"{int(labels.isna().sum())} unlabelled, {plural(len(counts), 'class')}; "
        + (f"[red]{unreadable} unreadable[/red]" if unreadable else "0 unreadable")
        + (f", [yellow]{undecodable} not decodable[/yellow]" if undecodable else "")
    )


@app.command("has-labels")
def has_labels(
    manifest: Path = typer.Argument(
        ..., metavar="MANIFEST", help="A manifest.parquet or the folder holding one."
    ),
) -> None:
    """Print `yes` when MANIFEST has labelled rows, `no` when it has none (for scripts).

    An unreadable manifest is an error (exit 1), never a `no`.
    """
    labels = read_manifest(manifest)["label"]
    labelled = int(labels.notna().sum())
    err_console.print(
        f"{escape(str(manifest))}: {labelled} of {plural(len(labels), 'row')} labelled"
    )
    console.print("yes" if labelled else "no")
