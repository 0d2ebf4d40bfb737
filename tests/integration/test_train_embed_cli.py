"""``clip-har train embed``: a second run encodes nothing; a killed run resumes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
from conftest import make_photo, run_cli
from typer.testing import CliRunner

from clip_har.cli.train_embed import embed_command
from clip_har.data.manifest import conform, read_manifest, write_manifest
from clip_har.io import file_sha256
from clip_har.models.backbone import Backbone
from clip_har.training.features import STORE_FILE, FeatureStore, default_store_root

pytestmark = pytest.mark.integration

app = typer.Typer()
app.command()(embed_command)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def dataset(folder: Path, count: int, first_seed: int = 0) -> Path:
    """A folder with ``count`` generated photos and their manifest (with sha256)."""
    images = folder / "images"
    images.mkdir(parents=True)
    paths = [
        make_photo(images / f"{seed}.png", (70 + seed, 60), seed=seed)
        for seed in range(first_seed, first_seed + count)
    ]
    frame = pd.DataFrame(
        {
            "path": [str(p) for p in paths],
            "label": ["run" if i % 2 else "sit" for i in range(count)],
            "sha256": [file_sha256(p) for p in paths],
        }
    )
    write_manifest(conform(frame), folder)
    return folder


def test_a_second_embed_run_encodes_nothing(clip_har_cache: Path, tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", 10)
    store = tmp_path / "store"
    args = [str(data), "--model", "tiny", "--store", str(store), "--batch-size", "4"]

    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "encoded 10, reused 0, skipped 0 (of 10 rows)" in first.output
    assert "RANDOM WEIGHTS" in first.output
    (key_dir,) = store.iterdir()
    assert f"store: {key_dir} (10 images)" in first.output
    assert (key_dir / STORE_FILE).is_file()

    (data / "images" / "3.png").unlink()  # cached images are not read again
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "encoded 0, reused 10, skipped 0 (of 10 rows)" in second.output


def test_unreadable_rows_are_reported(clip_har_cache: Path, tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", 4, first_seed=200)
    (data / "images" / "201.png").write_bytes(b"not an image")
    args = [str(data), "--model", "tiny", "--store", str(tmp_path / "store"), "--workers", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "encoded 3, reused 0, skipped 1 (of 4 rows)" in result.output
    assert "1 row skipped" in result.output


def test_the_default_store_is_in_the_cache(clip_har_cache: Path, tmp_path: Path) -> None:
    data = dataset(tmp_path / "data", 3, first_seed=500)
    result = CliRunner().invoke(app, [str(data / "manifest.parquet"), "--model", "tiny"])
    assert result.exit_code == 0, result.output
    assert "encoded 3, reused 0, skipped 0" in result.output
    assert f"store: {default_store_root(clip_har_cache)}" in result.output


_KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from clip_har.data.manifest import read_manifest
from clip_har.models.backbone import load_backbone
from clip_har.training.features import FeatureStore

cache, root, data = map(Path, sys.argv[1:])
store = FeatureStore(root, load_backbone("tiny", cache_dir=cache), shard_size=2)

def kill(done, total):
    if done >= 4:  # two shards are on disk: die with no chance to clean up
        os.kill(os.getpid(), signal.SIGKILL)

store.embed(read_manifest(data), batch_size=2, progress=kill)
"""


def test_a_killed_run_keeps_its_shards_and_the_rerun_encodes_the_rest(
    tiny_backbone: Backbone, clip_har_cache: Path, tmp_path: Path
) -> None:
    data = dataset(tmp_path / "data", 7)
    root = tmp_path / "store"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(clip_har_cache), str(root), str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(FeatureStore(root, tiny_backbone)) == 4

    features, stats = FeatureStore(root, tiny_backbone).embed(read_manifest(data))
    assert (stats.encoded, stats.reused, stats.skipped) == (3, 4, 0)
    assert features.present.all()


def test_a_store_that_is_a_file_is_refused_before_any_embedding(
    clip_har_cache: Path, tmp_path: Path
) -> None:
    data = dataset(tmp_path / "data", 2, first_seed=700)
    (tmp_path / "afile").write_text("not a folder")
    fresh = tmp_path / "fresh-cache"  # the backbone would be built here if it were loaded
    done = run_cli(
        "train", "embed", str(data), "-m", "tiny", "--store", "afile",
        cwd=tmp_path, env={"CLIP_HAR_CACHE": str(fresh)},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "--store afile already exists and is a file; give a folder name" in done.stderr
    assert (tmp_path / "afile").read_text() == "not a folder"
    assert not fresh.exists() or not any(fresh.rglob("*.safetensors"))
