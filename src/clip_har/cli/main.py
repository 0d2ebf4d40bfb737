"""The ``clip-har`` command: one Typer sub-app per area."""

from __future__ import annotations

from pathlib import Path

import typer

from clip_har.cli import bundle, data, evaluate, hub, project, registry, train
from clip_har.cli import mlflow as mlflow_cli  # not the mlflow package
from clip_har.cli.benchmark import benchmark
from clip_har.cli.common import ClipHarGroup, configure_logging
from clip_har.cli.export import export
from clip_har.cli.formats import formats
from clip_har.cli.outputs import note_params_file
from clip_har.cli.predict import predict
from clip_har.config import load_settings
from clip_har.version import __version__

app = typer.Typer(
    name="clip-har",
    cls=ClipHarGroup,
    help="Human action recognition with CLIP: zero-shot, fine-tuned and exported.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(bundle.app, name="bundle")
app.add_typer(data.app, name="data")
app.add_typer(train.app, name="train")
app.add_typer(evaluate.app, name="evaluate")
app.add_typer(registry.app, name="registry")
app.add_typer(project.app, name="project")
app.add_typer(hub.app, name="hub")
app.add_typer(mlflow_cli.app, name="mlflow")
app.command("predict")(predict)
app.command("export")(export)
app.command("benchmark")(benchmark)
app.command("formats")(formats)


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
    if params is not None:
        load_settings(params)  # a broken --params file fails every command, before any work
    ctx.obj = {"params": params}
    note_params_file(params)  # no command writes onto or into it


def main() -> None:
    """Console entry point; :class:`ClipHarGroup` turns errors into messages and exit codes."""
    app()
