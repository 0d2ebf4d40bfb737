"""Turn command-line inputs (files, folders, globs) into an ordered list of image paths."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from clip_har.imaging import images_under


@dataclass
class CollectedInputs:
    """Image paths in a stable order, plus the inputs that matched nothing."""

    paths: list[Path] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)


def collect_inputs(inputs: Iterable[str]) -> CollectedInputs:
    """Files are taken as given; folders are searched recursively for image suffixes;
    anything else is treated as a glob pattern. Duplicates are dropped."""
    found = CollectedInputs()
    seen: set[Path] = set()

    def add(paths: Iterable[Path]) -> None:
        for path in paths:
            if path not in seen:
                seen.add(path)
                found.paths.append(path)

    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            add([path])
        elif path.is_dir():
            add(images_under(path))
        else:
            pattern = str(path)  # a user's glob may be absolute, so Path.glob does not fit
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))  # noqa: PTH207
            files = [m for m in matches if m.is_file()]
            for folder in (m for m in matches if m.is_dir()):
                files.extend(images_under(folder))
            if files:
                add(files)
            else:
                found.unmatched.append(item)
    return found
