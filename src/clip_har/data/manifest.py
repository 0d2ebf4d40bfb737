"""The manifest: one Parquet table describing every image of a dataset version.

Each row is one source file (never copied or modified). Columns: docs/data.md#the-manifest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from clip_har.errors import ManifestError
from clip_har.io import atomic_write, file_sha256, noun_form

MANIFEST_FILE = "manifest.parquet"

COLUMNS: dict[str, str] = {
    "path": "string",
    "label": "string",
    "sha256": "string",
    "phash": "string",
    "width": "Int64",
    "height": "Int64",
    "format": "string",
    "mode": "string",
    "split": "string",
    "source": "string",
}


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Add missing optional columns as nulls, order and type every column."""
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"manifest lacks the required {noun_form(len(missing), 'column')} {', '.join(missing)}"
        )
    frame = frame.copy()
    for name in COLUMNS:
        if name not in frame.columns:
            frame[name] = pd.NA
    extra = [c for c in frame.columns if c not in COLUMNS]
    ordered = frame[list(COLUMNS) + extra]
    return ordered.astype(COLUMNS).reset_index(drop=True)


def manifest_path(location: str | Path) -> Path:
    """The file itself for a ``.parquet`` name, else ``DIR/manifest.parquet``.

    Any other existing file is refused, so a manifest is never read from, or written over,
    a file of another kind (a CSV, a photo).
    """
    path = Path(location)
    if path.suffix.lower() == ".parquet" and not path.is_dir():
        return path
    if path.exists() and not path.is_dir():
        raise ManifestError(
            f"{path}: not a folder or a .parquet file (a manifest is DIR/{MANIFEST_FILE})"
        )
    return path / MANIFEST_FILE


def read_manifest(location: str | Path) -> pd.DataFrame:
    """Read and check a manifest (a directory holding ``manifest.parquet``, or the file);
    a manifest without rows is refused."""
    path = manifest_path(location)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise ManifestError(f"{path}: not a readable Parquet manifest ({exc})") from None
    try:
        frame = conform(frame)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    if frame.empty:
        raise ManifestError(
            f"{path}: the manifest has no rows (empty data); import a source that has images"
        )
    frame["path"] = _anchor_paths(frame["path"], path.parent.absolute())
    return frame


def manifest_info(location: str | Path, rows: int | None = None) -> dict[str, Any]:
    """What names a manifest in a report: its absolute path, file sha256 and row count."""
    path = manifest_path(location)
    return {"path": str(path.absolute()), "sha256": file_sha256(path), "rows": rows}


def _anchor_paths(paths: pd.Series, base: Path) -> pd.Series:
    """Stored (relative) paths -> absolute, normalised paths."""
    return paths.map(lambda p: os.path.normpath(base / p), na_action="ignore").astype("string")


def _relative_paths(paths: pd.Series, base: Path) -> pd.Series:
    """Absolute paths -> POSIX paths relative to ``base`` (absolute where impossible)."""

    def relative(value: str) -> str:
        try:
            return Path(os.path.relpath(value, base)).as_posix()
        except ValueError:  # another drive on Windows
            return value

    return paths.map(relative, na_action="ignore").astype("string")


def write_manifest(
    frame: pd.DataFrame, location: str | Path, *, published: str | Path | None = None
) -> Path:
    """Write atomically to ``DIR/manifest.parquet`` (or the given ``.parquet`` file).

    ``published`` is the folder ``location`` will be moved to when it is a staging folder
    (:func:`clip_har.io.publish_directory`): image paths are stored relative to it.

    An empty frame is refused: no command may create a manifest without rows (callers
    check first, to say why their result is empty).
    """
    path = manifest_path(location)
    if frame.empty:
        raise ManifestError(f"refusing to write {path}: the manifest has no rows (empty data)")
    stored = conform(frame)
    base = path.parent if published is None else manifest_path(published).parent
    stored["path"] = _relative_paths(stored["path"], base.absolute())
    with atomic_write(path) as staging:
        stored.to_parquet(staging, index=False)
    return path
