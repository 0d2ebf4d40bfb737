"""The real ``clip-har data`` console script, run as a subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

from clip_har.data.manifest import read_manifest

pytestmark = pytest.mark.integration


def data_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd, env={"CLIP_HAR_CACHE": str(cwd / "cache")})


def test_data_import_sample_folder_and_bad_source(har_sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "imported"
    result = data_cli("data", "import", str(har_sample_dir), "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frame = read_manifest(out)
    assert len(frame) == 155 and frame["sha256"].notna().all()
    assert "155 rows: 155 labelled, 0 unlabelled, 15 classes" in result.stderr
    assert "using_laptop" in result.stdout

    bad = data_cli(
        "data", "import", str(tmp_path / "missing"), "-o", str(tmp_path / "other"), cwd=tmp_path
    )
    assert bad.returncode == 1
    assert "source not found" in bad.stderr and "Traceback" not in bad.stderr


def test_import_validate_split_pipeline(har_sample_dir: Path, tmp_path: Path) -> None:
    """import -> validate -> split on real photos, through the console script; the split
    ratios are a YAML list in ./params.yaml."""
    (tmp_path / "params.yaml").write_text("split:\n  ratios: [0.6, 0.2, 0.2]\n")
    raw, valid, split_dir = (str(tmp_path / name) for name in ("raw", "valid", "split"))
    steps = [
        ("data", "import", str(har_sample_dir), "-o", raw),
        ("data", "validate", raw, "-o", valid, "--classes", "har15"),
        ("data", "split", valid, "-o", split_dir, "--seed", "3"),
    ]
    for step in steps:
        result = data_cli(*step, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "valid" / "data_report.json").read_text())
    assert report["accepted"] == 155 and report["rejected"] == 0
    assert report["exact_duplicate_groups"] == 5
    assert (tmp_path / "valid" / "data_report.html").read_text().count("<img") >= 1
    split = json.loads((tmp_path / "split" / "split_report.json").read_text())
    assert split["cross_split_leakage"] == 0
    assert split["ratios"] == {"train": 0.6, "val": 0.2, "test": 0.2}
    assert split["max_deviation_from_target"] <= 1
    assert set(read_manifest(tmp_path / "split")["split"]) == {"train", "val", "test"}


def test_has_labels_tells_a_labelled_folder_from_an_unlabelled_one(
    photo_folder: Path, tmp_path: Path
) -> None:
    """``make demo`` trains only when the data has labels: this is its test."""
    unlabelled = tmp_path / "unlabelled"
    imported = data_cli("data", "import", str(photo_folder), "-o", str(unlabelled), cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    answer = data_cli("data", "has-labels", str(unlabelled), cwd=tmp_path)
    assert answer.returncode == 0 and answer.stdout.strip() == "no"
    assert "0 of 5 rows labelled" in answer.stderr

    classes = tmp_path / "classes"
    for index, photo in enumerate(sorted(photo_folder.iterdir())):
        label = classes / ("running" if index % 2 else "eating")
        label.mkdir(parents=True, exist_ok=True)
        photo.rename(label / photo.name)
    labelled = tmp_path / "labelled"
    imported = data_cli("data", "import", str(classes), "-o", str(labelled), cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    answer = data_cli("data", "has-labels", str(labelled), cwd=tmp_path)
    assert answer.returncode == 0 and answer.stdout.strip() == "yes"
    assert "5 of 5 rows labelled" in answer.stderr

    missing = data_cli("data", "has-labels", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 1 and missing.stdout == ""


def test_pipeline_stops_where_empty_data_would_be_created(tmp_path: Path) -> None:
    """The real script: a header-only CSV and an all-broken folder each stop with exit 1 and
    the reason, before any manifest is written."""
    (tmp_path / "csv" / "images").mkdir(parents=True)
    (tmp_path / "csv" / "labels.csv").write_text("filename,label\n")
    header_only = data_cli("data", "import", "csv", "-o", "raw_csv", cwd=tmp_path)
    assert header_only.returncode == 1, header_only.stderr
    assert "no data rows to import (only a header)" in header_only.stderr
    assert "0 rows" not in header_only.stderr and not (tmp_path / "raw_csv").exists()

    (tmp_path / "broken" / "running").mkdir(parents=True)
    (tmp_path / "broken" / "running" / "notes.jpg").write_text("not an image\n")
    imported = data_cli("data", "import", "broken", "-o", "raw", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr  # rows exist; validation judges them
    validated = data_cli("data", "validate", "raw", "-o", "valid", cwd=tmp_path)
    assert validated.returncode == 1, validated.stderr
    assert "the only row was rejected (not_an_image: 1" in validated.stderr
    assert "Traceback" not in validated.stderr and not (tmp_path / "valid").exists()
