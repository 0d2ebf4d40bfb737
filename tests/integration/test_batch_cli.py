"""``clip-har batch`` and ``batch-merge`` as a user runs them: the 904 dev photos interrupted
with SIGINT and resumed (exactly one row per image), three shards merged (the same set, no
overlap; a doubled shard refused), and ``--url`` against a real ``clip-har serve``."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI, free_port, make_photo, run_cli
from feedback_server import ServeProcess

from clip_har.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_PARTIAL
from clip_har.inference.batch import read_output

pytestmark = pytest.mark.integration

DEADLINE_S = 180


def _image_keys(dev: Path) -> set[str]:
    return {f"images/{path.name}" for path in (dev / "images").iterdir()}


def _data_rows(path: Path) -> int:
    """Complete rows written so far (the CSV header excluded)."""
    return max(path.read_bytes().count(b"\n") - 1, 0) if path.exists() else 0


def test_dev_photos_interrupted_resumed_and_sharded_give_one_row_per_image(
    har_dev_dir: Path, tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    keys = _image_keys(har_dev_dir)
    assert len(keys) == 904
    model = ["-b", str(tiny_onnx_bundle), "--format", "onnx"]
    out = tmp_path / "results.csv"
    # one image per engine call, so that the run is still going when SIGINT comes
    command = [CLI, "batch", str(har_dev_dir), "-o", str(out), *model, "--batch-size", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + DEADLINE_S
    while _data_rows(out) < 10 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    # frozen while the signal is queued: however fast the machine, the run cannot finish
    # before SIGINT; it then stops after the row in progress
    process.send_signal(signal.SIGSTOP)
    assert _data_rows(out) < 904, "the run finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "interrupted" in stderr and "again to resume" in stderr and "Traceback" not in stderr
    assert "shard" not in stderr  # an unsharded run does not talk of shards
    first = read_output(out)
    assert 10 <= len(first) < 904  # stopped partway, and what was written is readable
    assert {row.shard for row in first} == {"0/1"}

    resumed = run_cli("batch", str(har_dev_dir), "-o", str(out), *model, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(first)} already in" in resumed.stderr
    rows = read_output(out)
    assert len(rows) == 904 and {row.path for row in rows} == keys  # exactly one row each
    assert rows[: len(first)] == first  # the rows written before the interrupt are kept
    assert all(row.label and row.error is None and len(row.top_k) == 5 for row in rows)
    summary = json.loads(resumed.stdout)
    assert (summary["rows"], summary["errors"]) == (904, 0)
    assert sum(entry["count"] for entry in summary["classes"]) == 904

    # three machines, each its own shard and output format
    shards = [tmp_path / name for name in ("s0.csv", "s1.jsonl", "s2.parquet")]
    for index, shard in enumerate(shards):
        done = run_cli("batch", str(har_dev_dir), "-o", str(shard), *model, "--shard", f"{index}/3")
        assert done.returncode == 0, done.stderr
    parts = [{row.path for row in read_output(shard)} for shard in shards]
    assert set().union(*parts) == keys and sum(map(len, parts)) == 904  # disjoint, complete
    assert all(part for part in parts)

    merged = tmp_path / "merged.jsonl"
    merge = run_cli(
        "batch-merge", *map(str, shards), "-o", str(merged), "--expect", str(har_dev_dir)
    )
    assert merge.returncode == 0, merge.stderr
    merged_rows = read_output(merged)
    assert [row.path for row in merged_rows] == sorted(keys)

    same = run_cli(
        "batch-merge", *map(str, shards), str(shards[0]), "-o", str(tmp_path / "bad.csv")
    )
    assert same.returncode == EXIT_FAILURE
    assert "the same file is given twice" in same.stderr and "Traceback" not in same.stderr
    assert not (tmp_path / "bad.csv").exists()  # nothing written on failure
    copy = tmp_path / "copy.csv"
    copy.write_bytes(shards[0].read_bytes())
    doubled = run_cli("batch-merge", *map(str, shards), str(copy), "-o", str(tmp_path / "bad.csv"))
    assert doubled.returncode == EXIT_FAILURE and "shard 0/3 is given twice" in doubled.stderr
    # without --expect, the shard each row records tells that one is missing
    gap = run_cli("batch-merge", *map(str, shards[:2]), "-o", str(tmp_path / "bad.csv"))
    assert gap.returncode == EXIT_FAILURE, gap.stderr
    assert "no output holds shard 2/3" in gap.stderr
    missing = run_cli(
        "batch-merge", *map(str, shards[:2]), "-o", str(tmp_path / "bad.csv"),
        "--expect", str(har_dev_dir),
    )  # fmt: skip
    assert missing.returncode == EXIT_FAILURE and "missing" in missing.stderr
    assert not (tmp_path / "bad.csv").exists()
    # an output cannot be resumed as another shard
    other = run_cli("batch", str(har_dev_dir), "-o", str(shards[0]), *model, "--shard", "1/3")
    assert other.returncode == EXIT_FAILURE and "rows of shard 0/3, not 1/3" in other.stderr


def test_url_backend_against_a_real_server(tiny_onnx_bundle: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for index in range(5):
        make_photo(photos / ("sub" if index % 2 else "") / f"p{index}.jpg", seed=index)
    (photos / "broken.jpg").write_text("this is not an image\n")
    key = "batch-test-key"
    env = {
        "CLIP_HAR_SERVE_DATABASE_URL": f"sqlite:///{tmp_path / 'serving.db'}",
        "CLIP_HAR_SERVE_API_KEYS": key,
    }
    server = ServeProcess(tiny_onnx_bundle, free_port(), tmp_path / "serve.log", env)
    out = tmp_path / "out.jsonl"
    args = ["batch", str(photos), "-o", str(out), "--url", server.url, "--workers", "2"]
    try:
        server.start()
        denied = run_cli(*args, env={"CLIP_HAR_API_KEY": "wrong"})
        assert denied.returncode == EXIT_FAILURE and "401" in denied.stderr, denied.stderr
        assert "stopped before writing any row" in denied.stderr and "kept" not in denied.stderr
        assert not out.exists()  # a run that wrote no row leaves no output
        done = run_cli(*args, "--batch-size", "2", "--top-k", "3", env={"CLIP_HAR_API_KEY": key})
        assert done.returncode == EXIT_PARTIAL, done.stderr  # one image failed
        rows = {row.path: row for row in read_output(out)}
        assert set(rows) == {"broken.jpg", "p0.jpg", "p2.jpg", "p4.jpg", "sub/p1.jpg", "sub/p3.jpg"}
        bad = rows.pop("broken.jpg")
        # the server's 415 unsupported_media_type, in the codes a bundle run writes
        assert bad.label is None and bad.error and bad.error_code == "not_an_image"
        assert all(row.error is None and len(row.top_k) == 3 for row in rows.values())
        assert len({(row.model, row.format) for row in rows.values()}) == 1  # the server's
        assert all(row.model and row.format for row in rows.values())
        again = run_cli(*args, "--skip-errors", env={"CLIP_HAR_API_KEY": key})
        assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr
    finally:
        server.stop()
