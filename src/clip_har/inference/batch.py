"""Batch inference, engine-agnostic: which inputs (a folder, a glob or a manifest), which of
them a shard takes, the resumable result files (CSV, JSON Lines, Parquet), the merge of
shard outputs with its checks, and the per-class summary. ``clip-har batch`` runs it with a
bundle or against the HTTP API (docs/apps.md "Batch inference").

**Keys.** Every input has a key: its path relative to the folder given, to the literal part
of the glob pattern, or to the manifest's folder (a CSV manifest: the name as listed), in
POSIX form. Machines that mount the data in different places agree on the keys, so shard
outputs made on different machines merge, and a rerun knows what is already done.

**Shards.** An input belongs to shard ``int(sha256(key)[:16], 16) % N``. A hash of the key,
not the position in the sorted list: a key's shard depends on nothing else, so it does not
move when a machine sees a file more or less (a position would shift every later input and
an input could be done twice or never), nor with listing order, file system or Python's
per-process ``hash`` seed. The price is shards of roughly, not exactly, equal size.

**Resuming.** Rows are appended and flushed one by one (CSV, JSON Lines: one line per row,
newlines in messages are replaced by spaces). On a rerun, the keys already in the output are
skipped; a half-written last line (a killed process) is cut off first and its input is
predicted again. Parquet cannot be appended to, so rows go to whole part files, each
published atomically, in ``OUT.parquet.parts/``; closing the writer (at the end, or on
Ctrl-C) combines the output and its parts into ``OUT.parquet`` atomically and then deletes
the parts. After a hard kill the parts stay and a rerun reads them, so nothing written is
lost in any format. Every row records the shard (``I/N``) of the run that wrote it: a run
refuses to resume another shard's output.

**Merging.** :func:`merge_outputs` checks, from the rows' shards, that the outputs are the
shards ``0/N`` … ``N-1/N`` once each (so a missing shard is found without the source), then
that no key is in two rows and, given the source's inputs, that none is missing.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from clip_har.data.manifest import MANIFEST_FILE, manifest_path, read_manifest
from clip_har.data.sources import CSV_LAYOUTS, FILENAME_COLUMNS
from clip_har.errors import BatchOutputError, ClipHarError, ImageProblem, UsageError
from clip_har.imaging import has_image_name, images_under
from clip_har.inference.predictor import FileResult, Predictor
from clip_har.io import atomic_write, plural, read_text_input

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")
"""The result file formats, chosen by the output's name."""

COLUMNS = (
    "path",
    "label",
    "confidence",
    "top_k",
    "model",
    "format",
    "error",
    "error_code",
    "shard",
)
"""The columns of every result file, in order; ``shard`` is the ``I/N`` of the run that
wrote the row (``0/1`` unsharded), so that a merge can tell when a shard is missing."""

LEGACY_COLUMNS = COLUMNS[:-1]
"""The columns of outputs written before rows recorded their shard (still readable)."""

API_IMAGE_PROBLEMS: dict[str, ImageProblem] = {
    "empty_image": ImageProblem.EMPTY_FILE,
    "image_too_small": ImageProblem.TOO_SMALL,
    "image_too_large": ImageProblem.TOO_LARGE,
    "payload_too_large": ImageProblem.TOO_LARGE,  # one image over the upload cap
    "unsupported_media_type": ImageProblem.NOT_AN_IMAGE,  # the bytes are no image type
    "invalid_image": ImageProblem.CORRUPT_DATA,  # an image type whose data does not decode
}
"""The API's error codes for one image, as the :class:`ImageProblem` codes a bundle gives,
so that ``error_code`` means the same whatever backend wrote a row."""


def api_error_code(code: str) -> str:
    """The ``error_code`` of a row for the API's ``code``: its :class:`ImageProblem` code
    (:data:`API_IMAGE_PROBLEMS`), or the API's own code when no image problem matches."""
    problem = API_IMAGE_PROBLEMS.get(code)
    return problem.value if problem is not None else code


