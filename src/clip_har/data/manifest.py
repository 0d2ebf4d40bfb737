"""The manifest: one Parquet table describing every image of a dataset version.

Each row is one source file (never copied or modified). Columns:

=========  =======  ===============================================================
path       string   path of the source file: absolute in memory; on disk relative to the
                    manifest's folder, so a repository clone (or a ``dvc pull``) that keeps
                    the layout finds its files wherever it lives
label      string   class name; null for unlabelled data
sha256     string   hex digest of the file bytes (null if the file could not be read)
phash      string   64-bit perceptual hash as 16 hex chars (null if not decodable)
width      Int64    pixels after EXIF orientation (null if not decodable)
height     Int64
format     string   Pillow format name, e.g. JPEG, PNG (null if not an image)
mode       string   Pillow mode, e.g. RGB, L, RGBA, CMYK, I;16 (null if not decodable)
split      string   train / val / test, or null before splitting
source     string   where the row came from, e.g. "folder:/data/har", "hf:NAME:split"
=========  =======  ===============================================================
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from clip_har.errors import ClipHarError

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


class ManifestError(ClipHarError):
    """A manifest file is missing or does not have the expected columns."""


def empty_manifest() -> pd.DataFrame:
    """A manifest with no rows and every column typed."""
    return conform(pd.DataFrame({name: [] for name in COLUMNS}))


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Add missing optional columns as nulls, order and type every column."""
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise ManifestError(f"manifest lacks required column(s): {', '.join(missing)}")
    frame = frame.copy()
    for name in COLUMNS:
        if name not in frame.columns:
            frame[name] = pd.NA
    extra = [c for c in frame.columns if c not in COLUMNS]
    ordered = frame[list(COLUMNS) + extra]
    return ordered.astype(COLUMNS).reset_index(drop=True)


def manifest_path(location: str | Path) -> Path:
    """``DIR/manifest.parquet`` for a directory, or the file itself."""
    path = Path(location)
    return path / MANIFEST_FILE if path.is_dir() or not path.suffix else path


def read_manifest(location: str | Path) -> pd.DataFrame:
    """Read and check a manifest (a directory holding ``manifest.parquet``, or the file)."""
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
    frame["path"] = _anchor_paths(frame["path"], path.parent.absolute())
    return frame


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


def write_manifest(frame: pd.DataFrame, location: str | Path) -> Path:
    """Write atomically to ``DIR/manifest.parquet`` (or the given ``.parquet`` file)."""
    path = manifest_path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(handle)
    try:
        stored = conform(frame)
        stored["path"] = _relative_paths(stored["path"], path.parent.absolute())
        stored.to_parquet(staging, index=False)
        umask = os.umask(0)
        os.umask(umask)
        Path(staging).chmod(0o666 & ~umask)  # mkstemp files are owner-only
        Path(staging).replace(path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return path
