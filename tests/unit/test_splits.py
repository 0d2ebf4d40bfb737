"""Group-aware stratified splits: duplicates never cross splits, classes stay on target."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clip_har.config import load_settings
from clip_har.data.duplicates import duplicate_group_ids
from clip_har.data.hashing import perceptual_hash
from clip_har.data.manifest import conform
from clip_har.data.splits import split_manifest, targets
from clip_har.errors import ConfigError
from clip_har.io import file_sha256


def synthetic_manifest(seed: int = 0) -> pd.DataFrame:
    """15 classes x 23 images with random far-apart hashes, plus planted duplicates."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(15):
        for i in range(23):
            rows.append(
                {
                    "path": f"/data/c{c}/{i}.jpg",
                    "label": f"class_{c}",
                    "sha256": f"{rng.integers(0, 2**63):064x}",
                    "phash": f"{int(rng.integers(0, 2**63)) | (1 << 63):016x}",
                }
            )
    frame = pd.DataFrame(rows)
    for c in range(15):  # an exact copy and a near duplicate (2 bits flipped) per class
        base = c * 23
        frame.loc[base + 1, ["sha256", "phash"]] = frame.loc[base, ["sha256", "phash"]].values
        near = int(frame.loc[base + 2, "phash"], 16) ^ 0b101
        frame.loc[base + 3, "phash"] = f"{near:016x}"
    return conform(frame)


def test_targets_use_largest_remainder() -> None:
    assert targets(23, (0.7, 0.15, 0.15)) == [16, 4, 3]
    assert sum(targets(7, (0.5, 0.25, 0.25))) == 7
    assert targets(0, (0.7, 0.15, 0.15)) == [0, 0, 0]


@pytest.mark.parametrize(
    ("ratios", "problem"),
    [
        ("0.7,0.3", "three non-negative numbers"),
        ([0.5, 0.5, 0.5], "three non-negative numbers"),
        ("-0.1,0.6,0.5", "three non-negative numbers"),
        ("a,b,c", r"split\.ratios\.0: Input should be a valid number"),
    ],
)
def test_bad_ratios_are_clear_errors(
    ratios: str | list[float], problem: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml
    monkeypatch.delenv("CLIP_HAR_PARAMS", raising=False)
    with pytest.raises(ConfigError, match=problem):
        load_settings(overrides={"split": {"ratios": ratios}})


def test_split_is_stratified_and_leak_free() -> None:
    frame = synthetic_manifest()
    result = split_manifest(frame, (0.7, 0.15, 0.15), seed=1)
    manifest, report = result.manifest, result.report
    assert report["cross_split_leakage"] == 0
    assert report["max_deviation_from_target"] <= 1
    groups = duplicate_group_ids(manifest)
    assert (manifest.groupby(groups)["split"].nunique() == 1).all()
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert report["counts"]["train"] + report["counts"]["val"] + report["counts"]["test"] == 345


def test_split_is_reproducible_from_the_seed() -> None:
    frame = synthetic_manifest()
    first = split_manifest(frame, seed=7).manifest["split"].tolist()
    assert split_manifest(frame, seed=7).manifest["split"].tolist() == first
    assert split_manifest(frame, seed=8).manifest["split"].tolist() != first


def test_unlabelled_manifest_splits_by_ratio() -> None:
    frame = synthetic_manifest().assign(label=pd.NA)
    report = split_manifest(conform(frame), (0.8, 0.1, 0.1)).report
    assert report["cross_split_leakage"] == 0
    assert abs(report["counts"]["train"] - 276) <= 1


def test_real_dev_photos_split_without_leakage(har_dev_dir: Path) -> None:
    labels = pd.read_csv(har_dev_dir / "labels.csv")
    paths = [har_dev_dir / "images" / name for name in labels["filename"]]
    frame = conform(
        pd.DataFrame(
            {
                "path": [str(p) for p in paths],
                "label": labels["label"],
                "sha256": [file_sha256(p) for p in paths],
                "phash": [perceptual_hash(Image.open(p)) for p in paths],
            }
        )
    )
    report = split_manifest(frame, seed=0).report
    assert report["cross_split_leakage"] == 0
    assert report["max_deviation_from_target"] <= 1
