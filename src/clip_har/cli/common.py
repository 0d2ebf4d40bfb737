"""Shared CLI plumbing: consoles, settings from the context, logging."""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from clip_har.config import Settings, load_settings

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # messages are never cut mid-path


def settings_from(ctx: typer.Context, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings for this invocation: the global ``--params`` file plus command overrides."""
    params: Path | None = (ctx.find_root().obj or {}).get("params")
    return load_settings(params, overrides=overrides)


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
