"""Empty data is refused where it would be created, and work-scaling data options are capped.

Issue 13, defects 12 (empty data) and 13 (unbounded work from one flag).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import make_photo
from typer.testing import CliRunner, Result

from clip_har.cli.common import EXIT_FAILURE, EXIT_USAGE
from clip_har.cli.main import app
from clip_har.data.balance import MAX_TARGET, resample
from clip_har.data.datasets import ManifestDataset
from clip_har.data.manifest import MANIFEST_FILE, conform, read_manifest, write_manifest
from clip_har.data.sources import import_source
from clip_har.data.splits import split_manifest
from clip_har.errors import BalanceError, DataError, DatasetError, ManifestError, SourceError
from clip_har.imaging import ImageConfig, Preprocessor


def clip_har(*args: str) -> Result:
    """The real command tree in-process: errors become a message and an exit code."""
    return CliRunner().invoke(app, list(args))


def empty_manifest(folder: Path) -> Path:
    """A manifest.parquet with the right columns and no rows (as old versions could write)."""
    folder.mkdir(parents=True, exist_ok=True)
    conform(pd.DataFrame({"path": [], "label": []})).to_parquet(folder / MANIFEST_FILE)
    return folder


def labelled_manifest(folder: Path, count: int = 6) -> Path:
    """A written manifest over ``count`` generated photos in two classes."""
    photos = [make_photo(folder.parent / f"photo_{i}.png", (40, 30), seed=i) for i in range(count)]
    labels = ["run" if i % 2 else "sit" for i in range(count)]
    write_manifest(pd.DataFrame({"path": [str(p) for p in photos], "label": labels}), folder)
    return folder


def test_header_only_csv_is_refused_at_import(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "images").mkdir(parents=True)
    (source / "labels.csv").write_text("filename,label\n\n")
    out = tmp_path / "raw"

    result = clip_har("data", "import", str(source), "-o", str(out))

    assert result.exit_code == EXIT_FAILURE, result.output
    assert "no data rows to import (only a header)" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_csv_whose_rows_all_lack_a_filename_is_refused(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("filename,label\n,run\n ,sit\n")
    with pytest.raises(SourceError, match=r"2 rows, none with a filename"):
        import_source(str(tmp_path / "labels.csv"), images_dir=tmp_path)


def test_csv_import_whose_listed_images_all_are_missing_writes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "images").mkdir(parents=True)
    (source / "labels.csv").write_text("filename,label\ngone_0.jpg,run\ngone_1.jpg,sit\n")
    out = tmp_path / "raw"

    result = clip_har("data", "import", str(source / "labels.csv"), "-o", str(out))

    assert result.exit_code == EXIT_FAILURE, result.output
    assert "all 2 rows were unreadable (missing_file: 2; e.g." in result.output
    assert "nothing was written" in result.output and "Traceback" not in result.output
    assert not out.exists()
    make_photo(source / "images" / "gone_1.jpg")  # one readable image is enough to import
    assert len(import_source(str(source / "labels.csv"), images_dir=source / "images")) == 2


def test_validation_that_accepts_nothing_writes_nothing(tmp_path: Path) -> None:
    broken = [tmp_path / "notes.jpg", tmp_path / "empty.jpg"]
    broken[0].write_text("not an image\n")
    broken[1].write_bytes(b"")
    raw = tmp_path / "raw"
    write_manifest(pd.DataFrame({"path": [str(p) for p in broken], "label": ["a", "b"]}), raw)
    out = tmp_path / "valid"

    result = clip_har("data", "validate", str(raw), "-o", str(out))

    assert result.exit_code == EXIT_FAILURE, result.output
    assert "all 2 rows were rejected (empty_file: 1, not_an_image: 1" in result.output
    assert not out.exists()


def test_split_with_no_accepted_rows_fails(tmp_path: Path) -> None:
    source = empty_manifest(tmp_path / "valid")
    out = tmp_path / "split"

    result = clip_har("data", "split", str(source), "-o", str(out))

    assert result.exit_code == EXIT_FAILURE, result.output
    assert "the manifest has no rows" in result.output
    assert not out.exists()
    with pytest.raises(DataError, match="no rows to split"):
        split_manifest(conform(pd.DataFrame({"path": [], "label": []})))


@pytest.mark.parametrize("command", ["validate", "balance", "preview-augment"])
def test_every_data_command_refuses_an_empty_manifest(command: str, tmp_path: Path) -> None:
    source = empty_manifest(tmp_path / "empty")
    out = tmp_path / ("grid.png" if command == "preview-augment" else "out")

    result = clip_har("data", command, str(source), "-o", str(out))

    assert result.exit_code == EXIT_FAILURE, result.output
    assert "the manifest has no rows (empty data)" in result.output
    assert not out.exists()


def test_no_empty_manifest_is_written_or_loaded(tmp_path: Path) -> None:
    nothing = conform(pd.DataFrame({"path": [], "label": []}))
    with pytest.raises(ManifestError, match=r"refusing to write .* no rows"):
        write_manifest(nothing, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(empty_manifest(tmp_path / "old"))
    preprocessor = Preprocessor(ImageConfig.from_hf({"size": 16, "crop_size": 16}))
    with pytest.raises(DatasetError, match="no rows"):
        ManifestDataset(nothing, preprocessor, ["run"])


def test_split_warns_about_a_split_left_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame = read_manifest(labelled_manifest(tmp_path / "raw", count=2))
    result = split_manifest(frame, [0.8, 0.1, 0.1])
    assert result.report["counts"]["train"] == 2
    assert "the val split is empty" in caplog.text


def test_balance_caps_its_target(tmp_path: Path) -> None:
    source = labelled_manifest(tmp_path / "raw")
    out = tmp_path / "balanced"

    result = clip_har("data", "balance", str(source), "-o", str(out), "--target", "10000000")

    assert result.exit_code == EXIT_USAGE, result.output
    assert f"above the limit of {MAX_TARGET} rows per class" in result.output
    assert not out.exists()
    with pytest.raises(BalanceError, match=f"limit of {MAX_TARGET}"):
        resample(read_manifest(source), MAX_TARGET + 1)


@pytest.mark.parametrize(
    ("args", "limit"),
    [
        (("export", "any-bundle", "--parity-images", "5000"), "less than or equal to 4096"),
        (("evaluate", "compare", "a", "b", "-o", "c", "--bootstrap", "200000"), "100000"),
        (("evaluate", "--bootstrap", "200000"), "100000"),
    ],
    ids=["export-parity-images", "compare-bootstrap", "evaluate-bootstrap"],
)
def test_work_scaling_model_options_are_capped(
    args: tuple[str, ...], limit: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parity images and bootstrap resamples multiply work and memory: a usage error over
    the cap, before anything is read or written."""
    monkeypatch.chdir(tmp_path)
    result = clip_har(*args)
    assert result.exit_code == EXIT_USAGE, result.output
    assert limit in " ".join(result.output.split()), result.output
    assert list(tmp_path.iterdir()) == []
