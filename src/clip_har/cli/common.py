"""Shared CLI plumbing: exit codes and the error handler, consoles, settings, logging."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup

from clip_har.config import Settings, load_settings
from clip_har.errors import ClipHarError, ConfigError, UsageError
from clip_har.inference.formats import REFERENCE_FORMAT, engine_formats

if TYPE_CHECKING:
    from typer._click.core import Context as ClickContext  # Typer vendors Click

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

    Typer/Click report parsing errors themselves with :data:`EXIT_USAGE`.
    """

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


def report_error(exc: Exception) -> int:
    """Print ``exc`` as one message on stderr and return the exit code it calls for."""
    logger.debug("error details", exc_info=exc)
    if isinstance(exc, ClipHarError):
        message, code = str(exc), EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILURE
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


def model_format_option() -> Any:
    """``--format``: the model format, ``torch`` or a registered export (checked on parsing)."""
    return typer.Option(
        REFERENCE_FORMAT,
        "--format",
        parser=one_of(engine_formats()),
        metavar="FORMAT",
        help=f"Model format: {', '.join(engine_formats())} (exports come from the bundle).",
    )


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
    for noisy in ("httpx", "huggingface_hub", "transformers", "filelock", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    from transformers.utils import logging as hf_logging  # imported late: keeps --help fast

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


_PROGRESS_THRESHOLD = 8


class ProgressBar:
    """A rich bar that appears only once the total is known to exceed the threshold."""

    def __init__(self, description: str) -> None:
        self._progress = Progress(
            TextColumn(description),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
        )
        self._task: TaskID | None = None

    def __call__(self, done: int, total: int) -> None:
        if total <= _PROGRESS_THRESHOLD:
            return
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task(description="", total=total)
        self._progress.update(self._task, completed=done, total=total)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._progress.stop()