MANIFEST_SUFFIXES = (".parquet", ".csv", ".tsv")
PARTS_SUFFIX = ".parts"  # OUT.parquet.parts/: the Parquet writer's published row groups
PART_ROWS = 256  # a Parquet part is published after this many rows…
PART_SECONDS = 10.0  # …or this many seconds, whichever comes first
NAMED = 5  # how many keys a merge error names


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, order=True)
class BatchInput:
    """One image to predict: its stable ``key`` and where it is on this machine."""

    key: str
    path: Path = field(compare=False)


def list_inputs(source: str) -> list[BatchInput]:
    """The images ``source`` names, sorted by key, each key once: a folder (searched
    recursively), a glob pattern, a data manifest (a folder holding ``manifest.parquet``,
    or a ``.parquet`` file), a CSV/TSV with a filename column, or one image file.

    Raises :class:`ClipHarError` when ``source`` does not exist or names no image, and
    :class:`UsageError` for a file that is none of these."""
    path = Path(source).expanduser()
    if not os.path.lexists(path) and glob.has_magic(source):
        found = _pattern_inputs(source)
    elif not path.exists():
        raise ClipHarError(f"{source}: no such file or folder (nor a glob pattern)")
    elif path.is_dir() and (path / MANIFEST_FILE).is_file():
        found = _parquet_manifest_inputs(path)
    elif path.is_dir():
        found = [_input(image, path) for image in images_under(path)]
    elif path.suffix.lower() == ".parquet":
        found = _parquet_manifest_inputs(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        found = _csv_manifest_inputs(path)
    elif has_image_name(path):
        found = [BatchInput(path.name, path)]
    else:
        raise UsageError(
            f"{source}: not a folder, a glob pattern, an image, or a manifest "
            f"({', '.join(MANIFEST_SUFFIXES)}, or a folder holding {MANIFEST_FILE})"
        )
    unique = _unique(found, source)
    if not unique:
        raise ClipHarError(f"{source}: no image files found")
    return unique


def _input(image: Path, base: Path) -> BatchInput:
    return BatchInput(Path(os.path.relpath(image, base)).as_posix(), image)


def _unique(found: Iterable[BatchInput], source: str) -> list[BatchInput]:
    """Sorted by key, each key once (the first listed wins; duplicates are logged)."""
    listed = list(found)
    by_key: dict[str, BatchInput] = {}
    for item in listed:
        by_key.setdefault(item.key, item)
    if len(listed) > len(by_key):
        logger.warning(
            "%s: %s listed more than once, predicted once",
            source,
            plural(len(listed) - len(by_key), "input"),
        )
    return sorted(by_key.values())


def _pattern_inputs(pattern: str) -> list[BatchInput]:
    """What a glob matches: image files, and the images in matched folders; keys are
    relative to the pattern's literal leading folders."""
    parts = Path(pattern).expanduser().parts
    literal = list(_leading(parts))
    base = Path(*literal)
    found: list[BatchInput] = []
    # a user's pattern may be absolute, so Path.glob does not fit
    for match in sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True)):  # noqa: PTH207
        hit = Path(match)
        if hit.is_dir():
            found.extend(_input(image, base) for image in images_under(hit))
        elif hit.is_file() and has_image_name(hit):
            found.append(_input(hit, base))
    return found


def _leading(parts: Sequence[str]) -> Iterator[str]:
    """The parts of a pattern before its first one with glob characters (not the last)."""
    for part in parts[:-1]:
        if glob.has_magic(part):
            return
        yield part


def _parquet_manifest_inputs(location: Path) -> list[BatchInput]:
    """The images of a data manifest, keyed by their path relative to its folder."""
    base = manifest_path(location).parent.absolute()
    paths = read_manifest(location)["path"].dropna()
    return [_input(Path(path), base) for path in paths]


