"""``clip-har mlflow serve``: a real MLflow tracking and registry server for this project.

It runs ``python -m mlflow server`` as a child, on the same SQLite file that ``clip-har``
tracks into by default (``./mlruns.db``) and a local artifact folder (``./mlartifacts``),
so runs and registered models logged before the server existed are served too.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.markup import escape

from clip_har.cli.common import (
    check_port_free,
    client_url,
    console,
    err_console,
    run_forwarding_signals,
)
from clip_har.errors import ClipHarError
from clip_har.tracking.mlflow_backend import DEFAULT_ARTIFACTS, DEFAULT_DB

log = logging.getLogger(__name__)

app = typer.Typer(help="A real MLflow tracking and model registry server.", no_args_is_help=True)


@app.command("serve")
def serve(
    backend_store_uri: str | None = typer.Option(
        None,
        "--backend-store-uri",
        help="Where runs and registered models are stored (default: sqlite:///./mlruns.db, "
        "the store clip-har tracks into without MLFLOW_TRACKING_URI).",
    ),
    artifacts_destination: Path | None = typer.Option(
        None,
        "--artifacts-destination",
        metavar="DIR",
        help="Folder for the artifacts the server proxies (default: ./mlartifacts).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(5000, "--port", min=1, max=65535, help="Port to listen on."),
    workers: int = typer.Option(1, "--workers", min=1, help="Server worker processes."),
) -> None:
    """Run `mlflow server` until Ctrl-C; point tracking and the registry at it with
    MLFLOW_TRACKING_URI. Exits with the server's exit code (130 on Ctrl-C)."""
    root = Path.cwd()
    backend = backend_store_uri or f"sqlite:///{(root / DEFAULT_DB).absolute()}"
    artifacts = (artifacts_destination or root / DEFAULT_ARTIFACTS).absolute()
    if artifacts.exists() and not artifacts.is_dir():
        raise ClipHarError(f"--artifacts-destination {artifacts} is a file; give a folder")
    check_port_free(host, port, occupant="another MLflow server?")
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--backend-store-uri", backend),
        *("--artifacts-destination", str(artifacts)),
        *("--host", host, "--port", str(port), "--workers", str(workers)),
    ]
    url = client_url(host, port)
    err_console.print(
        f"MLflow server at [bold]{escape(url)}[/bold] (store {escape(backend)}, artifacts "
        f"{escape(str(artifacts))}); Ctrl-C stops it. In another shell:"
    )
    console.print(f"export MLFLOW_TRACKING_URI={url}", soft_wrap=True)
    log.info("running %s", " ".join(command))
    raise typer.Exit(run_forwarding_signals(command, "MLflow server"))
