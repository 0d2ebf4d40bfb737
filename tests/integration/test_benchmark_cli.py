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
        (["--formats", "torch,onxx"], "unknown format(s) onxx"),
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