def _csv_manifest_inputs(table: Path) -> list[BatchInput]:
    """The images a CSV/TSV lists in its filename column (``filename``, ``path``, … as
    ``clip-har data import`` reads them), keyed by the name as listed. Names are relative to
    the table's folder, or to ``images/`` beside ``labels.csv`` (the layouts import knows)."""
    text = read_text_input(table, "image list", ClipHarError)
    rows = list(csv.reader(text.splitlines(), delimiter="\t" if table.suffix == ".tsv" else ","))
    if not rows:
        raise ClipHarError(f"{table}: empty file; expected a header with a filename column")
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(name) for name in FILENAME_COLUMNS if name in header), None)
    if column is None:
        raise ClipHarError(
            f"{table}: no filename column; expected one of {', '.join(FILENAME_COLUMNS)}, "
            f"found: {', '.join(rows[0]) or 'none'}"
        )
    base = table.parent
    for name, folder in CSV_LAYOUTS:
        if table.name == name and (table.parent / folder).is_dir():
            base = table.parent / folder
    found: list[BatchInput] = []
    for row in rows[1:]:
        name = row[column].strip() if column < len(row) else ""
        if name:
            key = Path(name).as_posix()
            found.append(BatchInput(key, Path(name) if Path(name).is_absolute() else base / name))
    return found


# --------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 <= index < count``): see the module docstring."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"``, as ``--shard`` takes it; anything else is a :class:`UsageError`."""
        index, slash, count = text.partition("/")
        try:
            shard = cls(int(index), int(count)) if slash else None
        except ValueError:
            shard = None
        if shard is None or shard.count < 1 or not 0 <= shard.index < shard.count:
            raise UsageError(
                f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/3, 1/3 and 2/3 "
                "(a Kubernetes Indexed Job: $JOB_COMPLETION_INDEX/N)"
            )
        return shard

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def take(self, inputs: Iterable[BatchInput]) -> list[BatchInput]:
        """The inputs of this shard, in the order given."""
        return [item for item in inputs if shard_of(item.key, self.count) == self.index]


def shard_of(key: str, count: int) -> int:
    """The shard of ``key`` among ``count``: stable on every machine and Python."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:16], 16) % count


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class BatchRow:
    """One line of a result file: a prediction, or the error that stopped one."""

    path: str
    label: str | None = None
    confidence: float | None = None
    top_k: tuple[tuple[str, float], ...] = ()
    model: str | None = None
    format: str | None = None
    error: str | None = None
    error_code: str | None = None
    shard: str | None = None  # "I/N" of the run that wrote it; None: an older output

    @classmethod
    def of(cls, key: str, result: FileResult, model: str, model_format: str) -> BatchRow:
        """The row of a :class:`FileResult` from a Predictor."""
        prediction = result.prediction
        if prediction is None:
            return cls(
                key,
                model=model,
                format=model_format,
                error=result.error or "failed",
                error_code=result.code.value if result.code else None,
            )
        return cls(
            key,
            label=prediction.label,
            confidence=round(prediction.score, 6),
            top_k=tuple((label, round(score, 6)) for label, score in prediction.top_k),
            model=model,
            format=model_format,
        )

    def record(self) -> dict[str, Any]:
        """A JSON-ready record; ``top_k`` is a list of ``{label, confidence}``."""
        return {
            "path": self.path,
            "label": self.label,
            "confidence": self.confidence,
            "top_k": [{"label": label, "confidence": score} for label, score in self.top_k],
            "model": self.model,
            "format": self.format,
            "error": _one_line(self.error),
            "error_code": self.error_code,
            "shard": self.shard,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> BatchRow:
        """The inverse of :meth:`record` (values read back from any result format)."""
        top_k = record.get("top_k") or []
        confidence = record.get("confidence")
        return cls(
            path=str(record["path"]),
            label=record.get("label") or None,
            confidence=None if confidence in (None, "") else float(confidence),
            top_k=tuple((str(item["label"]), float(item["confidence"])) for item in top_k),
            model=record.get("model") or None,
            format=record.get("format") or None,
            error=record.get("error") or None,
            error_code=record.get("error_code") or None,
            shard=record.get("shard") or None,
        )


def _one_line(text: str | None) -> str | None:
    """Messages go on one line, so that every row is one line of a CSV or JSONL file."""
    return " ".join(text.split()) if text else text


def predict_rows(
    predictor: Predictor, inputs: Sequence[BatchInput], model: str, model_format: str
) -> Generator[BatchRow, None, None]:
    """One row per input, in order, from a local Predictor (batched, decoded in threads)."""
    results = predictor.predict_files(item.path for item in inputs)
    for item, result in zip(inputs, results, strict=True):
        yield BatchRow.of(item.key, result, model, model_format)


# --------------------------------------------------------------------------- writers


class RowWriter(Protocol):
    """Appends rows to a result file; ``close`` leaves a complete, readable file."""

    path: Path

    def append(self, row: BatchRow) -> None: ...

    def close(self) -> None: ...


def check_output_suffix(path: Path, option: str = "--output") -> None:
    """A :class:`UsageError` unless ``path`` ends in one of :data:`OUTPUT_SUFFIXES`."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(
            f"{option} {path}: results are written as {', '.join(OUTPUT_SUFFIXES)}; "
            "name the file accordingly"
        )


