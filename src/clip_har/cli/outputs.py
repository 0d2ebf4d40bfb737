"""One mechanism for what a command writes (docs/cli.md "Outputs").

Every command that writes a file or a folder declares it with :func:`output_option` and
:func:`force_option`, and calls :func:`prepare_output` before any heavy work. The rules:

- an output is never an input, never inside an input, and an output folder never holds
  an input (replacing it would delete the input); symbolic links are resolved;
- an existing file, or a non-empty folder, is replaced only with ``--force``;
- a file where a folder is expected, or a folder where a file is expected, is an error;
- a file whose suffix does not match what is written is a usage error;
- two outputs of one command never overlap (:func:`check_outputs_apart`);
- nothing is left at the output after a failure: files go through
  :func:`clip_har.io.atomic_write`, folders through :func:`clip_har.io.publish_directory`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
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
    _check_kind(path, kind, named)
    if kind == "file" and suffixes and path.suffix.lower() not in suffixes:
        endings = " or ".join(suffixes)
        names = " or ".join(str(path.with_suffix(suffix)) for suffix in suffixes)
        raise UsageError(f"{named}: this command writes {endings} files; name the file {names}")
    if _occupied(path):
        if not force:
            what = "a folder that is not empty" if path.is_dir() else "a file"
            raise ClipHarError(f"{named} already exists ({what}); use --force to replace it")
        if kind == "dir" and Path.cwd().resolve().is_relative_to(path.resolve()):
            raise UsageError(f"{named} is the working folder or holds it; it is never replaced")
    return path


def prepare_cache_folder(
    path: Path | None, *, inputs: Iterable[PathLike | None] = (), option: str
) -> Path | None:
    """Check a folder the command adds to and never replaces (a cache, so no ``--force``)
    before any work: it must be a folder (or not exist yet) and not be an input or lie
    inside one; it may hold inputs. Returns ``path`` (``None`` stays ``None``)."""
    if path is None:
        return None
    named = f"{option} {path}"
    _check_parent(path, named)
    check_not_an_input(path, kind="file", inputs=inputs, option=option)  # "file": may hold some
    _check_kind(path, "dir", named)
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


def _check_kind(path: Path, kind: OutputKind, named: str) -> None:
    """A folder where a file is expected, or a file where a folder is, is an error."""
    if kind == "file" and path.is_dir():
        raise ClipHarError(f"{named} is a folder; give a file name")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise ClipHarError(f"{named} already exists and is a file; give a folder name")


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


def check_outputs_apart(outputs: Mapping[str, Path | None]) -> None:
    """Refuse (:class:`UsageError`) two outputs of one command (option -> path) that are
    the same path or lie one inside the other: publishing (or emptying) the outer one would
    lose the inner one. ``None`` (an output not asked for) is skipped; symbolic links are
    resolved. Call it before :func:`prepare_output`."""
    given = [(option, path) for option, path in outputs.items() if path is not None]
    for option, path in given:
        for other, other_path in given:
            if other == option:
                continue
            inner, outer = Path(os.path.realpath(path)), Path(os.path.realpath(other_path))
            if inner == outer:
                raise UsageError(f"{option} and {other} are both {path}; give each its own path")
            if inner.is_relative_to(outer):
                raise UsageError(
                    f"{option} {path} is inside {other} {other_path}: two outputs may not "
                    "overlap (writing one could replace the other); put it somewhere else"
                )


def _occupied(path: Path) -> bool:
    """An existing file, or a folder with anything in it."""
    if path.is_dir():
        return any(path.iterdir())
    return os.path.lexists(path)


def _settings_files() -> list[PathLike | None]:
    """The params files this run may read: ``--params``, ``$CLIP_HAR_PARAMS``, ``./params.yaml``."""
    return [_params_file.get(), os.environ.get("CLIP_HAR_PARAMS"), "params.yaml"]
