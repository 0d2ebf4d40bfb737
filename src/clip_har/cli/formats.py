"""``clip-har formats``: every registered model format and whether it can run on this machine."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import console, err_console
from clip_har.inference.formats import format_rows, formats_markdown, get_format


def formats(
    markdown: bool = typer.Option(
        False, "--markdown", help="Print the registry as the Markdown table of docs/export.md."
    ),
) -> None:
    """List the export formats: file, precision, runtime, what each needs and whether this
    machine can run it (torch, the reference, always can)."""
    if markdown:
        typer.echo(formats_markdown(), nl=False)
        return
    table = Table(title="model formats (clip-har export --formats, --format)")
    for column in ("format", "file", "precision", "runtime", "here"):  # file, runtime may wrap
        table.add_column(column, no_wrap=column in ("format", "precision", "here"))
    missing: dict[str, str] = {}
    for row in format_rows():
        spec = get_format(row["format"])
        reason = spec.unavailable_reason("inference")
        if reason is not None:
            missing[row["format"]] = reason
        precisions = "/".join(spec.precisions)  # unspaced: stays whole in 80 columns
        cells = [escape(row[key]) for key in ("format", "file", "runtime")]
        cells.insert(2, escape(precisions))
        table.add_row(*cells, "[yellow]no[/yellow]" if reason else "[green]yes[/green]")
    console.print(table)
    for name, reason in missing.items():
        err_console.print(f"{escape(name)}: {escape(reason)}")