def existing_rows(path: Path) -> list[BatchRow]:
    """The rows already in the output ``path`` (none when it does not exist). A half-written
    last line is cut off the file, so appending continues on a clean line."""
    return read_output(path, repair=True) if _exists(path) else []


def check_resumable(path: Path, rows: Iterable[BatchRow], shard: Shard) -> None:
    """Refuse (:class:`BatchOutputError`) to append the rows of ``shard`` to an output whose
    ``rows`` were written by another shard, or by a clip-har batch too old to record one."""
    written = {row.shard for row in rows}
    if None in written:
        raise BatchOutputError(
            f"{path} was written by an older clip-har batch, without the shard column, and "
            "cannot be resumed: write to another file, or use --force to start over"
        )
    other = sorted(text for text in written if text is not None and text != str(shard))
    if other:
        raise BatchOutputError(
            f"{path} holds rows of shard {', '.join(other)}, not {shard}: give that shard's "
            "--shard to resume it, write to another file, or use --force to start over"
        )


def open_writer(path: Path, *, restart: bool = False) -> RowWriter:
    """A writer appending to ``path`` (CSV/JSONL: the file; Parquet: parts, combined on
    :meth:`RowWriter.close`). ``restart`` (``--force``) deletes the old output first."""
    check_output_suffix(path)
    if restart:
        path.unlink(missing_ok=True)
        shutil.rmtree(parts_folder(path), ignore_errors=True)
    if path.suffix.lower() == ".parquet":
        return ParquetWriter(path)
    return LineWriter(path)


def _exists(path: Path) -> bool:
    return path.exists() or parts_folder(path).is_dir()


