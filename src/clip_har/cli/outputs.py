"""One mechanism for what a command writes (docs/cli.md "Outputs").

Every command that writes a file or a folder declares it with :func:`output_option` and
:func:`force_option`, and calls :func:`prepare_output` before any heavy work. The rules:

- an output is never an input, never inside an input, and an output folder never holds
  an input (replacing it would delete the input); symbolic links are resolved;
- an existing file, or a non-empty folder, is replaced only with ``--force``;
- a file where a folder is expected, or a folder where a file is expected, is an error;
- a file whose suffix does not match what is written is a usage error;
- nothing is left at the output after a failure: files go through
  :func:`clip_har.io.atomic_write`, folders through :func:`clip_har.io.publish_directory`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import typer

from clip_har.data.manifest import read_manifest
from clip_har.errors import ClipHarError, ManifestError, UsageError

OutputKind = Literal["file", "dir"]

OUTPUT_PANEL = "Output"  # the --help panel of every output option and of --force
FORCE_HELP = "Replace an existing output."

PathLike = str | os.PathLike[str]

_params_file: ContextVar[Path | None] = ContextVar("params_file", default=None)


def note_params_file(path: Path | None) -> None:
    """Record this invocation's ``--params`` file: an input of every command."""
    _params_file.set(path)


def output_option(
    default: Any = ...,
    *flags: str,
    kind: OutputKind,
    help: str,
) -> Any:
    """A Typer option for a file (``kind="file"``) or folder (``kind="dir"``) the command
    writes; ``flags`` default to ``--output``/``-o``. Pair it with :func:`force_option`
    and call :func:`prepare_output` on its value before any work."""
    return typer.Option(
        default,
        *(flags or ("--output", "-o")),
        help=help,
        metavar="FILE" if kind == "file" else "DIR",
        rich_help_panel=OUTPUT_PANEL,
    )


def force_option() -> Any:
    """``--force``: the one meaning it has in every command."""
    return typer.Option(False, "--force", help=FORCE_HELP, rich_help_panel=OUTPUT_PANEL)


def prepare_output(
    path: Path | None,
    *,
    kind: OutputKind = "file",
    suffixes: Sequence[str] = (),
    inputs: Iterable[PathLike | None] = (),
    force: bool = False,
    option: str = "--output",
) -> Path | None:
    """Check an output before any work; returns ``path`` (``None`` stays ``None``).

    ``suffixes`` are the accepted file name endings (lower case, with the dot) when the
    written format is fixed or follows the name. ``inputs`` are everything the command
    reads (files, folders, or strings that are not paths, which are ignored); the
    ``--params`` file in use is added. Raises :class:`UsageError` for a wrong suffix or
    an output that overlaps an input, :class:`ClipHarError` for an output of the wrong
    kind or one that exists without ``--force``.
    """
    if path is None:
        return None
    named = f"{option} {path}"
    _check_parent(path, named)
    check_not_an_input(path, kind=kind, inputs=inputs, option=option)
    if kind == "file" and path.is_dir():
        raise ClipHarError(f"{named} is a folder; give a file name")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise ClipHarError(f"{named} already exists and is a file; give a folder name")
    if kind == "file" and suffixes and path.suffix.lower() not in suffixes:
        endings = " or ".join(suffixes)
        raise UsageError(f"{named}: the file written here is {endings}; give a name ending in it")
    if _occupied(path):
        if not force:
            what = "a folder that is not empty" if path.is_dir() else "a file"
            raise ClipHarError(f"{named} already exists ({what}); use --force to replace it")
        if kind == "dir" and Path.cwd().resolve().is_relative_to(path.resolve()):
            raise UsageError(f"{named} is the working folder or holds it; it is never replaced")
    return path


def manifest_inputs(location: PathLike | None) -> list[PathLike]:
    """A manifest and the image files it lists: all inputs of a command that reads it.
    An unreadable manifest gives just its location (the command reports it when reading)."""
    if location is None:
        return []
    try:
        paths = read_manifest(Path(location))["path"].dropna()
    except (ManifestError, OSError):
        return [location]
    return [location, *paths]


def _check_parent(path: Path, named: str) -> None:
    """The nearest existing folder above ``path`` must be a folder, not a file."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ClipHarError(f"{named}: {parent} is a file, not a folder")
            return


def check_not_an_input(
    path: Path, *, kind: OutputKind, inputs: Iterable[PathLike | None], option: str = "--output"
) -> None:
    """Refuse (:class:`UsageError`) an output that is an input, lies inside one, or, for a
    folder, holds one; the ``--params`` file in use counts as an input. Strings that are
    not existing paths (Hub ids, class lists, globs) are skipped."""
    named = f"{option} {path}"
    target = Path(os.path.realpath(path))  # realpath, unlike resolve, survives symlink loops
    for given in [*inputs, *_settings_files()]:
        if given is None or not os.path.lexists(given):
            continue  # not a path (a Hub id, a class list, a glob): nothing to protect
        source = Path(os.path.realpath(given))
        if target == source:
            raise UsageError(f"{named} is the input {given}; write somewhere else")
        if target.is_relative_to(source):
            raise UsageError(f"{named} is inside the input {given}; write somewhere else")
        if kind == "dir" and source.is_relative_to(target):
            raise UsageError(
                f"{named} holds the input {given}: replacing the folder would delete it"
            )


def _occupied(path: Path) -> bool:
    """An existing file, or a folder with anything in it."""
    if path.is_dir():
        return any(path.iterdir())
    return os.path.lexists(path)


def _settings_files() -> list[PathLike | None]:
    """The params files this run may read: ``--params``, ``$CLIP_HAR_PARAMS``, ``./params.yaml``."""
    return [_params_file.get(), os.environ.get("CLIP_HAR_PARAMS"), "params.yaml"]
