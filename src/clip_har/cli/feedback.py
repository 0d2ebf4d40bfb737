"""``clip-har feedback``: turn the service's feedback into training data.

The database comes from ``--database FILE`` (a SQLite file) or the environment
(``CLIP_HAR_SERVE_DATABASE_URL`` / ``DATABASE_URL``, any SQLAlchemy URL), never from a URL
on the command line: a password there would be visible to every user of the machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import console, err_console
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.errors import UsageError
from clip_har.io import plural
from clip_har.serving.settings import DEFAULT_DATABASE_URL, ENV_PREFIX
from clip_har.serving.store import (
    ExportSummary,
    export_feedback,
    missing_images_hint,
    safe_url,
    sqlite_file_url,
)

DATABASE_ENV = (f"{ENV_PREFIX}DATABASE_URL", "DATABASE_URL")
IMAGES_ENV = f"{ENV_PREFIX}STORE_IMAGES"

app = typer.Typer(help="Export user feedback of the inference service.", no_args_is_help=True)


def database_url(database: Path | None) -> tuple[str, Path | None]:
    """The store's URL (``--database``, else the environment, else the serve default) and
    its SQLite file when it is one (an input the output must not overlap)."""
    if database is not None:
        if not database.is_file():
            raise UsageError(f"--database {database}: no such file")
        return sqlite_file_url(database), database
    url = next((os.environ[name] for name in DATABASE_ENV if os.environ.get(name)), None)
    url = url or DEFAULT_DATABASE_URL
    prefix = "sqlite:///"
    file = Path(url[len(prefix) :]) if url.startswith(prefix) and len(url) > len(prefix) else None
    return url, file


def database_option() -> Any:
    """``--database FILE``: the prediction store of `clip-har serve` (see :func:`database_url`)."""
    return typer.Option(
        None,
        "--database",
        metavar="FILE",
        help="SQLite file of `clip-har serve` (default: $CLIP_HAR_SERVE_DATABASE_URL or "
        "$DATABASE_URL, any SQLAlchemy URL, else ./clip-har-serving.db).",
    )


def images_or_env(images: Path | None) -> Path | None:
    """``--images``, else the server's ``$CLIP_HAR_SERVE_STORE_IMAGES``, else None."""
    if images is None and os.environ.get(IMAGES_ENV):
        return Path(os.environ[IMAGES_ENV])
    return images


@app.command("export")
def export(
    output: Path = output_option(
        kind="dir",
        help="Folder for labels.csv + images/ (the layout `clip-har data import` reads).",
    ),
    database: Path | None = database_option(),
    images: Path | None = typer.Option(
        None,
        "--images",
        metavar="DIR",
        help="Folder `clip-har serve --store-images` kept the uploads in "
        f"(default: ${IMAGES_ENV}).",
    ),
    force: bool = force_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write the corrected examples (latest feedback per prediction) as labels.csv + images/.

    The label of an example is the feedback's label when the prediction was wrong, the
    predicted label when it was right. Feedback on predictions whose image was not stored
    is counted and skipped.
    """
    url, database_file = database_url(database)
    images = images_or_env(images)
    if images is None:
        raise UsageError(
            "--images DIR is needed: the folder `clip-har serve --store-images DIR` kept the "
            f"uploads in (or set {IMAGES_ENV})"
        )
    if not images.is_dir():
        raise UsageError(f"--images {images}: no such folder")
    prepare_output(output, kind="dir", inputs=[database_file, images], force=force)
    with err_console.status(f"exporting feedback from {escape(safe_url(url))}"):
        summary = export_feedback(url, images, output)
    if as_json:
        typer.echo(json.dumps(asdict(summary), indent=2, default=str))
    else:
        _print_summary(summary)
    if summary.missing_images:
        err_console.print(
            f"[yellow]warning:[/yellow] {missing_images_hint(summary.missing_images)}"
        )
    if summary.conflicts:
        err_console.print(
            f"[yellow]warning:[/yellow] {plural(summary.conflicts, 'image')} corrected to "
            "different labels in different predictions: the latest feedback was kept"
        )
    err_console.print(f"wrote {escape(str(output))}/labels.csv and images/")


def _print_summary(summary: ExportSummary) -> None:
    table = Table(title=escape(f"{plural(summary.rows, 'example')} exported"))
    table.add_column("label", overflow="fold")
    table.add_column("images", justify="right", no_wrap=True)
    for label, count in summary.labels.items():
        table.add_row(escape(label), str(count))
    console.print(table)
    err_console.print(
        f"{plural(summary.reviewed, 'prediction')} with feedback, "
        f"{plural(summary.rows, 'image')} written, {summary.missing_images} without a stored image"
    )
