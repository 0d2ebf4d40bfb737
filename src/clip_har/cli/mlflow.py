"""``clip-har mlflow serve``: a real MLflow tracking and registry server for this project.

It runs ``python -m mlflow server`` as a child, on the same SQLite file that ``clip-har``
tracks into by default (``./mlruns.db``) and a local artifact folder (``./mlartifacts``),
so runs and registered models logged before the server existed are served too.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType

import typer
from rich.markup import escape

from clip_har.cli.common import EXIT_INTERRUPTED, console, err_console
from clip_har.errors import ClipHarError
from clip_har.tracking.mlflow_backend import DEFAULT_ARTIFACTS, DEFAULT_DB

log = logging.getLogger(__name__)

app = typer.Typer(help="A real MLflow tracking and model registry server.", no_args_is_help=True)

_ANY_HOST = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # where a client on this machine connects


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
    _check_port_free(host, port)
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
    raise typer.Exit(_run_forwarding_signals(command))


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server listening on ``host``:``port``."""
    host = _ANY_HOST.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _check_port_free(host: str, port: int) -> None:
    """Fail before starting anything when ``host``:``port`` cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ClipHarError(f"--host {host}: not an address of this machine ({exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ClipHarError(
                    f"port {port} on {host} is already in use (another MLflow server?): "
                    "stop it, or pick another port with --port"
                ) from None
            raise ClipHarError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _run_forwarding_signals(command: list[str]) -> int:
    """Run ``command`` in its own process group and stop the whole group when this process
    gets SIGINT (Ctrl-C) or SIGTERM: SIGTERM first, which the server handles as a graceful
    shutdown (a SIGINT makes uvicorn print a traceback), SIGKILL on a second signal.
    Returns the exit code to leave with: 130 after Ctrl-C, else the server's (128 + N
    when a signal N ended it)."""
    server = subprocess.Popen(command, start_new_session=True)
    received: list[int] = []

    def forward(number: int, frame: FrameType | None) -> None:
        received.append(number)
        with contextlib.suppress(ProcessLookupError):  # it has already gone
            os.killpg(server.pid, signal.SIGTERM if len(received) == 1 else signal.SIGKILL)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and received[0] == signal.SIGINT:
        err_console.print("MLflow server stopped")
        return EXIT_INTERRUPTED
    if code < 0:
        return 128 - code
    if code != 0 and not received:
        err_console.print(f"[red]mlflow server exited with code {code}[/red] (its log is above)")
    return code
