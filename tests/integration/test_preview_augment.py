"""``preview-augment``: a PNG grid of originals beside augmented copies."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import typer
from conftest import make_photo
from PIL import Image
from typer.testing import CliRunner

from clip_har.cli.data_augment import MAX_COPIES, MAX_IMAGES, MAX_SIZE, preview_augment_command
from clip_har.data.manifest import MANIFEST_FILE, conform
from clip_har.errors import ClipHarError

pytestmark = pytest.mark.integration

app = typer.Typer()
app.command()(preview_augment_command)


def write_manifest_file(folder: Path, paths: list[Path]) -> Path:
    """A manifest.parquet whose rows are ``paths``, stored as written (absolute)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = [f"class_{i % 2}" for i in range(len(paths))]
    conform(pd.DataFrame({"path": [str(p) for p in paths], "label": labels})).to_parquet(
        folder / MANIFEST_FILE, index=False
    )
    return folder


def test_preview_grid_skips_unreadable_files(tmp_path: Path) -> None:
    photos = [make_photo(tmp_path / f"p{i}.jpg", (80 + 10 * i, 60), seed=i) for i in range(4)]
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    manifest = write_manifest_file(
        tmp_path / "data", [*photos, tmp_path / "broken.jpg", tmp_path / "gone.jpg"]
    )
    output = tmp_path / "out" / "nested" / "grid.png"
    args = [str(manifest), "-o", str(output), "--images", "3", "--copies", "2", "--size", "64"]
    result = CliRunner().invoke(app, [*args, "--policy", "light", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "3 images x 2 light copies" in result.output
    with Image.open(output) as grid:
        grid.load()
        assert grid.format == "PNG"
        width, height = grid.size
    # three columns (original + 2 copies) and three rows of 2-inch cells at 100 dpi
    assert (width, height) == (600, 640)

    # every readable file is used even when fewer than asked; broken ones are skipped
    result = CliRunner().invoke(app, [*args[:-4], "--images", "10", "--size", "64", "--force"])
    assert result.exit_code == 0, result.output
    assert "4 images x 4 strong copies" in result.output
    assert Image.open(output).size == (1000, 840)


def test_preview_errors(tmp_path: Path) -> None:
    manifest = write_manifest_file(tmp_path / "data", [tmp_path / "gone.jpg"])
    output = tmp_path / "grid.png"
    result = CliRunner().invoke(app, [str(manifest), "-o", str(output)])
    assert isinstance(result.exception, ClipHarError)
    assert "no readable image in 1 row of" in str(result.exception)
    result = CliRunner().invoke(app, [str(manifest), "-o", str(output), "--policy", "heavy"])
    assert "choose one of: none, light, strong" in str(result.exception)
    assert not output.exists()


@pytest.mark.parametrize(
    ("option", "limit"), [("--images", MAX_IMAGES), ("--copies", MAX_COPIES), ("--size", MAX_SIZE)]
)
def test_preview_augment_caps_images(option: str, limit: int, tmp_path: Path) -> None:
    """``--images 100000`` once drew a 904-row grid until it was killed at 2.8 GB."""
    manifest = write_manifest_file(tmp_path / "data", [make_photo(tmp_path / "p.jpg", seed=0)])
    output = tmp_path / "grid.png"
    result = CliRunner().invoke(app, [str(manifest), "-o", str(output), option, "100000"])
    assert result.exit_code == 2, result.output
    assert f"less than or equal to {limit}" in result.output
    assert not output.exists()
    args = [str(manifest), "-o", str(output), option, str(limit), "--policy", "none"]
    within = CliRunner().invoke(app, args)
    assert within.exit_code == 0, within.output
