"""Turn command-line inputs (files, folders, globs) into an ordered list of image paths,
and a problem for every input that gives no image (so each can be reported in its place)."""

from __future__ import annotations

import errno
import glob
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from clip_har.errors import ImageProblem
from clip_har.imaging import images_under


@dataclass(frozen=True)
class InputProblem:
    """A named input that gives no image: the input as typed, a code and the reason."""

    input: str
    code: ImageProblem
    reason: str


Entry = Path | InputProblem


@dataclass
class CollectedInputs:
    """What the inputs named, in their order: image paths (each once) and, in the place of
    every input that gives no image, its :class:`InputProblem`."""

    entries: list[Entry] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        """The image paths to predict, in input order."""
        return [entry for entry in self.entries if isinstance(entry, Path)]

    @property
    def problems(self) -> list[InputProblem]:
        """The inputs that give no image, each with its reason."""
        return [entry for entry in self.entries if isinstance(entry, InputProblem)]

    @property
    def unmatched(self) -> list[str]:
        """The inputs that give no image, as typed."""
        return [problem.input for problem in self.problems]


def collect_inputs(inputs: Iterable[str]) -> CollectedInputs:
    """Files are taken as given; folders are searched recursively for image suffixes;
    a name that does not exist but has glob characters is a pattern. Duplicates are
    dropped. Every input that gives no image (missing, a symlink loop, not a regular file,
    unreadable, a folder without images, a pattern matching nothing) becomes an
    :class:`InputProblem` in its place."""
    found = CollectedInputs()
    seen: set[Path | str] = set()
    for item in inputs:
        for entry in _expand(item):
            key = entry if isinstance(entry, Path) else entry.input
            if key not in seen:
                seen.add(key)
                found.entries.append(entry)
    return found


def _expand(item: str, *, literal: bool = False) -> list[Entry]:
    """The images ``item`` names, or the one problem that stops it giving any (``literal``:
    never read it as a glob pattern)."""
    path = Path(item).expanduser()
    try:
        mode = path.stat().st_mode  # follows symbolic links
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not literal and glob.has_magic(item):
            return _expand_pattern(item, str(path))
        return [_stat_problem(item, path, exc)]
    if stat.S_ISREG(mode):
        return [path]
    if stat.S_ISDIR(mode):
        return _expand_folder(item, path)
    return [
        InputProblem(
            item, ImageProblem.NOT_A_FILE, "not a regular file or folder (a device, socket or pipe)"
        )
    ]


def _stat_problem(item: str, path: Path, exc: OSError) -> InputProblem:
    """Why ``path`` cannot be looked at, from the error of ``stat``."""
    if exc.errno == errno.ELOOP:
        return InputProblem(
            item, ImageProblem.SYMLINK_LOOP, "symbolic link loop (the links never reach a file)"
        )
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        if path.is_symlink():
            target = path.readlink()
            return InputProblem(
                item, ImageProblem.MISSING_FILE, f"broken symbolic link (to {target}, not found)"
            )
        return InputProblem(item, ImageProblem.MISSING_FILE, "file not found")
    return InputProblem(item, ImageProblem.UNREADABLE, f"cannot read ({exc.strerror or exc})")


def _expand_folder(item: str, folder: Path) -> list[Entry]:
    """Every image below ``folder``, or why there is none."""
    try:
        with os.scandir(folder):
            pass
    except OSError as exc:  # a folder it may not list would otherwise look empty
        return [
            InputProblem(
                item, ImageProblem.UNREADABLE, f"cannot list the folder ({exc.strerror or exc})"
            )
        ]
    images = images_under(folder)
    if not images:
        return [
            InputProblem(
                item, ImageProblem.NO_IMAGES, "no image files in this folder (searched recursively)"
            )
        ]
    return list(images)


def _expand_pattern(item: str, pattern: str) -> list[Entry]:
    """What a glob pattern matches: its files, the images in its folders, and the named
    entries it matches that are unusable (a broken link, a loop). Nothing usable: one
    problem for the pattern."""
    # a user's pattern may be absolute, so Path.glob does not fit
    matches = sorted(glob.glob(pattern, recursive=True))  # noqa: PTH207
    entries: list[Entry] = []
    for match in matches:
        entries.extend(
            entry
            for entry in _expand(match, literal=True)
            if isinstance(entry, Path) or entry.code is not ImageProblem.NO_IMAGES
        )
    if entries:
        return entries
    reason = (
        "matches only folders without image files" if matches else "no file matches this pattern"
    )
    return [InputProblem(item, ImageProblem.NO_IMAGES, reason)]
