"""The UI's upload reader against hostile zips: the bytes it decompresses, the entries it
examines and the images it keeps are bounded, counted in bytes and entries (never time)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from clip_har.ui import uploads

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (seed * 40 % 256, 90, 20)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def inflated(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every read from a zip entry: the decompressed bytes, counted outside
    the code under test."""
    reads: list[int] = []
    original: Callable[..., bytes] = zipfile.ZipExtFile.read

    def counting_read(self: zipfile.ZipExtFile, n: int | None = -1) -> bytes:
        data = original(self, n)
        reads.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    return reads


def test_zero_filled_entries_with_an_image_signature_stop_at_the_read_budget(
    monkeypatch: pytest.MonkeyPatch, inflated: list[int]
) -> None:
    entry_bytes = 64 * 2**10
    monkeypatch.setattr(uploads, "MAX_IMAGE_BYTES", entry_bytes)
    monkeypatch.setattr(uploads, "MAX_READ_BYTES", 2**20)
    bomb = PNG_SIGNATURE + bytes(entry_bytes - len(PNG_SIGNATURE))  # passes the sniff
    archive = _zip({f"big_{index}.png": bomb for index in range(100)})  # 6.25 MiB inflated
    assert len(archive) < 200_000

    collected = uploads.collect([("bomb.zip", archive)])

    assert sum(inflated) <= 2**20 + 1  # never more than the budget (+ the byte that shows it)
    assert collected.bytes_read == sum(inflated)
    assert collected.images == []
    notes = [reason for name, reason in collected.skipped if name == "bomb.zip/…"]
    assert len(notes) == 1 and "not read: only 1 MiB are decompressed per batch" in notes[0]
    assert len(collected.skipped) < 20  # ~16 entries read, then one note for the rest


def test_large_non_images_are_never_inflated_past_their_first_bytes(
    inflated: list[int],
) -> None:
    zeros = bytes(2**20)
    archive = _zip({f"zeros_{index}.jpg": zeros for index in range(40)})  # 40 MiB inflated

    collected = uploads.collect([("zeros.zip", archive)])

    assert sum(inflated) <= 40 * 16  # the header of each, no more
    assert collected.skipped == [(f"zeros.zip/zeros_{i}.jpg", "not an image") for i in range(40)]


def test_entries_past_the_cap_are_not_examined(
    monkeypatch: pytest.MonkeyPatch, inflated: list[int]
) -> None:
    monkeypatch.setattr(uploads, "MAX_ENTRIES", 10)
    archive = _zip({f"note_{index}.jpg": b"x" * 100 for index in range(30)})

    collected = uploads.collect([("many.zip", archive)])

    assert collected.entries_examined == 10
    assert len(inflated) <= 10
    assert collected.skipped[-1] == (
        "many.zip/…",
        "20 more entries not read: only 10 zip entries are examined per batch",
    )
    assert len(collected.skipped) == 11


def test_reading_stops_once_the_image_cap_is_reached(
    monkeypatch: pytest.MonkeyPatch, inflated: list[int]
) -> None:
    monkeypatch.setattr(uploads, "MAX_IMAGES", 3)
    entries = {f"photo_{index}.png": _png(index) for index in range(6)}
    entries.update({f"zeros_{index}.png": bytes(2**20) for index in range(4)})
    archive = _zip(entries)
    opened: list[str] = []
    original_open: Callable[..., Any] = zipfile.ZipFile.open

    def recording_open(self: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(getattr(name, "filename", name))
        return original_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)

    collected = uploads.collect([("set.zip", archive)])

    assert [name for name, _ in collected.images] == [f"set.zip/photo_{i}.png" for i in range(3)]
    assert opened == [f"photo_{i}.png" for i in range(3)]
    assert collected.skipped == [
        ("set.zip/…", "7 more entries not read: the limit of 3 images is reached")
    ]
