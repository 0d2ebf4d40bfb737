"""Every source kind becomes the same manifest; source files are never touched."""

from __future__ import annotations

import io
import time
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clip_har.data.manifest import COLUMNS
from clip_har.data.sources import import_source
from clip_har.errors import ClipHarError, SourceError
from clip_har.io import file_sha256


def make_photo(path: Path, size: tuple[int, int] = (120, 90), seed: int = 0) -> Path:
    """A smooth random colour image in the format named by the suffix."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path)
    return path


def _tree_hashes(root: Path) -> dict[Path, str]:
    return {p: file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _check_manifest(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == list(COLUMNS)
    assert frame["split"].isna().all()
    assert all(Path(p).is_absolute() for p in frame["path"])


def test_har_sample_folder(har_sample_dir: Path) -> None:
    before = _tree_hashes(har_sample_dir)
    calls: list[tuple[int, int]] = []
    frame = import_source(str(har_sample_dir), progress=lambda d, t: calls.append((d, t)))
    _check_manifest(frame)
    assert len(frame) == 155 and frame["label"].nunique() == 15
    assert frame["sha256"].notna().all() and frame["phash"].str.len().eq(16).all()
    assert (frame["format"] == "JPEG").all() and (frame["width"] > 0).all()
    assert frame["source"].iloc[0] == f"csv:{har_sample_dir / 'labels.csv'}"
    for path, digest in zip(frame["path"], frame["sha256"], strict=True):
        assert before[Path(path)] == digest
    assert frame["sha256"].duplicated().sum() == 5  # byte-identical copies in the sample set
    assert calls[-1] == (155, 155)
    assert _tree_hashes(har_sample_dir) == before


def test_kaggle_training_set_layout(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    for index in range(3):
        make_photo(tmp_path / "train" / f"Image_{index}.jpg", seed=index)
    (tmp_path / "Training_set.csv").write_text(
        "filename,label\nImage_0.jpg,sitting\nImage_1.jpg,running\nImage_2.jpg,sitting\n"
    )
    frame = import_source(str(tmp_path))
    _check_manifest(frame)
    assert list(frame["label"]) == ["sitting", "running", "sitting"]
    assert frame["path"].iloc[0] == str(tmp_path / "train" / "Image_0.jpg")


def test_messy_csv_with_bom_crlf_extra_columns_whitespace_and_missing_file(
    tmp_path: Path,
) -> None:
    images = tmp_path / "pics"
    images.mkdir()
    make_photo(images / "a.jpg", seed=1)
    make_photo(images / "b b.png", seed=2)
    text = (
        " ID , File ,  Notes , CLASS \r\n"
        "1,  a.jpg , first ,  sitting \r\n"
        '2,b b.png,"with, comma",running\r\n'
        "\r\n"
        "3, gone.jpg ,,eating\r\n"
        "4,a.jpg,,\r\n"
    )
    csv_path = tmp_path / "meta" / "list.csv"
    csv_path.parent.mkdir()
    csv_path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    before = _tree_hashes(tmp_path)

    frame = import_source(str(csv_path), images_dir=images)
    _check_manifest(frame)
    assert list(frame["path"]) == [
        str(images / n) for n in ("a.jpg", "b b.png", "gone.jpg", "a.jpg")
    ]
    assert list(frame["label"].fillna("<null>")) == ["sitting", "running", "eating", "<null>"]
    missing = frame.iloc[2]
    assert pd.isna(missing["sha256"]) and pd.isna(missing["phash"]) and pd.isna(missing["width"])
    assert frame.loc[[0, 1, 3], "sha256"].notna().all()
    assert frame["source"].iloc[0] == f"csv:{csv_path}"
    assert _tree_hashes(tmp_path) == before


def test_csv_images_default_to_its_folder_and_only_filename_means_unlabelled(
    tmp_path: Path,
) -> None:
    make_photo(tmp_path / "x.jpg")
    (tmp_path / "files.csv").write_text("image\nx.jpg\n")
    frame = import_source(str(tmp_path / "files.csv"))
    assert frame["path"].iloc[0] == str(tmp_path / "x.jpg") and frame["label"].isna().all()


def test_csv_without_label_column_names_the_expected_columns(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("filename,tag\nx.jpg,a\n")
    with pytest.raises(SourceError, match=r"no label column; expected one of label, class"):
        import_source(str(tmp_path / "bad.csv"))
    (tmp_path / "bad2.csv").write_text("name,label\nx.jpg,a\n")
    with pytest.raises(SourceError, match=r"no filename column.*found: name, label"):
        import_source(str(tmp_path / "bad2.csv"))


def test_class_subfolders_recursive_with_bad_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "running" / "day1").mkdir(parents=True)
    (root / "sitting").mkdir()
    make_photo(root / "running" / "r0.jpg", seed=0)
    make_photo(root / "running" / "day1" / "r1.png", seed=1)
    make_photo(root / "sitting" / "s0.jpg", seed=2)
    (root / "sitting" / "empty.jpg").write_bytes(b"")
    (root / "sitting" / "notes.jpg").write_text("not an image")
    (root / "sitting" / "README.txt").write_text("ignored: not an image extension")
    (root / "sitting" / ".hidden.jpg").write_bytes(b"ignored")
    before = _tree_hashes(root)

    frame = import_source(str(root))
    _check_manifest(frame)
    by_name = {Path(p).name: row for p, row in zip(frame["path"], frame.itertuples(), strict=True)}
    assert set(by_name) == {"r0.jpg", "r1.png", "s0.jpg", "empty.jpg", "notes.jpg"}
    assert by_name["r1.png"].label == "running" and by_name["s0.jpg"].label == "sitting"
    assert by_name["r1.png"].format == "PNG" and by_name["r1.png"].mode == "RGB"
    for bad in ("empty.jpg", "notes.jpg"):
        assert isinstance(by_name[bad].sha256, str) and pd.isna(by_name[bad].phash)
    assert frame["source"].iloc[0] == f"folder:{root}"
    assert _tree_hashes(root) == before


def test_flat_folder_is_unlabelled(photo_folder: Path) -> None:
    frame = import_source(str(photo_folder))
    _check_manifest(frame)
    assert len(frame) == 5 and frame["label"].isna().all()
    assert frame["phash"].notna().all()


def test_exif_orientation_and_pixel_guard(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 40x20, shown 20x40
    Image.new("RGB", (40, 20), (10, 200, 30)).save(tmp_path / "rot.jpg", exif=exif)
    make_photo(tmp_path / "big.png", size=(300, 300))
    frame = import_source(str(tmp_path), max_pixels=50_000)
    rows = {Path(p).stem: row for p, row in zip(frame["path"], frame.itertuples(), strict=True)}
    assert (rows["rot"].width, rows["rot"].height, rows["rot"].format) == (20, 40, "JPEG")
    assert isinstance(rows["big"].sha256, str) and pd.isna(rows["big"].width)


def _image_dataset() -> datasets.Dataset:
    images = []
    for index in range(4):
        buffer = io.BytesIO()
        Image.new("RGB", (40 + index, 30), (index * 60, 20, 90)).save(
            buffer, "PNG" if index % 2 else "JPEG"
        )
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "labels": datasets.ClassLabel(names=["clapping", "eating"]),
            "note": datasets.Value("string"),
        }
    )
    data = {"image": images, "labels": [0, 1, 1, 0], "note": ["a", "b", "c", "d"]}
    return datasets.Dataset.from_dict(data, features=features)


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_local_hf_dataset_imports_into_content_addressed_cache(tmp_path: Path, layout: str) -> None:
    dataset = _image_dataset()
    source = tmp_path / "ds"
    if layout == "save_to_disk":
        dataset.save_to_disk(str(source))
    else:
        (source / "data").mkdir(parents=True)
        dataset.to_parquet(str(source / "data" / "train-00000-of-00001.parquet"))
    cache = tmp_path / "cache"
    before = _tree_hashes(source)

    frame = import_source(str(source), cache_dir=cache)
    _check_manifest(frame)
    assert list(frame["label"]) == ["clapping", "eating", "eating", "clapping"]
    assert list(frame["format"]) == ["JPEG", "PNG", "JPEG", "PNG"]
    assert list(frame["width"]) == [40, 41, 42, 43]
    raw = dataset.cast_column("image", datasets.Image(decode=False))["image"]
    for path, digest, image in zip(frame["path"], frame["sha256"], raw, strict=True):
        assert Path(path).parent == cache / "datasets"
        assert Path(path).name.startswith(digest)
        assert Path(path).read_bytes() == image["bytes"]
    assert (
        frame["source"].iloc[0] == f"{'disk' if layout == 'save_to_disk' else 'parquet'}:{source}"
    )

    stamps = {p: Path(p).stat().st_mtime_ns for p in frame["path"]}
    again = import_source(str(source), cache_dir=cache)
    assert {p: Path(p).stat().st_mtime_ns for p in again["path"]} == stamps  # written once
    assert len(list((cache / "datasets").iterdir())) == 4
    assert _tree_hashes(source) == before


def test_hub_source_offline_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    started = time.monotonic()
    with pytest.raises(ClipHarError) as caught:
        import_source("hf:Bingsu/Human_Action_Recognition:train", cache_dir=tmp_path / "cache")
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "'Bingsu/Human_Action_Recognition'" in message and "could not be loaded" in message
    assert "save_to_disk" in message and "parquet" in message and "connected" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("nothing-here", "source not found"),
        ("empty-dir", "no images, CSV, saved dataset or parquet files found"),
        ("notes.txt", "unsupported source file type '.txt'"),
    ],
)
def test_unrecognised_sources_name_what_was_expected(
    tmp_path: Path, name: str, pattern: str
) -> None:
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "notes.txt").write_text("not a data source")
    with pytest.raises(SourceError, match=pattern) as caught:
        import_source(str(tmp_path / name))
    assert "class sub-folders" in str(caught.value) and "hf:NAME" in str(caught.value)


def test_images_dir_only_for_csv_and_bad_hub_name(photo_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="--images-dir applies to CSV"):
        import_source(str(photo_folder), images_dir=tmp_path)
    with pytest.raises(SourceError, match=r"expected hf:NAME\[:split\]"):
        import_source("hf:")
