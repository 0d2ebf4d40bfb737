"""``clip-har benchmark`` as a user runs it: a tiny bundle, its three result files, the table
on stdout, and clear refusals of bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.integration


def cli(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("benchmark", *args, env={"CLIP_HAR_CACHE": str(cache)}, timeout=120)


def test_benchmark_writes_json_markdown_and_chart(
    tiny_bundle: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    done = cli(
        clip_har_cache, str(tiny_bundle), "--formats", "torch,tensorrt", "--batch-sizes", "1,2",
        "--min-seconds", "0.1", "--warmup", "1", "--threads", "1", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("benchmark.json", "benchmark.md", "benchmark.png"):
        assert (out / name).stat().st_size > 0, name
    payload = json.loads((out / "benchmark.json").read_text())
    assert [(r["format"], r["batch_size"]) for r in payload["rows"]] == [
        ("torch", 1),
        ("torch", 2),
    ]
    assert payload["rows"][0]["peak_rss_mb"] > 0
    assert "tensorrt" in payload["skipped"]
    assert "| format | batch | p50 ms |" in done.stdout
    assert done.stdout.count("\n| torch |") == 2
    assert "skipped tensorrt" in done.stderr


def test_default_output_is_inside_the_bundle(
    tiny_bundle: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    done = cli(
        clip_har_cache, str(bundle), "--batch-sizes", "1", "--min-seconds", "0", "--warmup", "0",
        "--min-iterations", "2", "--no-memory",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in (bundle / "exports" / "benchmark").iterdir())
    assert written == ["benchmark.json", "benchmark.md", "benchmark.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "0"], "batch sizes must be at least 1"),
        (["--formats", "torch,onxx"], "unknown format onxx"),
        (["--data", "/no/such/photos"], "no such file or folder"),
        (["--formats", "tensorrt"], "no format could be benchmarked"),
    ],
)
def test_bad_input_exits_nonzero_with_a_clear_message(
    tiny_bundle: Path, clip_har_cache: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    done = cli(clip_har_cache, str(tiny_bundle), *args, "-o", str(tmp_path / "o"), "--no-memory")
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_bundle_is_named(clip_har_cache: Path, tmp_path: Path) -> None:
    done = cli(clip_har_cache, str(tmp_path / "nope"))
    assert done.returncode != 0
    assert "bundle directory not found" in done.stderr and "nope" in done.stderr


@pytest.fixture(scope="module")
def mixed_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with its slowest (torchscript) and fastest (onnx-opt) CPU exports
    beside torch eager: calls of ~50 ms and ~0.5 ms at batch size 1."""
    pytest.importorskip("onnxruntime")
    from clip_har.export.run import ExportOptions, export_bundle

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("mixed") / "b"))
    summary = export_bundle(bundle, ["onnx-opt", "torchscript"], ExportOptions(parity_count=4))
    assert summary.failures == {}
    return bundle


MIXED = ("torch", "torchscript", "onnx-opt")


def test_benchmark_ends_when_slow_and_fast_formats_are_mixed(
    mixed_bundle: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    """Issue 13 defect 2: the interleaving waited for every format to line up with the
    leader, which ~50 ms and ~0.5 ms formats never do. The timeout only catches a hang."""
    out = tmp_path / "bench"
    done = run_cli(
        "benchmark", str(mixed_bundle), "--formats", ",".join(MIXED), "--batch-sizes", "1,8",
        "--min-seconds", "0.5", "--warmup", "1", "--no-memory", "-o", str(out),
        env={"CLIP_HAR_CACHE": str(clip_har_cache)}, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("benchmark.json", "benchmark.md", "benchmark.png"):
        assert (out / name).stat().st_size > 0, name
    rows = json.loads((out / "benchmark.json").read_text())["rows"]
    assert [(r["format"], r["batch_size"]) for r in rows] == [
        (name, size) for size in (1, 8) for name in MIXED
    ]
    for row in rows:  # each met its own minimums (the default time bound is far away)
        assert row["iterations"] >= 5 and row["timed_s"] >= 0.5 and not row["cut_short"], row


def test_max_seconds_ends_a_run_whose_minimums_are_out_of_reach(
    mixed_bundle: Path, clip_har_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    done = run_cli(
        "benchmark", str(mixed_bundle), "--formats", ",".join(MIXED), "--batch-sizes", "1,2",
        "--min-seconds", "100000", "--max-seconds", "2", "--warmup", "0", "--no-memory",
        "-o", str(out), env={"CLIP_HAR_CACHE": str(clip_har_cache)}, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    payload = json.loads((out / "benchmark.json").read_text())
    assert payload["config"]["max_seconds"] == 2.0
    assert len(payload["rows"]) == 6
    assert all(row["cut_short"] and row["iterations"] >= 1 for row in payload["rows"])
    assert done.stdout.count(" † |") == 6 and "cut short by the time bound" in done.stdout
    assert "cut short by the time bound" in (out / "benchmark.md").read_text()
