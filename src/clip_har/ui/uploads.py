"""Images from uploads and zip archives, read safely into memory: nothing is extracted to
disk (so no path in an archive can escape anywhere), non-images are skipped by name and by
their first bytes before the rest is inflated, and the images kept, the zip entries examined
and the bytes decompressed are all bounded (a zip bomb stops at the limit)."""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from PIL import Image

from clip_har.imaging import IMAGE_EXTENSIONS
from clip_har.io import plural

MAX_IMAGES = 500
"""Images one batch takes; the rest are skipped with a note."""
MAX_IMAGE_BYTES = 20 * 2**20
"""The largest image accepted (the service's default upload cap)."""
MAX_TOTAL_BYTES = 512 * 2**20
"""All images of one batch together, uncompressed."""
MAX_ENTRIES = 2 * MAX_IMAGES
"""Zip entries examined per batch, images or not; the rest are skipped with one note."""
MAX_READ_BYTES = MAX_TOTAL_BYTES
"""Bytes decompressed from zips per batch, kept or not; the rest are skipped with one note."""
_HEAD_BYTES = 16  # what Pillow identifies a format from


@dataclass
class Collected:
    """The images to predict, ``(name, bytes)`` in upload order, and what was skipped why."""

    images: list[tuple[str, bytes]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total_bytes: int = 0
    entries_examined: int = 0
    """Zip entries looked at so far (against :data:`MAX_ENTRIES`)."""
    bytes_read: int = 0
    """Bytes decompressed from zips so far, kept or not (against :data:`MAX_READ_BYTES`)."""

    def zip_limit(self) -> str | None:
        """Why no further zip entry may be read, or None while the limits allow it."""
        if len(self.images) >= MAX_IMAGES:
            return f"the limit of {MAX_IMAGES} images is reached"
        if self.entries_examined >= MAX_ENTRIES:
            return f"only {MAX_ENTRIES} zip entries are examined per batch"
        if self.bytes_read >= MAX_READ_BYTES:
            return f"only {MAX_READ_BYTES // 2**20} MiB are decompressed per batch"
        return None

    def add(self, name: str, data: bytes) -> None:
        """Keep ``data`` as an image, unless a limit is reached or it is not an image."""
        if len(self.images) >= MAX_IMAGES:
            self.skipped.append((name, f"over the limit of {MAX_IMAGES} images"))
        elif self.total_bytes + len(data) > MAX_TOTAL_BYTES:
            self.skipped.append((name, f"over the limit of {MAX_TOTAL_BYTES // 2**20} MiB"))
        elif not _looks_like_image(data):
            self.skipped.append((name, "not an image"))
        else:
            self.images.append((name, data))
            self.total_bytes += len(data)


def collect(uploads: Iterable[tuple[str, bytes]]) -> Collected:
    """Every image among ``uploads``: image files as they are, and the images inside zips."""
    collected = Collected()
    for name, data in uploads:
        if name.lower().endswith(".zip"):
            _add_archive(collected, name, data)
        elif len(data) > MAX_IMAGE_BYTES:
            collected.skipped.append((name, _too_big()))
        else:
            collected.add(name, data)
    return collected


def _add_archive(collected: Collected, name: str, data: bytes) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        collected.skipped.append((name, "not a readable zip file"))
        return
    with archive:
        entries = [e for e in archive.infolist() if not (e.is_dir() or _hidden(e.filename))]
        for position, entry in enumerate(entries):
            limit = collected.zip_limit()
            if limit is not None:  # one note for the rest: none of them is opened
                rest = plural(len(entries) - position, "more entry", "more entries")
                collected.skipped.append((f"{name}/…", f"{rest} not read: {limit}"))
                return
            collected.entries_examined += 1
            inner = f"{name}/{entry.filename}"
            if _unsafe(entry.filename):
                collected.skipped.append((inner, "unsafe path in the archive"))
            elif PurePosixPath(entry.filename).suffix.lower() not in IMAGE_EXTENSIONS:
                collected.skipped.append((inner, "not an image name"))
            elif entry.file_size > MAX_IMAGE_BYTES:
                collected.skipped.append((inner, _too_big()))
            else:
                try:
                    content = _read_entry(collected, archive, entry)
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError) as exc:
                    collected.skipped.append((inner, f"unreadable in the zip ({exc})"))
                    continue
                if content is None:
                    collected.skipped.append((inner, "not an image"))
                else:
                    collected.add(inner, content)


def _read_entry(
    collected: Collected, archive: zipfile.ZipFile, entry: zipfile.ZipInfo
) -> bytes | None:
    """The entry's bytes, or None when its first bytes are no image format's (the rest is
    then never inflated). Never more than :data:`MAX_IMAGE_BYTES` (its header may lie) nor
    what is left of :data:`MAX_READ_BYTES`; every byte read counts in ``bytes_read``."""
    allowed = min(MAX_IMAGE_BYTES, MAX_READ_BYTES - collected.bytes_read)
    with archive.open(entry) as stream:
        head = stream.read(_HEAD_BYTES)
        collected.bytes_read += len(head)
        if not _image_signature(head):
            return None
        rest = stream.read(max(0, allowed + 1 - len(head)))
    collected.bytes_read += len(rest)
    content = head + rest
    if len(content) > MAX_IMAGE_BYTES:
        raise OSError(_too_big())
    if len(content) > allowed:
        raise OSError(f"over the limit of {MAX_READ_BYTES // 2**20} MiB decompressed per batch")
    return content


def _image_signature(head: bytes) -> bool:
    """Whether an image format Pillow reads by its signature accepts ``head`` (the first
    bytes): a cheap filter before a whole entry is inflated, not a decode."""
    Image.init()
    for _, accept in Image.OPEN.values():
        try:
            if accept is not None and accept(head) is True:
                return True
        except (IndexError, TypeError, ValueError, SyntaxError, struct.error):
            continue  # as Image.open does: a plugin that cannot parse these bytes
    return False


def _hidden(path: str) -> bool:
    """macOS resource forks and dot files, which archives carry along unasked."""
    parts = PurePosixPath(path).parts
    return any(
        (part.startswith(".") and part not in {".", ".."}) or part == "__MACOSX" for part in parts
    )


def _unsafe(path: str) -> bool:
    """A name that would leave the folder it is extracted to (``..``, absolute, a drive):
    never extracted here, but such an archive is not trusted with its neighbours' names."""
    posix = path.replace("\\", "/")
    return posix.startswith("/") or ".." in PurePosixPath(posix).parts or ":" in posix.split("/")[0]


def _too_big() -> str:
    return f"larger than {MAX_IMAGE_BYTES // 2**20} MiB"


def _looks_like_image(data: bytes) -> bool:
    """Whether Pillow recognises ``data`` from its header (no full decode)."""
    try:
        with Image.open(io.BytesIO(data)):
            return True
    except Exception:  # Pillow raises many kinds for non-images
        return False
