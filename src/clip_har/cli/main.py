"""The ``clip-har`` command: one Typer sub-app per area."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from clip_har.cli import bundle, data, evaluate, train
from clip_har.cli.benchmark import benchmark
from clip_har.cli.common import configure_logging, err_console
from clip_har.cli.export import export
from clip_har.cli.predict import predict
from clip_har.errors import ClipHarError
from clip_har.version import __version__

app = typer.Typer(
    name="clip-har",
    help="Human action recognition with CLIP: zero-shot, fine-tuned, exported and served.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(bundle.app, name="bundle")
app.add_typer(data.app, name="data")
app.add_typer(train.app, name="train")
app.add_typer(evaluate.app, name="evaluate")
app.command("predict")(predict)
app.command("export")(export)
app.command("benchmark")(benchmark)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clip-har {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    params: Path | None = typer.Option(
        None, "--params", help="Settings file (default: $CLIP_HAR_PARAMS or ./params.yaml)."
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="-v info, -vv debug."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """Global options."""
    configure_logging(verbose)
    ctx.obj = {"params": params}


def main() -> None:
    """Console entry point: known errors become one message and exit code 1."""
    try:
        app()
    except ClipHarError as exc:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
