"""Turn any supported data source into a manifest (see :mod:`clip_har.data.manifest`).

Source files are only ever read. Source kinds and the image cache: docs/data.md#sources.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from clip_har.data.manifest import conform
from clip_har.data.validate import FACT_COLUMNS, check_files, no_usable_image
from clip_har.errors import SourceError
from clip_har.imaging import DEFAULT_MAX_PIXELS, has_image_name
from clip_har.io import plural, read_text_input, write_bytes_atomic

logger = logging.getLogger(__name__)

__all__ = ["import_source"]

Progress = Callable[[int, int], None]

FILENAME_COLUMNS = ("filename", "file", "path", "image", "file_name", "filepath", "image_path")
LABEL_COLUMNS = ("label", "class", "category", "class_name")
CSV_LAYOUTS = (("labels.csv", "images"), ("Training_set.csv", "train"))
HUB_PROBE_TIMEOUT_S = 5.0
_BATCH = 256
_EXPECTED = (
    "expected one of: a directory with labels.csv (+ images/) or Training_set.csv + train/; "
    "a .csv file (with --images-dir); a directory of class sub-folders of images; "
    "a flat directory of images; a datasets save_to_disk directory; a directory of "
    "*.parquet files; or hf:NAME[:split]"
)


@dataclass(frozen=True)
class _Entry:
    """One manifest row before hashing: where the file is and what it is labelled."""

    path: Path
    label: str | None


def import_source(
    source: str,
    *,
    images_dir: Path | None = None,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 4,
) -> pd.DataFrame:
    """Read ``source`` into a manifest: one row per image, hashed and measured.

    ``images_dir`` applies to CSV sources; ``cache_dir`` (default: the settings' cache)
    holds images extracted from datasets; ``max_pixels`` guards decoding (bigger images
    keep null size columns); ``progress(done, total)`` is called as files are hashed.
    A source without rows (a header-only CSV, an empty dataset), or none of whose files
    exists or can be read, is a :class:`SourceError`.
    """
    entries, origin = _entries(source, images_dir, cache_dir)
    if not entries:
        raise SourceError(f"{origin}: the source has no rows; there is nothing to import")
    logger.info("%s: %s to hash", origin, plural(len(entries), "file"))
    checks = check_files(
        [e.path for e in entries],
        min_side=1,
        max_pixels=max_pixels,
        workers=max(2, min(workers, 4)),
        progress=progress,
    )
    if all(check.sha256 is None for check in checks):  # not one listed file exists or reads
        unreadable = pd.DataFrame(
            {
                "path": [str(e.path) for e in entries],
                "reason": [c.reason for c in checks],
                "detail": [c.detail for c in checks],
            }
        )
        raise SourceError(f"{origin}: {no_usable_image(unreadable, 'unreadable')}")
    frame = pd.DataFrame(
        {
            "path": [str(e.path) for e in entries],
            "label": [e.label for e in entries],
            **{column: [getattr(c, column) for c in checks] for column in FACT_COLUMNS},
            "split": [None] * len(entries),
            "source": [origin] * len(entries),
        }
    )
    return conform(frame)


# --------------------------------------------------------------------------- detection


def _entries(
    source: str, images_dir: Path | None, cache_dir: Path | None
) -> tuple[list[_Entry], str]:
    if source.startswith("hf:"):
        _no_images_dir(images_dir, "hf:")
        return _hub_entries(source, _datasets_cache(cache_dir))
    path = _absolute(Path(source).expanduser())
    if not path.exists():
        raise SourceError(f"source not found: {path} ({_EXPECTED})")
    if path.is_file():
        return _file_entries(path, images_dir)
    return _directory_entries(path, images_dir, cache_dir)


def _file_entries(path: Path, images_dir: Path | None) -> tuple[list[_Entry], str]:
    if path.suffix.lower() in (".csv", ".tsv"):
        return _csv_entries(path, images_dir or path.parent), f"csv:{path}"
    raise SourceError(f"{path}: unsupported source file type '{path.suffix}' ({_EXPECTED})")


def _directory_entries(
    root: Path, images_dir: Path | None, cache_dir: Path | None
) -> tuple[list[_Entry], str]:
    for csv_name, folder in CSV_LAYOUTS:
        csv_path = root / csv_name
        if csv_path.is_file():
            default = root / folder if (root / folder).is_dir() else root
            return _csv_entries(csv_path, images_dir or default), f"csv:{csv_path}"
    _no_images_dir(images_dir, "directory")
    if _is_saved_dataset(root):
        return _saved_dataset_entries(root, _datasets_cache(cache_dir))
    found = _folder_entries(root)
    if found:
        return found, f"folder:{root}"
    parquet = sorted(root.rglob("*.parquet"))
    if parquet:
        return _parquet_entries(root, parquet, _datasets_cache(cache_dir))
    raise SourceError(f"{root}: no images, CSV, saved dataset or parquet files found ({_EXPECTED})")


def _no_images_dir(images_dir: Path | None, kind: str) -> None:
    if images_dir is not None:
        raise SourceError(f"--images-dir applies to CSV sources only, not to a {kind} source")


def _absolute(path: Path) -> Path:
    """Absolute and normalised, without resolving symlinks (DVC may link data files)."""
    return Path(os.path.normpath(path.absolute()))


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


# --------------------------------------------------------------------------- folders


def _folder_entries(root: Path) -> list[_Entry]:
    """Class sub-folders (label = folder name) and loose images at the top (unlabelled)."""
    children = sorted(p for p in root.iterdir() if _visible(p))
    loose = [_Entry(p, None) for p in children if p.is_file() and has_image_name(p)]
    labelled: list[_Entry] = []
    for folder in (p for p in children if p.is_dir()):
        labelled.extend(_Entry(p, folder.name) for p in _images_below(folder))
    if loose and labelled:
        logger.warning(
            "%s: %s beside the class sub-folders, imported unlabelled",
            root,
            plural(len(loose), "image"),
        )
    return labelled + loose


def _images_below(folder: Path) -> list[Path]:
    found: list[Path] = []
    for directory, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(directory) / n for n in sorted(filenames) if has_image_name(Path(n)))
    return found


# --------------------------------------------------------------------------- CSV


def _csv_entries(csv_path: Path, images_dir: Path) -> list[_Entry]:
    if not images_dir.is_dir():
        raise SourceError(f"images directory not found: {images_dir} (for {csv_path})")
    table = _read_csv(csv_path)
    name_col = _pick_column(table, FILENAME_COLUMNS, csv_path, "filename")
    label_col = _label_column(table, name_col, csv_path)
    base = _absolute(images_dir)
    entries: list[_Entry] = []
    skipped = 0
    for name, label in zip(
        table[name_col], table[label_col] if label_col else [""] * len(table), strict=True
    ):
        if not name:
            skipped += 1
            continue
        entries.append(_Entry(_absolute(base / name), label or None))
    if not entries:
        raise SourceError(
            f"{csv_path}: no data rows to import "
            + (
                f"({plural(skipped, 'row')}, none with a filename)"
                if skipped
                else "(only a header)"
            )
        )
    if skipped:
        logger.warning("%s: skipped %s without a filename", csv_path, plural(skipped, "row"))
    missing = sum(not e.path.is_file() for e in entries)
    if missing:
        logger.warning("%s: %s not found under %s", csv_path, plural(missing, "listed file"), base)
    return entries


def _read_csv(csv_path: Path) -> pd.DataFrame:
    """All cells as stripped strings; BOM, CRLF and blank lines are handled."""
    try:
        table = pd.read_csv(
            io.StringIO(read_text_input(csv_path, "label table", SourceError)),
            sep="\t" if csv_path.suffix.lower() == ".tsv" else ",",
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError) as exc:
        raise SourceError(f"{csv_path}: cannot read CSV ({exc})") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table.apply(lambda column: column.str.strip())


def _pick_column(table: pd.DataFrame, names: Iterable[str], csv_path: Path, what: str) -> str:
    found = _find_column(table.columns, names)
    if found is None:
        raise SourceError(
            f"{csv_path}: no {what} column; expected one of {', '.join(names)} "
            f"(case-insensitive), found: {', '.join(map(str, table.columns)) or 'none'}"
        )
    return found


def _find_column(columns: Iterable[Any], names: Iterable[str]) -> str | None:
    by_lower = {str(c).lower(): str(c) for c in reversed(list(columns))}
    return next((by_lower[n] for n in names if n in by_lower), None)


def _label_column(table: pd.DataFrame, name_col: str, csv_path: Path) -> str | None:
    """The label column; a CSV with only a filename column is an unlabelled list."""
    if len(table.columns) == 1:
        logger.info("%s: only a %s column, importing unlabelled", csv_path, name_col)
        return None
    return _pick_column(table, LABEL_COLUMNS, csv_path, "label")


# --------------------------------------------------------------------------- datasets


def _datasets_cache(cache_dir: Path | None) -> Path:
    if cache_dir is None:
        from clip_har.config import load_settings

        cache_dir = load_settings().cache_dir
    return Path(cache_dir).expanduser() / "datasets"


def _is_saved_dataset(root: Path) -> bool:
    if (root / "dataset_dict.json").is_file():
        return True
    return (root / "state.json").is_file() and (root / "dataset_info.json").is_file()


def _saved_dataset_entries(root: Path, cache: Path) -> tuple[list[_Entry], str]:
    import datasets

    try:
        loaded: Any = datasets.load_from_disk(str(root))
    except Exception as exc:  # datasets raises several types for broken folders
        raise SourceError(f"{root}: cannot load the saved dataset ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        entries: list[_Entry] = []
        for split in loaded:
            entries.extend(_dataset_entries(loaded[split], cache, f"{root}:{split}"))
        return entries, f"disk:{root}"
    return _dataset_entries(loaded, cache, str(root)), f"disk:{root}"


def _parquet_entries(root: Path, files: list[Path], cache: Path) -> tuple[list[_Entry], str]:
    import datasets
    import pyarrow.parquet as pq

    entries: list[_Entry] = []
    for file in files:
        try:
            table = pq.read_table(file)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise SourceError(f"{file}: not a readable parquet file ({exc})") from None
        entries.extend(_dataset_entries(datasets.Dataset(table), cache, str(file)))
    return entries, f"parquet:{root}"


def _dataset_entries(dataset: Any, cache: Path, where: str) -> list[_Entry]:
    """Write each image of an in-memory/on-disk ``datasets.Dataset`` to the cache once."""
    image_col = _image_column(dataset, where)
    label_col, names = _dataset_label(dataset, image_col, where)
    columns = [image_col] + ([label_col] if label_col else [])
    raw = _undecoded(dataset.select_columns(columns), image_col)
    entries: list[_Entry] = []
    for batch in raw.iter(batch_size=_BATCH):
        labels = batch[label_col] if label_col else [None] * len(batch[image_col])
        for image, label in zip(batch[image_col], labels, strict=True):
            entries.append(_Entry(_store_image(image, cache, where), _label_name(label, names)))
    return entries


def _image_column(dataset: Any, where: str) -> str:
    import datasets

    features = dataset.features
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return str(name)
    for name, feature in features.items():
        if isinstance(feature, dict) and "bytes" in feature:
            return str(name)
    raise SourceError(
        f"{where}: no image column; expected a datasets Image feature or a column of "
        f"{{bytes, path}} records, found: {', '.join(map(str, features))}"
    )


def _dataset_label(dataset: Any, image_col: str, where: str) -> tuple[str | None, list[str] | None]:
    """The label column and, for a ClassLabel, its names."""
    import datasets

    features = dataset.features
    for name, feature in features.items():
        if isinstance(feature, datasets.ClassLabel):
            return str(name), list(feature.names)
    column = _find_column([n for n in features if n != image_col], LABEL_COLUMNS)
    if column is None:
        logger.warning("%s: no ClassLabel or label column; importing unlabelled", where)
    return column, None


def _undecoded(dataset: Any, image_col: str) -> Any:
    import datasets

    if isinstance(dataset.features[image_col], datasets.Image):
        return dataset.cast_column(image_col, datasets.Image(decode=False))
    return dataset


def _label_name(value: Any, names: list[str] | None) -> str | None:
    if value is None:
        return None
    if names is not None:
        index = int(value)
        return names[index] if 0 <= index < len(names) else None  # -1: no label
    text = str(value).strip()
    return text or None


def _store_image(image: Any, cache: Path, where: str) -> Path:
    """Cache path of the image's bytes, or its own local file when it has no bytes."""
    record = image if isinstance(image, dict) else {}
    data, origin = record.get("bytes"), record.get("path")
    if data:
        return _cache_bytes(bytes(data), cache, origin)
    if origin and Path(origin).is_file():
        return _absolute(Path(origin))
    logger.warning("%s: an image has neither bytes nor a local file (%s)", where, origin)
    return _absolute(cache / "missing" / Path(str(origin or "unknown")).name)


_MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


def _extension(data: bytes, origin: str | None) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    suffix = Path(origin).suffix.lower() if origin else ""
    return suffix if suffix and len(suffix) <= 6 and suffix[1:].isalnum() else ".bin"


def _cache_bytes(data: bytes, cache: Path, origin: str | None) -> Path:
    target = cache / f"{hashlib.sha256(data).hexdigest()}{_extension(data, origin)}"
    if not target.is_file():
        write_bytes_atomic(target, data)
    return _absolute(target)


# --------------------------------------------------------------------------- the Hub


def _hub_entries(source: str, cache: Path) -> tuple[list[_Entry], str]:
    name, split = _parse_hub(source)
    if not _hub_offline_mode():
        _probe_hub(name, split)
    import datasets

    try:
        dataset: Any = datasets.load_dataset(name, split=split)
    except Exception as exc:  # network, missing repo, unknown split: many types
        raise SourceError(_hub_message(name, split, _first_line(exc))) from None
    return _dataset_entries(dataset, cache, f"hf:{name}:{split}"), f"hf:{name}:{split}"


def _parse_hub(source: str) -> tuple[str, str]:
    name, _, split = source.removeprefix("hf:").partition(":")
    name, split = name.strip(), split.strip() or "train"
    if not name or name.count("/") > 1:
        raise SourceError(
            f"'{source}': expected hf:NAME[:split], e.g. hf:Bingsu/Human_Action_Recognition:train"
        )
    return name, split


def _hub_offline_mode() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(
        f.upper() in {"1", "ON", "YES", "TRUE"} for f in flags
    )


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _probe_hub(name: str, split: str) -> None:
    """Fail in seconds when the Hub cannot be reached (``datasets`` retries for ~25 s)."""
    endpoint = _hub_endpoint()
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # the server answered: it is reachable
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(
            _hub_message(name, split, f"the Hub at {endpoint} is unreachable: {reason}")
        ) from None


def _hub_message(name: str, split: str, reason: str) -> str:
    return (
        f"Hugging Face dataset '{name}' (split '{split}') could not be loaded ({reason}). "
        "Fixes: import a local copy instead, i.e. a directory written by "
        f"`datasets.load_dataset('{name}').save_to_disk(DIR)` or a directory of its "
        "*.parquet files (`clip-har data import DIR`); run the import once on a machine "
        "connected to the Hugging Face Hub; or set HF_HUB_OFFLINE=1 with HF_HOME pointing "
        "at a cache that already holds the dataset."
    )


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
