"""Validation: decode every image, reject what cannot be used, report duplicates.

One reason code per rejected row (:data:`REASONS`); duplicates are reported, not rejected.
See docs/data.md#validation.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from clip_har.data.duplicates import DEFAULT_MAX_DISTANCE
from clip_har.data.hashing import perceptual_hash
from clip_har.data.manifest import conform
from clip_har.data.reasons import REASONS
from clip_har.data.report import build_report
from clip_har.errors import DataError, ImageLoadError, ImageProblem
from clip_har.imaging import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, load_image

__all__ = [
    "REASONS",
    "REJECTED_COLUMNS",
    "ValidationResult",
    "check_file",
    "validate",
]

REJECTED_COLUMNS = ["path", "reason", "detail", "label"]
WORKERS = 2
FACT_COLUMNS = ("sha256", "phash", "width", "height", "format", "mode")

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each file."""


@dataclass
class FileCheck:
    """What validating one file found: the refreshed fields, or a rejection."""

    sha256: str | None = None
    phash: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    reason: str | None = None
    detail: str | None = None


@dataclass
class ValidationResult:
    """The clean manifest, the rejection queue and the report."""

    manifest: pd.DataFrame
    rejected: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)

    def require_accepted(self) -> None:
        """Raise :class:`DataError` saying why when no row was accepted (nothing to write)."""
        if len(self.manifest):
            return
        if self.rejected.empty:
            raise DataError("the manifest has no rows to validate")
        raise DataError(no_usable_image(self.rejected, "rejected"))


def no_usable_image(failed: pd.DataFrame, outcome: str) -> str:
    """Why nothing is written when every row failed: ``"all N rows were OUTCOME (reason
    counts; e.g. the first path: why); no image is usable, so nothing was written"``.
    ``failed`` has one row per row, with the columns ``path``, ``reason`` and ``detail``."""
    by_reason = failed["reason"].value_counts().sort_index()
    first = failed.iloc[0]
    reasons = ", ".join(f"{code}: {count}" for code, count in by_reason.items())
    rows = len(failed)
    which = "the only row was" if rows == 1 else f"all {rows} rows were"
    return (
        f"{which} {outcome} ({reasons}; e.g. {first['path']}: "
        f"{first['detail']}); no image is usable, so nothing was written"
    )


def check_file(
    path: str | os.PathLike[str],
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FileCheck:
    """Read, hash and fully decode one file (read-only); never raises for a bad file."""
    location = Path(path)
    try:
        if not location.exists():
            return FileCheck(reason=ImageProblem.MISSING_FILE.value, detail="file not found")
        if location.is_dir():
            return FileCheck(
                reason=ImageProblem.UNREADABLE.value, detail="is a directory, not an image file"
            )
        data = location.read_bytes()
    except OSError as exc:
        return FileCheck(
            reason=ImageProblem.UNREADABLE.value, detail=f"cannot read file ({exc.strerror or exc})"
        )
    sha256 = hashlib.sha256(data).hexdigest()
    if not data:
        return FileCheck(
            sha256=sha256, reason=ImageProblem.EMPTY_FILE.value, detail="empty file (0 bytes)"
        )
    try:
        image = load_image(data, min_side=min_side, max_pixels=max_pixels)
        # EXIF transposition drops .format; read it from the header (no decoding)
        image_format = image.format or Image.open(io.BytesIO(data)).format
        phash = perceptual_hash(image)
    except ImageLoadError as exc:
        return FileCheck(sha256=sha256, reason=exc.code.value, detail=exc.reason)
    except Exception as exc:  # a decoder or converter failing in a way load_image missed
        return FileCheck(
            sha256=sha256,
            reason=ImageProblem.CORRUPT_DATA.value,
            detail=f"{type(exc).__name__}: {exc}",
        )
    return FileCheck(
        sha256=sha256,
        phash=phash,
        width=image.width,
        height=image.height,
        format=image_format,
        mode=image.mode,
    )


def check_files(
    paths: list[Any],
    *,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = WORKERS,
    progress: ProgressCallback | None = None,
) -> list[FileCheck]:
    """:func:`check_file` for every path on a small thread pool, results in input order."""

    def work(path: Any) -> FileCheck:
        if path is None or path is pd.NA or not str(path).strip():
            return FileCheck(
                reason=ImageProblem.MISSING_FILE.value, detail="no path in the manifest"
            )
        return check_file(str(path), min_side=min_side, max_pixels=max_pixels)

    checks: list[FileCheck] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check") as pool:
        for check in pool.map(work, paths):
            checks.append(check)
            if progress is not None:
                progress(len(checks), len(paths))
    return checks


def _label_problem(label: object, labelled: bool, classes: set[str] | None) -> tuple[str, str]:
    """``(reason, detail)`` for a bad label, or ``("", "")``."""
    if not labelled:
        return "", ""
    if label is None or label is pd.NA or (isinstance(label, float) and pd.isna(label)):
        return "empty_label", "no label in a labelled manifest"
    text = str(label).strip()
    if not text:
        return "empty_label", "blank label"
    if classes is not None and text not in classes:
        return "unknown_label", f"label {text!r} is not one of the {len(classes)} known classes"
    return "", ""


def validate(
    frame: pd.DataFrame,
    *,
    classes: list[str] | None = None,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    near_distance: int = DEFAULT_MAX_DISTANCE,
    progress: ProgressCallback | None = None,
    manifest: dict[str, Any] | None = None,
) -> ValidationResult:
    """Validate every row of a manifest; see the module docstring for the reason codes.

    ``manifest`` names the manifest ``frame`` came from in the report (see
    :func:`clip_har.data.manifest.manifest_info`).
    """
    if min_side < 1:
        raise ValueError(f"min_side must be at least 1, got {min_side}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    frame = conform(frame)
    checks = check_files(
        frame["path"].tolist(), min_side=min_side, max_pixels=max_pixels, progress=progress
    )

    labelled = bool(frame["label"].notna().any())
    known = set(classes) if classes is not None else None
    out = frame.copy()
    for column in FACT_COLUMNS:
        out[column] = [getattr(check, column) for check in checks]
    reasons: list[str] = []
    details: list[str] = []
    for check, label in zip(checks, frame["label"].tolist(), strict=True):
        if check.reason is not None:
            reasons.append(check.reason)
            details.append(check.detail or REASONS[check.reason])
            continue
        reason, detail = _label_problem(label, labelled, known)
        reasons.append(reason)
        details.append(detail)
    out["label"] = [
        None if label is None or label is pd.NA else str(label).strip()
        for label in frame["label"].tolist()
    ]
    out = conform(out)

    bad = pd.Series([bool(r) for r in reasons], index=out.index)
    rejected = pd.DataFrame(
        {
            "path": out["path"][bad].astype("string"),
            "reason": [r for r in reasons if r],
            "detail": [d for r, d in zip(reasons, details, strict=True) if r],
            "label": out["label"][bad].astype("string"),
        },
        columns=REJECTED_COLUMNS,
    ).reset_index(drop=True)
    clean = conform(out[~bad])
    report = build_report(
        clean,
        rejected,
        classes=classes,
        near_distance=near_distance,
        settings={"min_side": min_side, "max_pixels": max_pixels, "near_distance": near_distance},
        manifest=manifest,
    )
    return ValidationResult(manifest=clean, rejected=rejected, report=report)
