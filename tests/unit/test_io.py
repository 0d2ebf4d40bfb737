"""clip_har.io's atomic writes: whole files only, unique temporary names, failures harmless."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest

from clip_har.io import (
    atomic_write,
    replace_directory,
    staging_directory,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
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


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_under_umask(umask: int, target: Path) -> None:
    """Write ``target`` from a fresh interpreter whose umask is set before clip_har loads."""
    script = (
        f"import os; os.umask({umask:#o}); from clip_har.io import write_text_atomic; "
        f"write_text_atomic({str(target)!r}, 'x')"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_files_follow_the_umask_and_rewrites_keep_the_mode(tmp_path: Path) -> None:
    private, shared = tmp_path / "private.pt", tmp_path / "shared.json"
    _write_under_umask(0o077, private)
    _write_under_umask(0o022, shared)
    assert _mode(private) == 0o600  # a checkpoint under umask 077 stays the owner's
    assert _mode(shared) == 0o644
    shared.chmod(0o640)
    write_text_atomic(shared, "rewritten")
    assert _mode(shared) == 0o640  # like open(path, "w"): an existing file keeps its mode


def _write_tree(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def _tree(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_replace_directory_swaps_whole_folders_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    for files in ({"a": "old", "b": "old"}, {"c": "new"}):  # first into nothing, then over
        with staging_directory(target) as staging:
            assert staging.parent.parent == tmp_path and staging.parent.name.startswith(".")
            _write_tree(staging, files)
            replace_directory(staging, target)
        assert _tree(target) == files  # the new folder whole, nothing of the old one
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_a_failed_replacement_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    target.mkdir()
    _write_tree(target, {"manifest.json": "old"})

    class WriterError(Exception):
        pass

    with pytest.raises(WriterError), staging_directory(target) as staging:
        _write_tree(staging, {"manifest.json": "half"})
        raise WriterError  # a writer that fails midway: its staging folder is dropped
    with pytest.raises(FileNotFoundError):  # the old one is retired, then the move fails
        replace_directory(tmp_path / "never-written", target)
    assert _tree(target) == {"manifest.json": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_concurrent_folder_replacements_use_unique_names(tmp_path: Path) -> None:
    """Two overwrites of one bundle used to share a fixed ``.NAME.old`` name."""
    target = tmp_path / "bundle"
    files = [f"file-{i}" for i in range(4)]
    start = threading.Barrier(WRITERS)

    def replace(writer: int) -> None:
        start.wait()
        for _ in range(ROUNDS):
            with staging_directory(target) as staging:
                _write_tree(staging, dict.fromkeys(files, str(writer)))
                replace_directory(staging, target)

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(replace, range(WRITERS)))  # re-raises any writer's error
    final = _tree(target)
    assert sorted(final) == files and len(set(final.values())) == 1  # one writer's, whole
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_concurrent_export_records_never_race_on_the_bundle_manifest(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """Two exports of one bundle used to share the manifest's fixed temporary name, and
    each rewrote the manifest it had read at its start, dropping the other's record."""
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
    assert sorted(exports) == [f"format-{writer}" for writer in range(WRITERS)]
    assert not [p.name for p in bundle.directory.iterdir() if p.name.startswith(".")]
