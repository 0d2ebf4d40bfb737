"""Shared CLI plumbing: exit codes and the error handler, consoles, settings, logging."""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from typer.core import TyperArgument, TyperGroup

from clip_har.config import Settings, load_settings
from clip_har.errors import ClipHarError, ConfigError, UsageError
from clip_har.inference.formats import PRECISIONS, REFERENCE_FORMAT, engine_formats

if TYPE_CHECKING:
    from typer._click.core import Context as ClickContext  # Typer vendors Click

    from clip_har.registry.resolve import ResolvedBundle

logger = logging.getLogger(__name__)

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # messages are never cut mid-path

# Exit codes, the same for every command (README "Exit codes").
EXIT_FAILURE = 1  # the command ran and failed: one message on stderr, no traceback
EXIT_USAGE = 2  # the command line is wrong: unknown option, bad or conflicting values
EXIT_PARTIAL = 3  # the command finished, but some inputs could not be used (each is listed)
EXIT_INTERRUPTED = 130  # Ctrl-C


class ClipHarGroup(TyperGroup):
    """The root command: every error raised by any command becomes one message on stderr
    and an exit code, never a traceback (``-vv`` logs the traceback for debugging).

    Typer/Click report parsing errors themselves with :data:`EXIT_USAGE`. Every help text
    below it is reflowed (:func:`reflow_help`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        reflow_help(self)
        plain_arguments(self)

    def invoke(self, ctx: ClickContext) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # Click's own flow: --help, explicit exits, usage errors
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            code = report_error(exc)
            raise typer.Exit(code) from None


def reflow_help(command: Any) -> None:
    """Put each paragraph of the help of ``command``, its options and every command below
    it on one line. Typer keeps a docstring's line breaks in command lists and after the
    first paragraph, which breaks sentences mid-way; the help renderer wraps lines to the
    terminal itself. Paragraphs starting with ``\b`` (Click's "keep as is") are kept."""
    command.help = _reflow(command.help)
    command.epilog = _reflow(command.epilog)
    for param in command.params:
        if isinstance(getattr(param, "help", None), str):
            param.help = _reflow(param.help)
    for subcommand in (getattr(command, "commands", None) or {}).values():
        reflow_help(subcommand)


class PlainArgument(TyperArgument):
    """A positional argument shown as its metavar (``BUNDLE``, ``[PATH]``, ``IMAGES...``) in
    usage lines, where Typer writes ``{bundle}``, and with its element type (``<str>``), not
    ``<list[str]>``, in the argument table."""

    def _usage_display_name(self) -> str:
        name = self.metavar or (self.name or "").upper()
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name if self.required else f"[{name}]"

    def display_type_rich(self, ctx: ClickContext) -> str | None:
        shown = super().display_type_rich(ctx)
        if shown and shown.startswith("<list[") and shown.endswith("]>"):
            return f"<{shown[len('<list[') : -len(']>')]}>"
        return shown


def plain_arguments(command: Any) -> None:
    """Make every positional argument of ``command`` and the commands below it a
    :class:`PlainArgument` (Typer has no option to choose the class of an argument)."""
    for param in command.params:
        if type(param) is TyperArgument:
            param.__class__ = PlainArgument
    for subcommand in (getattr(command, "commands", None) or {}).values():
        plain_arguments(subcommand)


def _reflow(text: str | None) -> str | None:
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


# the import names of the packages each extra provides (pyproject.toml), space-separated
_EXTRA_MODULES: dict[str, str] = {
    "train": "torch transformers safetensors datasets kornia peft dvc mlflow wandb sklearn "
    "scipy matplotlib onnx imagehash",
    "serve": "fastapi starlette uvicorn multipart python_multipart anyio prometheus_client "
    "sqlalchemy psycopg",
    "ui": "streamlit plotly streamlit_webrtc",
    "video": "cv2",
}
EXTRA_PACKAGES = {
    module: extra for extra, modules in _EXTRA_MODULES.items() for module in modules.split()
}


def missing_extra(module: str | None) -> str | None:
    """The extra that installs the missing ``module`` (``torch.nn`` -> ``train``), if any."""
    return EXTRA_PACKAGES.get((module or "").partition(".")[0])


def report_error(exc: Exception) -> int:
    """Print ``exc`` as one message on stderr and return the exit code it calls for."""
    logger.debug("error details", exc_info=exc)
    extra = missing_extra(exc.name) if isinstance(exc, ModuleNotFoundError) else None
    if isinstance(exc, ClipHarError):
        message, code = str(exc), EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILURE
    elif isinstance(exc, ModuleNotFoundError) and extra is not None:
        message = (
            f"{exc.name} is not installed; this needs the [{extra}] extra: "
            f"pip install 'clip-har[{extra}]'"
        )
        code = EXIT_FAILURE
    elif isinstance(exc, OSError):  # the file system refused: name the file and the reason
        files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        message, code = f"{files}: {exc.strerror}" if files else str(exc), EXIT_FAILURE
    else:
        message = (
            f"unexpected {type(exc).__name__}: {exc} (this is a bug in clip-har; "
            "rerun with -vv to see where it happened)"
        )
        code = EXIT_FAILURE
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}")
    if code == EXIT_USAGE:
        err_console.print("(see --help for the options)")
    return code


