"""``clip-har serve``: the inference service (FastAPI on uvicorn) for one bundle.

Every option also comes from an environment variable (``CLIP_HAR_SERVE_<NAME>``); an option
given on the command line wins. API keys and the database URL come from the environment
(or a key file) only, never from the command line, where other users can read them.
No torch import here: serving an ONNX bundle loads no torch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from clip_har.cli.common import (
    BUNDLE_HELP,
    EXIT_INTERRUPTED,
    client_url,
    drop_none,
    err_console,
    listen,
    one_of,
)
from clip_har.errors import ClipHarError, UsageError
from clip_har.inference.formats import PRECISIONS, engine_formats
from clip_har.serving.settings import ENV_PREFIX, ServeSettings

if TYPE_CHECKING:
    from clip_har.serving.models import ModelManager

log = logging.getLogger(__name__)

_HANDLED = (signal.SIGINT, signal.SIGTERM)


KEEP_ALIVE_S = 75  # seconds an idle HTTP connection is kept open


def _env(name: str) -> str:
    return f"(env {ENV_PREFIX}{name.upper()})"


def serve(
    bundle: str | None = typer.Option(
        None, "--bundle", "-b", help=f"{BUNDLE_HELP} {_env('bundle')}", show_default=False
    ),
    model_format: str | None = typer.Option(
        None,
        "--format",
        parser=one_of(engine_formats()),
        metavar="FORMAT",
        help=f"Engine: {', '.join(engine_formats())}; default: the best passing export "
        f"(onnx-int8, onnx, torch), or the format a registered version serves {_env('format')}",
    ),
    host: str | None = typer.Option(None, "--host", help=f"Address [127.0.0.1] {_env('host')}"),
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help=f"Port [8000] {_env('port')}"
    ),
    max_batch_size: int | None = typer.Option(
        None,
        "--max-batch-size",
        min=1,
        help=f"Images per engine call [32] {_env('max_batch_size')}",
    ),
    max_wait_ms: float | None = typer.Option(
        None,
        "--max-wait-ms",
        min=0,
        help=f"Wait for a batch to fill [5] {_env('max_wait_ms')}",
    ),
    max_queue: int | None = typer.Option(
        None, "--max-queue", min=1, help=f"Queued images before 503 [256] {_env('max_queue')}"
    ),
    instances: int | None = typer.Option(
        None, "--instances", min=1, help=f"Engine sessions in parallel [1] {_env('instances')}"
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help=f"Intra-op threads per instance {_env('threads')}"
    ),
    precision: str | None = typer.Option(
        None,
        "--precision",
        parser=one_of(PRECISIONS),
        metavar="PRECISION",
        help=f"Torch format's compute precision: {', '.join(PRECISIONS)} [fp32] "
        f"{_env('precision')}",
    ),
    evaluation: Path | None = typer.Option(
        None,
        "--evaluation",
        metavar="DIR",
        help="A `clip-har evaluate` output of the bundle, served on /v1/model and "
        "/v1/model/report; a models:/ version serves its registered one by default "
        f"{_env('evaluation')}",
    ),
    store_images: Path | None = typer.Option(
        None,
        "--store-images",
        metavar="DIR",
        help=f"Keep uploads here, content-addressed (for `feedback export`) {_env('store_images')}",
    ),
    model_name: str | None = typer.Option(
        None,
        "--model-name",
        help=f"Name on /v2/models/{{name}}; default: the registered or bundle name "
        f"{_env('model_name')}",
    ),
) -> None:
    """Serve a bundle over HTTP: /v1 REST, the Open Inference Protocol (/v2), /metrics and
    /docs. Ctrl-C or SIGTERM drains in-flight requests and exits (130 after Ctrl-C).

    API keys come only from the environment or a file: CLIP_HAR_SERVE_API_KEYS /
    CLIP_HAR_SERVE_API_KEYS_FILE and CLIP_HAR_SERVE_ADMIN_API_KEYS /
    CLIP_HAR_SERVE_ADMIN_API_KEYS_FILE (admin routes). The database comes from DATABASE_URL
    or CLIP_HAR_SERVE_DATABASE_URL (default: SQLite ./clip-har-serving.db). Exits 1 when the
    model cannot be loaded."""
    overrides = drop_none(
        {
            "bundle": bundle,
            "format": model_format,
            "host": host,
            "port": port,
            "max_batch_size": max_batch_size,
            "max_wait_ms": max_wait_ms,
            "max_queue": max_queue,
            "instances": instances,
            "threads": threads,
            "precision": precision,
            "evaluation": evaluation,
            "store_images": store_images,
            "model_name": model_name,
        }
    )
    settings = _settings(overrides)
    if settings.bundle is None:
        raise UsageError(f"no bundle to serve: pass --bundle or set {ENV_PREFIX}BUNDLE")
    _check_bundle(settings.bundle, settings.format)
    if settings.evaluation is not None:  # of another model: refused before the server starts
        from clip_har.serving.evaluation import check_evaluation_option

        check_evaluation_option(settings.bundle, settings.evaluation)
    _check_store(settings)
    listener = listen(settings.host, settings.port)  # before the model loads
    listener.set_inheritable(True)
    _show_logs()

    import uvicorn

    from clip_har.serving.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        log_config=None,  # uvicorn logs through clip-har's handler, on stderr
        log_level="info",
        access_log=logging.getLogger().getEffectiveLevel() <= logging.INFO,
        timeout_graceful_shutdown=math.ceil(settings.drain_grace_s),
        # longer than load balancers' idle timeouts (60 s is common), so the server never
        # closes a kept-alive connection while a client or proxy is reusing it
        timeout_keep_alive=KEEP_ALIVE_S,
        lifespan="on",
    )
    server = _server_class()(config, app.state.models)
    url = client_url(settings.host, settings.port)
    err_console.print(
        f"serving {escape(settings.bundle)} at [bold]{escape(url)}[/bold]\n"
        f"  docs     {escape(url)}/docs\n"
        f"  ready    {escape(url)}/v2/health/ready\n"
        f"  metrics  {escape(url)}/metrics\n"
        "Ctrl-C stops it (in-flight requests finish first).",
        soft_wrap=True,
    )
    try:
        server.run(sockets=[listener])
    finally:
        listener.close()
    if server.failure is not None:
        raise ClipHarError(f"cannot serve {settings.bundle}: {server.failure}")
    if not server.started and not server.signals:
        raise ClipHarError("the server did not start (the reason is logged above)")
    if signal.SIGINT in server.signals:
        err_console.print("stopped")
        raise typer.Exit(EXIT_INTERRUPTED)
    err_console.print("stopped")


def _server_class() -> type[Any]:
    """uvicorn's Server with clip-har's shutdown (uvicorn is imported only when serving)."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, plus: a signal first turns readiness to 503 (the model manager drains),
        then uvicorn stops accepting, finishes in-flight requests and runs the lifespan
        shutdown. The signal is not re-raised afterwards: SIGTERM exits 0, Ctrl-C 130.
        If the first model load fails, the server stops and ``failure`` says why."""

        def __init__(self, config: uvicorn.Config, models: ModelManager) -> None:
            super().__init__(config)
            self.models = models
            self.signals: list[int] = []
            self.failure: str | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            self.signals.append(sig)
            self.models.begin_drain()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in _HANDLED}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            import asyncio

            watcher = asyncio.create_task(self._watch_first_load())
            try:
                await super().serve(sockets)
            finally:
                watcher.cancel()

        async def _watch_first_load(self) -> None:
            reason = await self.models.wait_first_load()
            if reason is not None:
                self.failure = reason
                self.should_exit = True
            elif self.models.info is not None:
                info = self.models.info
                err_console.print(
                    escape(f"ready: {info.name} version {info.version} ({info.format})")
                )

    return Server


def _settings(overrides: dict[str, Any]) -> ServeSettings:
    """The environment's settings with the command line's ``overrides`` on top."""
    try:
        return ServeSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in problem['loc']) or 'settings'}: {problem['msg']}"
            for problem in exc.errors()
        )
        raise UsageError(
            f"invalid serving settings ({ENV_PREFIX}* or options): {problems}"
        ) from None


def _check_bundle(source: str, format: str | None) -> None:
    """Fail fast, before the server starts, on a bundle folder that cannot be served (or has
    no usable export of the requested ``format``)."""
    from clip_har.inference.formats import REFERENCE_FORMAT
    from clip_har.models.bundle import open_bundle
    from clip_har.registry.store import is_model_uri, parse_ref

    if is_model_uri(source):
        parse_ref(source)  # a malformed reference is a usage error now
        return
    path = Path(source)
    if not path.exists():
        raise ClipHarError(f"--bundle {source}: no such folder")
    bundle = open_bundle(path)  # raises, naming what is wrong
    if format is not None and format != REFERENCE_FORMAT:
        bundle.export_file(format)  # missing, changed or failed parity: says which


def _check_store(settings: ServeSettings) -> None:
    """Fail fast on a prediction store that cannot be opened (a wrong DATABASE_URL, an
    unreachable server), before uvicorn starts: one message, not a lifespan traceback."""
    from clip_har.serving.store import PredictionStore

    PredictionStore.from_settings(settings).close()


def _show_logs() -> None:
    """The service's own INFO lines (model loaded, reloads, draining) show by default."""
    for name in ("clip_har.serving", "uvicorn.error"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
