"""Ground layer: atomic file writes, text inputs, file digests, JSON-safe values, git, and
HTML report parts.

Every writer in the project goes through :func:`atomic_write`, so a crash or an error
never leaves a half-written file, and concurrent writers never share a temporary name.
Every text file a user gives is read with :func:`read_text_input` (a BOM is dropped, bytes
that are not UTF-8 are a clear error naming the file).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import html
import io
import json
import logging
import math
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clip_har.errors import ClipHarError, ConfigError

HTML_ROW_LIMIT = 2000  # rows per table in a page; the JSON and CSV hold everything

log = logging.getLogger(__name__)


def _process_umask() -> int:
    """The process umask. Reading it means setting it, so this runs once, at import."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# a new file or folder gets what ``open()`` / ``mkdir()`` would give it; mkstemp's and
# mkdtemp's 0600 / 0700 (and writers that use them) would hide outputs from other users
_UMASK = _process_umask()
_NEW_FILE_MODE = 0o666 & ~_UMASK
_NEW_DIR_MODE = 0o777 & ~_UMASK


# --------------------------------------------------------------------------- files


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], *, durable: bool = False, exclusive: bool = False
) -> Iterator[Path]:
    """Yield a unique staging path beside ``path``; rename it onto ``path`` on success.

    Write the staging file with any writer (``open``, ``torch.save``, ``savefig``,
    ``to_parquet``). It keeps ``path``'s suffix, so writers that infer the format from
    the name work. On an exception it is deleted and ``path`` is untouched. ``durable``
    flushes the file to disk before the rename (checkpoints, acknowledged writes).
    ``exclusive`` publishes with a hard link instead, which never replaces an existing
    ``path`` but raises :class:`FileExistsError` (write-once files such as cache shards).
    The file gets the permissions ``open()`` would give it: an existing ``path``'s mode,
    else ``0o666`` less the umask.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(
        prefix=f".{target.name}-", suffix=target.suffix, dir=target.parent
    )
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        staging.chmod(_published_mode(target))
        if durable:
            with staging.open("rb+") as stream:
                os.fsync(stream.fileno())
        if exclusive:
            target.hardlink_to(staging)
            staging.unlink()
        else:
            staging.replace(target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def _published_mode(target: Path) -> int:
    """The permission bits of a file written to ``target``: as ``open(target, "w")``."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return _NEW_FILE_MODE


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    with atomic_write(path) as staging, staging.open("w", encoding="utf-8", newline="") as stream:
        stream.write(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path) as staging:
        staging.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], value: Any, *, sort_keys: bool = False) -> Path:
    """Write ``value`` as indented UTF-8 JSON with a final newline (non-finite floats as
    ``null``, see :func:`json_safe`) atomically; ``sort_keys`` orders every object's keys."""
    text = json.dumps(json_safe(value), indent=2, ensure_ascii=False, sort_keys=sort_keys)
    return write_text_atomic(path, text + "\n")


@contextmanager
def staging_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new empty folder beside ``target`` to build its replacement in.

    It lies inside a uniquely named hidden folder on ``target``'s file system, so
    :func:`replace_directory` can rename it onto ``target`` and concurrent writers never
    share it. Whatever is left of it on exit (all of it after an error) is deleted.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        staging = holder / target.name
        staging.mkdir()
        yield staging
    finally:
        shutil.rmtree(holder, ignore_errors=True)


@contextmanager
def publish_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty folder to write ``target``'s new content in; when the block ends
    without an error it replaces ``target`` whole (nothing of an old ``target`` survives),
    and after an error nothing at ``target`` has changed. Its files and folders get the
    permissions the umask gives (see :func:`replace_directory`)."""
    with staging_directory(target) as staging:
        yield staging
        replace_directory(staging, target)


def follow_umask(root: str | os.PathLike[str]) -> None:
    """Give ``root`` and every folder and file below it the permissions a new one gets
    from the umask (execute bits of files are kept, within the umask). Writers that
    create private files (``mkdtemp``, safetensors, copies of 0600 files) would
    otherwise publish outputs that other users, such as a service account, cannot read.
    Symbolic links are left alone."""
    for folder, _, files in os.walk(root):
        Path(folder).chmod(_NEW_DIR_MODE)
        for name in files:
            path = Path(folder, name)
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                path.chmod(_NEW_FILE_MODE | (stat.S_IMODE(mode) & 0o111 & _NEW_DIR_MODE))


def replace_directory(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move the fully written folder ``staging`` onto ``target``, replacing what is there.

    ``target`` holds the old content or the new, never a mix: an existing ``target`` is
    renamed to a unique name beside it, ``staging`` is renamed into place, and only then
    is the old one deleted. If ``staging`` cannot be moved, the old one is put back.
    Between the two renames ``target`` is briefly absent; a crash there leaves the old
    copy in a hidden ``.NAME-old-*`` folder beside it. Concurrent calls for one
    ``target`` each use their own names; the last one wins. ``staging`` must be on
    ``target``'s file system (see :func:`staging_directory`). The published folders and
    files follow the umask (:func:`follow_umask`).
    """
    staging, target = Path(staging), Path(target)
    follow_umask(staging)
    while True:
        try:
            staging.rename(target)  # nothing there (or an empty folder): one atomic step
            return
        except OSError as exc:
            if not _occupied(exc):
                raise
        if _swap_directory(staging, target):
            return