class LineWriter:
    """CSV or JSON Lines: one line per row, appended and flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._csv = path.suffix.lower() == ".csv"
        new = not path.exists() or path.stat().st_size == 0 or (self._csv and _header_only(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "w" if new else "a"  # a header with no row is written again: the current one
        self._stream: IO[str] = path.open(mode, encoding="utf-8", newline="")
        self._writer = csv.writer(self._stream, lineterminator="\n") if self._csv else None
        if new and self._writer is not None:
            self._writer.writerow(COLUMNS)
            self._stream.flush()

    def append(self, row: BatchRow) -> None:
        record = row.record()
        if self._writer is not None:
            self._writer.writerow(_csv_cells(record))
        else:
            self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


def _header_only(path: Path) -> bool:
    """Whether the CSV ``path`` holds its header line and no row."""
    with path.open("rb") as stream:
        stream.readline()
        return not stream.read(1)


def _csv_cells(record: dict[str, Any]) -> list[str]:
    """The CSV cells of a record; ``top_k`` as ``label:0.812300;label:0.100000``, the
    format of ``clip-har predict -o x.csv``, so a spreadsheet shows it plainly."""
    cells = dict(record)
    cells["top_k"] = ";".join(
        f"{item['label']}:{item['confidence']:.6f}" for item in record["top_k"]
    )
    return ["" if cells[name] is None else str(cells[name]) for name in COLUMNS]


def _csv_top_k(text: str) -> list[dict[str, Any]]:
    items = []
    for item in filter(None, text.split(";")):
        label, _, score = item.rpartition(":")
        items.append({"label": label, "confidence": float(score)})
    return items


def parts_folder(path: Path) -> Path:
    """Where the Parquet writer publishes its parts: ``OUT.parquet.parts/``."""
    return path.with_name(path.name + PARTS_SUFFIX)


class ParquetWriter:
    """Parquet: rows are buffered and published as whole part files (atomically), every
    :data:`PART_ROWS` rows or :data:`PART_SECONDS` seconds; :meth:`close` publishes the
    rest and combines the file and its parts into one file, atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._buffer: list[BatchRow] = []
        self._since = time.monotonic()
        existing = sorted(parts_folder(path).glob("part-*.parquet"))
        self._next = int(existing[-1].stem.removeprefix("part-")) + 1 if existing else 0

    def append(self, row: BatchRow) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= PART_ROWS or time.monotonic() - self._since > PART_SECONDS:
            self._publish_part()

    def _publish_part(self) -> None:
        if self._buffer:
            part = parts_folder(self.path) / f"part-{self._next:06d}.parquet"
            part.parent.mkdir(parents=True, exist_ok=True)
            _write_parquet(part, self._buffer)
            self._next += 1
            self._buffer = []
        self._since = time.monotonic()

    def close(self) -> None:
        self._publish_part()
        folder = parts_folder(self.path)
        if not folder.is_dir():
            if not self.path.exists():
                _write_parquet(self.path, [])  # an empty run still leaves a readable file
            return
        _write_parquet(self.path, read_output(self.path))
        shutil.rmtree(folder)


