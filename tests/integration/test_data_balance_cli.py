"""``clip-har data balance``: the console script end to end, and its argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from conftest import make_photo, run_cli
from typer.testing import CliRunner

from clip_har.cli.data_balance import balance_command
from clip_har.data.manifest import conform, read_manifest, write_manifest
from clip_har.errors import BalanceError

pytestmark = pytest.mark.integration

COUNTS = {"run": (12, 2), "sit": (3, 2), "walk <fast>": (6, 1)}  # class: (train, val)


def split_manifest_dir(tmp_path: Path) -> Path:
    """A split manifest over generated photos: imbalanced train, small val."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for c, (label, (train, val)) in enumerate(COUNTS.items()):
        for i in range(train + val):
            path = make_photo(images / f"{c}_{i}.png", seed=100 * c + i)
            rows.append(
                {"path": str(path), "label": label, "split": "train" if i < train else "val"}
            )
    folder = tmp_path / "split"
    write_manifest(conform(pd.DataFrame(rows)), folder)
    return folder


def test_balance_command_writes_manifest_and_reports(tmp_path: Path) -> None:
    source = split_manifest_dir(tmp_path)
    out = tmp_path / "balanced"
    result = run_cli(
        "data", "balance", str(source), "-o", str(out), "--target", "median", "--seed", "4",
        env={"CLIP_HAR_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "walk <fast>" in result.stdout and "4.00 -> 1.00" in result.stdout

    balanced = read_manifest(out)
    train = balanced[balanced["split"] == "train"]
    assert train["label"].value_counts().to_dict() == {"run": 6, "sit": 6, "walk <fast>": 6}
    val = balanced[balanced["split"] == "val"].reset_index(drop=True)
    original = read_manifest(source)
    expected_val = original[original["split"] == "val"].reset_index(drop=True)
    pd.testing.assert_frame_equal(val, expected_val)
    assert set(original.loc[original["label"] == "sit", "path"]) <= set(balanced["path"])
    assert all(Path(p).is_file() for p in balanced["path"])

    report = json.loads((out / "balance_report.json").read_text())
    assert report["before"] == {"run": 12, "sit": 3, "walk <fast>": 6}
    assert report["after"] == {"run": 6, "sit": 6, "walk <fast>": 6}
    assert report["target"] == 6 and report["target_requested"] == "median"
    assert report["rows_before"] == 26 and report["rows_after"] == 23
    page = (out / "balance_report.html").read_text()
    assert "data:image/png;base64," in page and "walk &lt;fast&gt;" in page


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(balance_command)
    return app


def test_balance_command_rejects_bad_arguments(tmp_path: Path) -> None:
    source = split_manifest_dir(tmp_path)
    out = str(tmp_path / "out")
    runner = CliRunner()
    for args, message in [
        (["--target", "most"], "one of min, max, median"),
        (["--split", "holdout"], "no rows in split 'holdout'"),
        (["--scheme", "log"], "unknown weight scheme"),
    ]:
        result = runner.invoke(_app(), [str(source), "-o", out, *args])
        assert isinstance(result.exception, BalanceError), result.output
        assert message in str(result.exception)
    assert not (tmp_path / "out").exists()
