"""The ``clip-har`` command: one Typer sub-app per area, each imported on first use.

Only the command that runs (or whose help is shown) is imported, so ``clip-har serve`` and
``clip-har --version`` load no torch, and an install without the ``[train]`` extra still
runs every command that does not need it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

from clip_har.cli.common import (
    ClipHarGroup,
    configure_logging,
    missing_extra,
    plain_arguments,
    reflow_help,
)
from clip_har.cli.outputs import note_params_file
from clip_har.config import load_settings
from clip_har.errors import ClipHarError
from clip_har.version import __version__

if TYPE_CHECKING:
    from typer._click.core import Command, Context  # Typer vendors Click

# command name -> "module:attribute" (a command function, or a Typer sub-app), in help
# order: Typer lists commands before groups
COMMANDS: dict[str, str] = {
    "predict": "clip_har.cli.predict:predict",
    "batch": "clip_har.cli.batch:batch",
    "batch-merge": "clip_har.cli.batch:merge",
    "predict-video": "clip_har.cli.video:predict_video",
    "webcam": "clip_har.cli.video:webcam",
    "export": "clip_har.cli.export:export",
    "benchmark": "clip_har.cli.benchmark:benchmark",
    "formats": "clip_har.cli.formats:formats",
    "serve": "clip_har.cli.serve:serve",
    "ui": "clip_har.cli.ui:ui",
    "up": "clip_har.cli.up:up",
    "bundle": "clip_har.cli.bundle:app",
    "data": "clip_har.cli.data:app",
    "train": "clip_har.cli.train:app",
    "evaluate": "clip_har.cli.evaluate:app",
    "registry": "clip_har.cli.registry:app",
    "project": "clip_har.cli.project:app",
    "hub": "clip_har.cli.hub:app",
    "mlflow": "clip_har.cli.mlflow:app",
    "feedback": "clip_har.cli.feedback:app",
    "client": "clip_har.cli.client:app",
    "monitor": "clip_har.cli.monitor:app",
}


class LazyGroup(ClipHarGroup):
    """The root command, importing each command's module only when it is run or listed.

    A command whose module this checkout lacks is not listed. One whose module needs a
    package an extra provides (torch for ``train``) becomes a command that says which
    extra to install, and exits 1."""

    def list_commands(self, ctx: Context) -> list[str]:
        lazy = [name for name in COMMANDS if _present(COMMANDS[name])]
        return [*self.commands, *(name for name in lazy if name not in self.commands)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        command = self.commands.get(cmd_name)
        if command is None and cmd_name in COMMANDS and _present(COMMANDS[cmd_name]):
            command = _load(cmd_name, COMMANDS[cmd_name])
            reflow_help(command)
            plain_arguments(command)
            self.commands[cmd_name] = command
        return command


def _present(target: str) -> bool:
    """Whether the module of ``target`` exists, without importing it."""
    return importlib.util.find_spec(target.partition(":")[0]) is not None


def _load(name: str, target: str) -> Command:
    """The Click command for ``target``, converted exactly as ``add_typer``/``command`` do."""
    module_name, _, attribute = target.partition(":")
    holder = typer.Typer()
    try:
        obj = getattr(importlib.import_module(module_name), attribute)
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc.name)
        if extra is None:
            raise
        _add_needs_extra(holder, name, extra, exc.name or "a dependency")
    else:
        if isinstance(obj, typer.Typer):
            holder.add_typer(obj, name=name)
        else:
            holder.command(name)(obj)
    holder.callback()(_nothing)  # a group, so the command keeps its own name
    group = typer.main.get_command(holder)
    assert isinstance(group, TyperGroup)
    return group.commands[name]


def _nothing() -> None:
    """The placeholder callback of the group :func:`_load` converts through."""


def _add_needs_extra(holder: typer.Typer, name: str, extra: str, missing: str) -> None:
    """Add to ``holder`` a stand-in for command ``name`` in an install without ``extra``:
    it takes any arguments (``--help`` too) and fails, saying what to install."""
    install = f"pip install 'clip-har[{extra}]'"
    message = f"clip-har {name} needs the [{extra}] extra ({missing} is not installed): {install}"

    def fail(args: list[str] | None = typer.Argument(None, hidden=True)) -> None:
        raise ClipHarError(message)

    register: Callable[[Callable[..., None]], Any] = holder.command(
        name,
        help=f"Needs the [{extra}] extra: {install}.",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )
    register(fail)


app = typer.Typer(
    name="clip-har",
    cls=LazyGroup,
    help="Human action recognition with CLIP: zero-shot, fine-tuned and exported.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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
