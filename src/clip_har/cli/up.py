"""``clip-har up``: the local stack in one command, with no Docker: the MLflow server, the
API on a bundle or a registered version, and the Streamlit UI, as local processes.

Each starts once the one before is healthy; one Ctrl-C (or SIGTERM) stops them all, in
reverse order. The state (logs, pids, the prediction log) lives in ``--state``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import (
    EXIT_INTERRUPTED,
    check_port_free,
    client_url,
    console,
    err_console,
)
from clip_har.cli.supervise import (
    Child,
    Service,
    ServiceError,
    SignalGuard,
    Stopped,
    start_in_order,
    stop_all,
    watch,
    write_pids,
)
from clip_har.errors import ClipHarError, ModelRegistryError, UsageError
from clip_har.io import plural
from clip_har.tracking.mlflow_backend import DEFAULT_ARTIFACTS, DEFAULT_DB

log = logging.getLogger(__name__)

DEFAULT_STATE = Path(".clip-har")
PREDICTIONS_DB = "predictions.db"
PIDS_FILE = "pids.json"
_CLI = [sys.executable, "-m", "clip_har.cli"]  # the children run this very installation


def up(
    bundle: str | None = typer.Option(
        None,
        "--bundle",
        "-b",
        help="Bundle folder to serve, or a registered version: models:/NAME@ALIAS or "
        "models:/NAME/VERSION (resolved through the MLflow server this starts).",
        show_default=False,
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Serve the registered model NAME at --alias (same as --bundle models:/NAME@ALIAS).",
        show_default=False,
    ),
    alias: str = typer.Option("production", "--alias", help="Alias of --model to serve."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address every service listens on."),
    mlflow_port: int = typer.Option(
        5000, "--mlflow-port", min=1, max=65535, help="The MLflow server's port (its UI and API)."
    ),
    api_port: int = typer.Option(8000, "--api-port", min=1, max=65535, help="The API's port."),
    ui_port: int = typer.Option(8501, "--ui-port", min=1, max=65535, help="The UI's port."),
    no_ui: bool = typer.Option(False, "--no-ui", help="Start the MLflow server and the API only."),
    state: Path = typer.Option(
        DEFAULT_STATE,
        "--state",
        metavar="DIR",
        help="Folder for the logs (logs/<service>.log), pids.json and the prediction log "
        f"({PREDICTIONS_DB}).",
    ),
    backend_store_uri: str | None = typer.Option(
        None,
        "--backend-store-uri",
        help="The MLflow server's store (default: sqlite:///./mlruns.db, where clip-har "
        "tracks and registers without MLFLOW_TRACKING_URI).",
        show_default=False,
    ),
    artifacts_destination: Path | None = typer.Option(
        None,
        "--artifacts-destination",
        metavar="DIR",
        help="The MLflow server's artifact folder (default: ./mlartifacts).",
        show_default=False,
    ),
    startup_timeout: float = typer.Option(
        300, "--startup-timeout", min=1, help="Seconds each service may take to become healthy."
    ),
    grace: float = typer.Option(
        30, "--grace", min=0, help="Seconds each service may take to stop before it is killed."
    ),
) -> None:
    """Start the MLflow server, the API and the UI, each once the one before is healthy,
    print their URLs, and run until Ctrl-C, which stops all three (exit 130; SIGTERM exits
    0). If a service fails to start or exits, the end of its log is shown, the others are
    stopped and the exit code is 1. Logs: STATE/logs/<service>.log."""
    source = _source(bundle, model, alias)
    root = Path.cwd()
    store = backend_store_uri or f"sqlite:///{(root / DEFAULT_DB).absolute()}"
    artifacts = (artifacts_destination or root / DEFAULT_ARTIFACTS).absolute()
    ports = {"--mlflow-port": mlflow_port, "--api-port": api_port}
    if not no_ui:
        ports["--ui-port"] = ui_port
    _check_source(source, store)
    _check_ports(host, ports)
    state = state.absolute()
    services = _services(source, host, ports, state, store, artifacts)

    children: list[Child] = []
    with SignalGuard() as guard:
        try:
            start_in_order(
                services,
                children,
                timeout=startup_timeout,
                guard=guard,
                status=lambda text: err_console.status(escape(text)),
                started=lambda child, seconds: _started(child, seconds, state, children),
            )
            _print_urls(host, ports)
            watch(children)  # returns only by raising
        except Stopped as stop:
            guard.disarm()
            err_console.print(f"{stop} received: stopping {plural(len(children), 'service')}…")
            code = EXIT_INTERRUPTED if stop.signum == signal.SIGINT else 0
        except ServiceError as failure:
            guard.disarm()
            if failure.tail:
                err_console.print(f"--- the end of {escape(str(failure.service.log))} ---")
                err_console.print(escape(failure.tail), highlight=False)
                err_console.print("---")
            raise
        finally:  # whatever happened (an error too): no service is left running
            stop_all(children, grace, guard)
            (state / PIDS_FILE).unlink(missing_ok=True)
    err_console.print("stopped")
    raise typer.Exit(code)


def _source(bundle: str | None, model: str | None, alias: str) -> str:
    """What the API serves: ``--bundle`` as given, or ``models:/MODEL@ALIAS``."""
    from clip_har.registry.store import SCHEME, check_alias, check_name

    if (bundle is None) == (model is None):
        raise UsageError("give exactly one of --bundle DIR|models:/… and --model NAME")
    if model is not None:
        return f"{SCHEME}{check_name(model)}@{check_alias(alias)}"
    assert bundle is not None
    return bundle


def _check_ports(host: str, ports: dict[str, int]) -> None:
    """Every port is distinct and free, before anything starts."""
    seen: dict[int, str] = {}
    for option, port in ports.items():
        if port in seen:
            raise UsageError(f"{seen[port]} and {option} are both {port}: give each its own port")
        seen[port] = option
    for option, port in ports.items():
        check_port_free(host, port, option)


def _check_source(source: str, store: str) -> None:
    """The bundle folder opens, or the registered version exists in ``store``."""
    from clip_har.registry.store import (
        existing_registry_client,
        get_version,
        is_model_uri,
        parse_ref,
    )

    if not is_model_uri(source):
        from clip_har.models.bundle import open_bundle

        if not Path(source).is_dir():
            raise ClipHarError(f"--bundle {source}: no such folder")
        open_bundle(Path(source))  # raises, naming what is wrong
        return
    ref = parse_ref(source)
    if not store.startswith(("http://", "https://")):
        try:
            get_version(existing_registry_client(store), ref)
        except ModelRegistryError as exc:
            raise ModelRegistryError(f"{source}: {exc} (the store: --backend-store-uri)") from None


def _services(
    source: str, host: str, ports: dict[str, int], state: Path, store: str, artifacts: Path
) -> list[Service]:
    """The MLflow server, the API and (unless left out) the UI, in start order."""
    logs = state / "logs"
    mlflow_url = client_url(host, ports["--mlflow-port"])
    api_url = client_url(host, ports["--api-port"])
    services = [
        Service(
            "mlflow",
            [
                *(*_CLI, "mlflow", "serve"),
                *("--backend-store-uri", store, "--artifacts-destination", str(artifacts)),
                *("--host", host, "--port", str(ports["--mlflow-port"])),
            ],
            f"{mlflow_url}/health",
            logs / "mlflow.log",
        ),
        Service(
            "api",
            [
                *(*_CLI, "serve", "--bundle", source),
                *("--host", host, "--port", str(ports["--api-port"])),
            ],
            f"{api_url}/readyz",
            logs / "api.log",
            {"MLFLOW_TRACKING_URI": mlflow_url, **_database_env(state)},
        ),
    ]
    if "--ui-port" in ports:
        services.append(
            Service(
                "ui",
                [
                    *(*_CLI, "ui", "--api-url", api_url),
                    *("--host", host, "--port", str(ports["--ui-port"])),
                ],
                f"{client_url(host, ports['--ui-port'])}/_stcore/health",
                logs / "ui.log",
                {"MLFLOW_TRACKING_URI": mlflow_url},
            )
        )
    return services


def _database_env(state: Path) -> dict[str, str]:
    """The API's prediction log in the state folder, unless the environment names one."""
    if os.environ.get("DATABASE_URL") or os.environ.get("CLIP_HAR_SERVE_DATABASE_URL"):
        return {}
    return {"CLIP_HAR_SERVE_DATABASE_URL": f"sqlite:///{state / PREDICTIONS_DB}"}


def _started(child: Child, seconds: float, state: Path, children: list[Child]) -> None:
    write_pids(state / PIDS_FILE, children)
    err_console.print(
        f"[green]✓[/green] {child.service.name} healthy in {seconds:.1f} s "
        f"(pid {child.pid}, log {escape(str(child.service.log))})"
    )


def _print_urls(host: str, ports: dict[str, int]) -> None:
    """The table of where each service answers."""
    table = Table(title="clip-har is up", title_justify="left")
    table.add_column("service")
    table.add_column("URL", overflow="fold")
    table.add_row("MLflow UI", client_url(host, ports["--mlflow-port"]))
    api = client_url(host, ports["--api-port"])
    table.add_row("API", api)
    table.add_row("API docs", f"{api}/docs")
    if "--ui-port" in ports:
        table.add_row("UI", client_url(host, ports["--ui-port"]))
    console.print(table)
    err_console.print("Ctrl-C stops all of them.")