def settings_from(ctx: typer.Context, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings for this invocation: the global ``--params`` file plus command overrides.

    Settings that are invalid only with the overrides are the command line's fault: a
    :class:`UsageError`; a broken params file or environment stays a ``ConfigError``.
    """
    params: Path | None = (ctx.find_root().obj or {}).get("params")
    try:
        return load_settings(params, overrides=overrides)
    except ConfigError as exc:
        if not overrides:
            raise
        load_settings(params)  # raises when the file or environment is at fault
        problems = "\n".join(f"  {problem}" for problem in exc.problems) or str(exc)
        raise UsageError(f"invalid option value:\n{problems}") from None


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """A Typer ``parser`` that accepts only ``choices`` (a registry's names): anything else is
    a usage error (exit 2) that lists them. Pair it with ``metavar=choice_metavar(choices)``."""
    allowed = tuple(choices)

    def parse(value: str) -> str:
        if value not in allowed:
            raise typer.BadParameter(f"'{value}' is not one of: {', '.join(allowed)}")
        return value

    return parse


def choice_metavar(choices: Sequence[str]) -> str:
    """``[a|b|c]``: how the help shows a choice option."""
    return f"[{'|'.join(choices)}]"


BUNDLE_HELP = (
    "Bundle directory, or a registered version: models:/NAME@ALIAS or models:/NAME/VERSION."
)


def bundle_option() -> Any:
    """``--bundle``/``-b``: a bundle directory or a ``models:/`` reference (resolved by
    :func:`clip_har.registry.resolve.resolve_bundle`)."""
    return typer.Option(None, "--bundle", "-b", help=BUNDLE_HELP)


def model_format_option() -> Any:
    """``--format``: the model format, ``torch`` or a registered export (checked on parsing)."""
    return typer.Option(
        REFERENCE_FORMAT,
        "--format",
        parser=one_of(engine_formats()),
        metavar="FORMAT",
        help=f"Model format: {', '.join(engine_formats())} (exports come from the bundle).",
    )


def precision_option() -> Any:
    """``--precision``: the torch format's compute precision (checked on parsing)."""
    return typer.Option(
        "fp32",
        "--precision",
        parser=one_of(PRECISIONS),
        metavar="PRECISION",
        help=f"Compute precision of the torch format: {', '.join(PRECISIONS)} (bf16: autocast, "
        "about twice as fast on CPUs with AVX512-BF16 or AMX; fp16: CUDA only).",
    )


_ANY_HOST = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # where a client on this machine connects


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server listening on ``host``:``port``."""
    host = _ANY_HOST.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listen(host: str, port: int, option: str = "--port", *, occupant: str = "") -> socket.socket:
    """A socket bound to ``host``:``port`` as the servers bind theirs (``SO_REUSEADDR``).
    :class:`ClipHarError` when it cannot be; a port in use names ``option`` to pick another
    (``occupant``: a guess at what holds it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ClipHarError(f"--host {host}: not an address of this machine ({exc})") from None
    family, kind, proto, _, address = infos[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            guess = f" ({occupant})" if occupant else ""
            raise ClipHarError(
                f"port {port} on {host} is already in use{guess}: stop what listens there, "
                f"or pick another port with {option}"
            ) from None
        raise ClipHarError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return listener


def check_port_free(host: str, port: int, option: str = "--port", *, occupant: str = "") -> None:
    """Fail before starting anything when ``host``:``port`` cannot be listened on."""
    listen(host, port, option, occupant=occupant).close()


def run_forwarding_signals(command: list[str], name: str) -> int:
    """Run server ``command`` in its own process group until it exits, stopping the whole
    group when this process gets SIGINT (Ctrl-C) or SIGTERM: SIGTERM first, which servers
    handle as a graceful shutdown (a SIGINT makes uvicorn print a traceback), SIGKILL on a
    second signal. Returns 130 after Ctrl-C, 0 after SIGTERM, else the server's exit code
    (128 + N when a signal N ended it); ``name`` is the server in the messages."""
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
    if received:
        err_console.print(f"{name} stopped")
        return EXIT_INTERRUPTED if received[0] == signal.SIGINT else 0
    if code != 0:
        err_console.print(f"[red]{escape(name)} exited with code {code}[/red] (its log is above)")
    return 128 - code if code < 0 else code


def given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line (not left at its default)."""
    # typer vendors its own click: compare the ParameterSource by its name
    return getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"


def chosen_format(resolved: ResolvedBundle, bundle: str, model_format: str, explicit: bool) -> str:
    """The engine format to run for ``--bundle bundle``: ``model_format`` when given on the
    command line, else the one a ``models:/`` version serves (its note is printed)."""
    chosen = resolved.format_for(model_format if explicit else None)
    if note := resolved.format_note(chosen):
        err_console.print(escape(f"{bundle}: {note}"))
    return chosen


def drop_none(section: dict[str, Any]) -> dict[str, Any]:
    """CLI options left unset (``None``) must not override the params file."""
    return {key: value for key, value in section.items() if value is not None}


def configure_logging(verbosity: int) -> None:
    """WARNING by default, INFO with -v, DEBUG with -vv; always on stderr."""
    level = logging.WARNING - 10 * min(verbosity, 2)
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    quiet = max(level, logging.WARNING)
    noisy = ("httpx", "huggingface_hub", "transformers", "filelock", "urllib3", "mlflow", "alembic")
    for name in noisy:
        logging.getLogger(name).setLevel(quiet)
    # mlflow sets its own and alembic's levels and handlers when it is imported (lazily,
    # after this): its variable keeps "Creating initial MLflow database tables" off stderr
    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):  # a level the user chose is kept
        os.environ["MLFLOW_LOGGING_LEVEL"] = logging.getLevelName(quiet)
    # no "Downloading artifacts" bars on stderr (register, compare, predict models:/)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _quiet_hugging_face()


def _quiet_hugging_face() -> None:
    """Transformers logs errors only and Hugging Face shows no progress bars. Neither is
    imported for it (that would load them into torch-free commands): a library not yet
    loaded reads the environment variables when it is."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # transformers starts with the hub's setting
    else:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


PROGRESS_THRESHOLD = 8  # a count of items at most this small gets no bar by default


class ProgressBar:
    """Progress rows on stderr (live on a terminal; elsewhere the final state once, at
    the end), never on stdout. Use it as a context manager.

    Called as ``bar(done, total)`` it moves its main row, labelled ``description``;
    :meth:`update` moves further rows by name (e.g. epochs, then batches within one). A
    row appears once its total exceeds ``threshold`` (default: the bar's), so short work
    shows no bar.
    """

    def __init__(self, description: str, *, threshold: int = PROGRESS_THRESHOLD) -> None:
        self._description = description
        self._threshold = threshold
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[count]}", markup=False),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
        )
        self._rows: dict[str, TaskID] = {}
        self._done: dict[str, float] = {}

    def __call__(self, done: int, total: int) -> None:
        self.update(done, total)

    def update(
        self,
        done: float,
        total: float,
        *,
        row: str | None = None,
        description: str | None = None,
        count: str | None = None,
        threshold: int | None = None,
    ) -> None:
        """Move ``row`` (default: the main row) to ``done`` of ``total``.

        ``description`` relabels the row (a new row starts labelled with its name), ``count``
        replaces the ``done/total`` text beside the bar ("" hides it), and ``threshold``
        replaces the bar's for this row.
        """
        name = self._description if row is None else row
        task = self._rows.get(name)
        if task is None:
            if total <= (self._threshold if threshold is None else threshold):
                return
            if not self._rows:
                self._progress.start()
            task = self._progress.add_task(name, total=total, count="")
            self._rows[name] = task
        elif done < self._done[name]:  # a new round (the next epoch's batches): restart
            self._progress.reset(task, total=total)
        self._done[name] = done
        self._progress.update(
            task,
            completed=done,
            total=total,
            description=description,  # None keeps the current label
            count=f"{int(done)}/{int(total)}" if count is None else count,
        )

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._rows:
            self._progress.stop()
