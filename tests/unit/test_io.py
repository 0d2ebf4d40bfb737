"""clip_har.io's atomic writes: whole files only, unique temporary names, failures harmless."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest

from clip_har.io import atomic_write, write_bytes_atomic, write_json_atomic, write_text_atomic
from clip_har.models.bundle import ExportRecord, open_bundle, record_exports

WRITERS = 8
ROUNDS = 25
SIZE = 256 * 1024  # large enough that a torn or interleaved write would show


def payload(writer: int) -> bytes:
    return bytes([writer]) * SIZE


def test_concurrent_writers_to_one_path_never_interleave_or_leave_temporaries(
    tmp_path: Path,
) -> None:
    target = tmp_path / "shared.bin"
    write_bytes_atomic(target, payload(255))
    start = threading.Barrier(WRITERS + 1)
    done = threading.Event()
    seen: list[bytes] = []

    def write(writer: int) -> None:
        start.wait()
        for _ in range(ROUNDS):
            with atomic_write(target) as staging, staging.open("wb") as stream:
                half = SIZE // 2  # two writes per file: a shared staging file would mix them
                stream.write(payload(writer)[:half])
                stream.write(payload(writer)[half:])

    def read() -> None:
        start.wait()
        while not done.is_set():
            seen.append(target.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(write, range(WRITERS)))
    done.set()
    reader.join()

    final = target.read_bytes()
    assert final in {payload(writer) for writer in range(WRITERS)}
    assert seen, "the reader never ran"
    for content in seen:  # every read saw one writer's whole file
        assert len(content) == SIZE and content == bytes([content[0]]) * SIZE
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


def test_staging_names_are_unique_and_keep_the_suffix(tmp_path: Path) -> None:
    target = tmp_path / "chart.png"
    with atomic_write(target) as first, atomic_write(target) as second:
        assert first != second
        assert first.parent == second.parent == tmp_path
        assert first.suffix == second.suffix == ".png"  # writers that infer the format work
        first.write_bytes(b"first")
        second.write_bytes(b"second")
    assert target.read_bytes() == b"first"  # the outer one finishes last and wins, whole
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]


def test_a_failing_writer_leaves_the_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_json_atomic(target, {"version": 1})
    before = target.read_bytes()

    class WriterError(Exception):
        pass

    with pytest.raises(WriterError), atomic_write(target) as staging:
        staging.write_text('{"version": 2, "trunc')
        raise WriterError
    assert target.read_bytes() == before
    with pytest.raises(TypeError):  # not JSON-serialisable: fails before anything is renamed
        write_json_atomic(target, {"bad": object()})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_an_exclusive_write_never_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "shard-000000.safetensors"
    with atomic_write(target, durable=True, exclusive=True) as staging:
        staging.write_bytes(b"first")
    with pytest.raises(FileExistsError), atomic_write(target, exclusive=True) as staging:
        staging.write_bytes(b"second")  # a concurrent writer that picked the same name
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_writes_create_the_folder_and_produce_shareable_files(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "new" / "deeper" / "notes.txt", "héllo\r\n")
    assert target.read_bytes() == "héllo\r\n".encode()  # UTF-8, newlines as given
    assert target.stat().st_mode & 0o044 == 0o044  # readable by others, unlike mkstemp files


def test_concurrent_export_records_never_race_on_the_bundle_manifest(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """Two exports of one bundle used to share the manifest's fixed temporary name."""
    bundle = open_bundle(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    start = threading.Barrier(WRITERS)

    def record(writer: int) -> None:
        item = ExportRecord(
            format=f"format-{writer}",
            file=f"exports/model-{writer}.onnx",
            sha256="0" * 64,
            bytes=writer,
            precision="fp32",
            created_at=datetime.now(timezone.utc),
        )
        start.wait()
        for _ in range(5):
            record_exports(bundle, [item])

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(record, range(WRITERS)))  # re-raises any writer's error
    exports = open_bundle(bundle.directory).manifest.exports
    assert len(exports) == 1 and next(iter(exports)).startswith("format-")
    assert not [p.name for p in bundle.directory.iterdir() if p.name.startswith(".")]