def _write_parquet(path: Path, rows: Sequence[BatchRow]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([row.record() for row in rows], schema=_parquet_schema())
    with atomic_write(path) as staging:
        pq.write_table(table, staging)


def _parquet_schema() -> Any:
    import pyarrow as pa

    text = pa.string()
    top_k = pa.list_(pa.struct([("label", text), ("confidence", pa.float64())]))
    types = {"confidence": pa.float64(), "top_k": top_k}
    return pa.schema([(name, types.get(name, text)) for name in COLUMNS])


# --------------------------------------------------------------------------- readers


def read_output(path: Path, *, repair: bool = False) -> list[BatchRow]:
    """The rows of a result file (for Parquet, with its unmerged parts).

    A half-written last line of a CSV/JSONL file is left out (with ``repair``, cut off the
    file, so appending continues on a clean line); any other unreadable content is a
    :class:`BatchOutputError` naming the file and line."""
    check_output_suffix(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    data = _complete_lines(path, repair=repair)
    if suffix == ".csv":
        return _read_csv(path, data)
    return _read_jsonl(path, data)


def _complete_lines(path: Path, *, repair: bool) -> str:
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning(
            "%s: the last line was cut off (an interrupted write); its input is redone", path
        )
        if repair:
            with path.open("rb+") as stream:
                stream.truncate(end)
    try:
        return data[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchOutputError(f"{path}: not a clip-har batch output (not UTF-8: {exc})") from None


def _read_csv(path: Path, text: str) -> list[BatchRow]:
    lines = text.splitlines()
    if not lines:
        return []
    reader = csv.reader(lines)
    header = tuple(next(reader))
    if header not in (COLUMNS, LEGACY_COLUMNS):
        raise BatchOutputError(
            f"{path}: not a clip-har batch output (columns {', '.join(header)}; expected "
            f"{', '.join(COLUMNS)}); write elsewhere, or use --force to replace it"
        )
    rows = []
    for number, cells in enumerate(reader, start=2):
        try:
            if len(cells) != len(header):
                raise ValueError(f"{len(cells)} cells, expected {len(header)}")
            record: dict[str, Any] = dict(zip(header, cells, strict=True))
            record["top_k"] = _csv_top_k(record["top_k"])
            rows.append(BatchRow.from_record(record))
        except (ValueError, KeyError) as exc:
            raise BatchOutputError(f"{path}, line {number}: unreadable row ({exc})") from None
    return rows


def _read_jsonl(path: Path, text: str) -> list[BatchRow]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            rows.append(BatchRow.from_record(record))
        except (ValueError, KeyError, TypeError) as exc:
            raise BatchOutputError(
                f"{path}, line {number}: not a clip-har batch row ({exc}); write elsewhere, "
                "or use --force to replace it"
            ) from None
    return rows


def _read_parquet(path: Path) -> list[BatchRow]:
    import pyarrow.parquet as pq

    files = [path] if path.exists() else []
    files += sorted(parts_folder(path).glob("part-*.parquet"))
    rows: list[BatchRow] = []
    for file in files:
        try:
            records = pq.read_table(file).to_pylist()
            rows.extend(BatchRow.from_record(record) for record in records)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise BatchOutputError(
                f"{file}: not a readable clip-har batch output ({exc}); write elsewhere, "
                "or use --force to replace it"
            ) from None
    return rows


def write_rows(path: Path, rows: Iterable[BatchRow]) -> None:
    """Write a whole result file atomically (the merge's output): all rows or nothing."""
    check_output_suffix(path)
    rows = list(rows)
    if path.suffix.lower() == ".parquet":
        _write_parquet(path, rows)
        return
    with atomic_write(path) as staging:
        staging.unlink()  # the writer starts a new file (and writes the CSV header)
        writer = LineWriter(staging)
        try:
            for row in rows:
                writer.append(row)
        finally:
            writer.close()


# --------------------------------------------------------------------------- merge


def merge_outputs(
    shards: Sequence[Path], expected: Sequence[BatchInput] | None = None
) -> list[BatchRow]:
    """The rows of every shard output, sorted by key, after checking that no file is given
    twice, that the outputs are the shards ``0/N`` … ``N-1/N`` once each (by the ``shard``
    of their rows), that no key is in two rows and, with ``expected``, that every expected
    key is there and no other. Outputs too old to record their shard need ``expected``.

    Raises :class:`BatchOutputError` naming the shards, or a few offending keys and their
    files."""
    _check_distinct(shards)
    contents = [(shard, read_output(shard)) for shard in shards]
    _check_shards(contents, checked_by_inputs=expected is not None)
    rows: list[BatchRow] = []
    where: dict[str, list[Path]] = defaultdict(list)
    for shard, found in contents:
        for row in found:
            rows.append(row)
            where[row.path].append(shard)
    problems = []
    doubled = sorted(key for key, files in where.items() if len(files) > 1)
    if doubled:
        named = "; ".join(
            f"{key} (in {', '.join(map(str, where[key]))})" for key in doubled[:NAMED]
        )
        problems.append(f"{plural(len(doubled), 'input')} doubled: {named}{_more(doubled)}")
    if expected is not None:
        keys = {item.key for item in expected}
        missing = sorted(keys - where.keys())
        extra = sorted(where.keys() - keys)
        if missing:
            problems.append(
                f"{plural(len(missing), 'input')} missing: "
                f"{', '.join(missing[:NAMED])}{_more(missing)}"
            )
        if extra:
            problems.append(
                f"{plural(len(extra), 'row')} not among the expected inputs: "
                f"{', '.join(extra[:NAMED])}{_more(extra)}"
            )
    if problems:
        raise BatchOutputError("the shard outputs do not merge: " + "; ".join(problems))
    return sorted(rows, key=lambda row: row.path)


def _check_distinct(paths: Sequence[Path]) -> None:
    """One file given twice would double every one of its rows: say so, plainly."""
    seen: dict[Path, Path] = {}
    for path in paths:
        real = path.resolve()
        if real in seen:
            also = f" (as {seen[real]} and {path})" if seen[real] != path else ""
            raise BatchOutputError(f"the same file is given twice: {path}{also}")
        seen[real] = path


def _check_shards(contents: Sequence[tuple[Path, list[BatchRow]]], checked_by_inputs: bool) -> None:
    """The outputs must be the shards ``0/N`` … ``N-1/N``, once each, by the ``shard`` of
    their rows. An empty output cannot say its shard (a shard with no input writes one): it
    stands for one of the shards no other output has. Outputs written before rows recorded
    their shard are refused unless ``checked_by_inputs`` (``--expect`` checks the keys)."""
    legacy = [str(path) for path, rows in contents if any(row.shard is None for row in rows)]
    if legacy:
        if checked_by_inputs:
            return
        raise BatchOutputError(
            f"{', '.join(legacy)}: written by an older clip-har batch, without the shard "
            "column, so a missing shard cannot be told; pass --expect SOURCE (the source the "
            "shards were made from) to check the inputs instead"
        )
    specs: dict[Path, Shard | None] = {}
    for path, rows in contents:
        texts = sorted({row.shard for row in rows if row.shard is not None})
        if len(texts) > 1:
            raise BatchOutputError(f"{path} holds rows of several shards: {', '.join(texts)}")
        specs[path] = _row_shard(path, texts[0]) if texts else None
    counts = sorted({spec.count for spec in specs.values() if spec is not None})
    if len(counts) > 1:
        named = ", ".join(f"{path}: {spec}" for path, spec in specs.items() if spec is not None)
        raise BatchOutputError(f"the outputs are shards of different splits ({named})")
    if not counts:
        return  # no rows at all: nothing can be missing or doubled
    count = counts[0]
    by_index: dict[int, list[Path]] = defaultdict(list)
    for path, spec in specs.items():
        if spec is not None:
            by_index[spec.index].append(path)
    problems = [
        f"shard {index}/{count} is given twice ({', '.join(map(str, paths))})"
        for index, paths in sorted(by_index.items())
        if len(paths) > 1
    ]
    empty = [path for path, spec in specs.items() if spec is None]
    missing = [index for index in range(count) if index not in by_index]
    if len(missing) > len(empty):
        names = ", ".join(f"{index}/{count}" for index in missing)
        cover = f" ({plural(len(empty), 'empty output')} can stand for some)" if empty else ""
        problems.append(
            f"{plural(len(missing) - len(empty), 'shard')} of {count} missing: no output "
            f"holds shard {names}{cover}"
        )
    elif len(empty) > len(missing):
        problems.append(f"{len(contents)} outputs for {count} shards (some empty)")
    if problems:
        raise BatchOutputError("the shard outputs do not merge: " + "; ".join(problems))


def _row_shard(path: Path, text: str) -> Shard:
    try:
        return Shard.parse(text)
    except UsageError:
        raise BatchOutputError(f"{path}: a row's shard {text!r} is not I/N") from None


def _more(keys: Sequence[str]) -> str:
    return f" and {len(keys) - NAMED} more" if len(keys) > NAMED else ""


# --------------------------------------------------------------------------- summary


@dataclass
class Summary:
    """Per-class counts and mean confidence, and the error count, of result rows."""

    counts: Counter[str] = field(default_factory=Counter)
    confidence: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    errors: int = 0

    def add(self, row: BatchRow) -> None:
        if row.error is not None or row.label is None:
            self.errors += 1
            return
        self.counts[row.label] += 1
        self.confidence[row.label] += row.confidence or 0.0

    def extend(self, rows: Iterable[BatchRow]) -> Summary:
        for row in rows:
            self.add(row)
        return self

    @property
    def predicted(self) -> int:
        return sum(self.counts.values())

    @property
    def total(self) -> int:
        return self.predicted + self.errors

    def classes(self) -> list[dict[str, Any]]:
        """One entry per predicted class, most frequent first: class, count, share of the
        predicted rows, mean confidence."""
        return [
            {
                "class": label,
                "count": count,
                "share": round(count / self.predicted, 6),
                "mean_confidence": round(self.confidence[label] / count, 6),
            }
            for label, count in sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        ]

    def as_json(self) -> dict[str, Any]:
        return {
            "rows": self.total,
            "predicted": self.predicted,
            "errors": self.errors,
            "classes": self.classes(),
        }