def _occupied(error: OSError) -> bool:
    """Whether a rename failed only because something is already at its destination."""
    return error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR)


def _swap_directory(staging: Path, target: Path) -> bool:
    """Retire ``target`` to a unique name and put ``staging`` in its place. False when a
    concurrent writer got in between, so the caller starts over."""
    holder = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
    retired = holder / target.name
    try:
        target.rename(retired)
    except BaseException as exc:
        holder.rmdir()
        if isinstance(exc, FileNotFoundError):
            return False  # another writer retired it first
        raise
    try:
        staging.rename(target)
    except OSError as exc:
        if _occupied(exc):  # another writer published between our two renames
            shutil.rmtree(holder, ignore_errors=True)
            return False
        _restore(retired, target)
        raise
    shutil.rmtree(holder, ignore_errors=True)
    return True


def _restore(retired: Path, target: Path) -> None:
    """Put the retired ``target`` back after a failed replacement, unless a concurrent
    writer has already put a newer copy there."""
    try:
        retired.rename(target)
    except OSError as exc:
        if not _occupied(exc):
            log.error("could not put %s back; the old copy is kept in %s", target, retired)
            return
    shutil.rmtree(retired.parent, ignore_errors=True)


@contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``path``, created if absent, for the
    block: a read-modify-write of a shared file by several processes or threads. A folder
    ``path`` is locked itself, so nothing is created in it (a bundle stays as it was).
    Where ``fcntl`` does not exist (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    if Path(path).is_dir():
        descriptor = os.open(path, os.O_RDONLY)
    else:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_text_input(
    path: str | os.PathLike[str],
    what: str,
    error: Callable[[str], ClipHarError] = ConfigError,
) -> str:
    """The text of a file a user gives (class list, prompt set, params, CSV, manifest JSON).

    UTF-8 with or without a byte-order mark (which is dropped, so the first line reads as
    typed); newlines are left as they are. Bytes that are not UTF-8 raise ``error`` (a
    :class:`ConfigError` unless the caller's family differs) naming the file, ``what`` it
    is, and the line and byte where decoding failed. A file that cannot be opened raises
    the :class:`OSError`, which names it.
    """
    data = Path(path).read_bytes()
    try:
        return data.removeprefix(_UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"{what} is not UTF-8 text ({_where(data, exc)}); save it as UTF-8"
        raise error(f"{path}: {reason}") from None


def _where(data: bytes, exc: UnicodeDecodeError) -> str:
    """Where decoding failed, for a person: UTF-16, or the line and byte offset."""
    if data.startswith(_UTF16_BOMS):
        return "it is UTF-16"
    start = exc.start + (len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0)
    line = data.count(b"\n", 0, start) + 1
    return f"line {line}, byte {start}: 0x{data[start]:02x}"


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``hashlib`` algorithm name), read in 1 MiB blocks."""
    digest = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    return file_digest(path)


def json_safe(value: Any) -> Any:
    """JSON-ready: non-finite floats and missing values become None, numpy scalars Python."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return json_safe(float(value))
    return None if value is None or value is pd.NA else value


# --------------------------------------------------------------------------- git


def git_output(*args: str, cwd: str | os.PathLike[str] | None = None) -> str | None:
    """``git ARGS`` output; ``None`` when git is absent, times out or fails."""
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=False, cwd=cwd
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The checked-out commit of the repository around ``cwd``, or ``None``."""
    return (git_output("rev-parse", "HEAD", cwd=cwd) or "").strip() or None


# --------------------------------------------------------------------------- HTML

REPORT_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222}
h1{margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td{word-break:break-all}.num{text-align:right}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;
padding:.6rem 1rem;min-width:8rem}.card b{display:block;font-size:1.5rem}
.bad b{color:#c0392b}.none{color:#777}img{max-width:100%}
"""


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``"1 image"``, ``"3 images"``: ``count`` and ``noun`` in the right number. ``many`` is
    the plural when adding ``s`` (``es`` after s, x, ch, sh) is wrong (``"copies"``)."""
    return f"{count} {noun_form(count, noun, many)}"


def noun_form(count: int, noun: str, many: str | None = None) -> str:
    """``noun`` in the number that ``count`` asks for, without the count (``"file"``,
    ``"files"``); ``many`` as for :func:`plural`."""
    if count == 1:
        return noun
    if many is None:
        many = noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")
    return many


def esc(value: Any) -> str:
    """HTML-escaped text of ``value`` (``None`` is empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def html_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], limit: int = HTML_ROW_LIMIT
) -> str:
    """An HTML table of pre-rendered cells, cut at ``limit`` rows with a note."""
    if not rows:
        return "<p class='none'>None.</p>"
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows[:limit]
    )
    more = (
        f"<p class='none'>… {len(rows) - limit} more rows (see the JSON / CSV).</p>"
        if len(rows) > limit
        else ""
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def png_base64(figure: Any) -> str:
    """A matplotlib figure as a base64 PNG, for ``<img src="data:image/png;base64,...">``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
