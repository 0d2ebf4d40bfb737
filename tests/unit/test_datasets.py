"""ManifestDataset and make_loader: preprocessing parity, labels, splits, skipped files, seeds."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_photo
from torch.utils.data import DataLoader, SequentialSampler

from clip_har.data.augment import Augmenter
from clip_har.data.datasets import (
    Batch,
    ManifestDataset,
    Sample,
    Skipped,
    collate,
    make_loader,
)
from clip_har.data.manifest import conform
from clip_har.errors import DatasetError
from clip_har.imaging import ImageConfig, Preprocessor, load_image

SIDE = 32
CLASSES = ["running", "sitting", "waving"]
PREPROCESSOR = Preprocessor(ImageConfig.from_hf({"size": SIDE, "crop_size": SIDE}))


@pytest.fixture
def manifest(tmp_path: Path) -> pd.DataFrame:
    """Ten generated photos: labels cycle over CLASSES, rows 0-6 train, 7-9 val."""
    sizes = [(60, 40), (40, 70), (50, 50), (90, 45)]
    paths = [
        make_photo(tmp_path / f"img_{i}.{'png' if i % 2 else 'jpg'}", sizes[i % 4], seed=i)
        for i in range(10)
    ]
    return conform(
        pd.DataFrame(
            {
                "path": [str(p) for p in paths],
                "label": [CLASSES[i % 3] for i in range(10)],
                "split": ["train"] * 7 + ["val"] * 3,
            }
        )
    )


def epoch_batches(
    loader: DataLoader[Sample | Skipped], dataset: ManifestDataset, epoch: int
) -> list[Batch]:
    dataset.set_epoch(epoch)
    return list(loader)


def assert_same_batches(left: list[Batch], right: list[Batch]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        for name in Batch._fields:
            assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_samples_match_the_shared_preprocessing(manifest: pd.DataFrame) -> None:
    dataset = ManifestDataset(manifest, PREPROCESSOR, CLASSES)
    assert len(dataset) == 10 and dataset.output_size == (SIDE, SIDE)
    np.testing.assert_array_equal(dataset.labels, [i % 3 for i in range(10)])
    for index in (0, 3, 9):
        sample = dataset[index]
        assert isinstance(sample, Sample)
        assert sample.pixels.dtype == torch.float32 and sample.pixels.shape == (3, SIDE, SIDE)
        assert (sample.label, sample.row) == (index % 3, index)
        expected = PREPROCESSOR(load_image(manifest["path"].iat[index]))
        np.testing.assert_array_equal(sample.pixels.numpy(), expected)


def test_split_filter_keeps_manifest_rows(manifest: pd.DataFrame) -> None:
    val = ManifestDataset(manifest, PREPROCESSOR, CLASSES, split="val")
    np.testing.assert_array_equal(val.rows, [7, 8, 9])
    batch = next(iter(make_loader(val, batch_size=8)))
    assert batch.rows.tolist() == [7, 8, 9] and batch.labels.tolist() == [1, 2, 0]
    assert batch.pixels.shape == (3, 3, SIDE, SIDE) and batch.skipped == 0
    with pytest.raises(DatasetError, match=r"no rows in split 'test' \(splits present: train, val"):
        ManifestDataset(manifest, PREPROCESSOR, CLASSES, split="test")


def test_bad_labels_and_settings_are_clear_errors(manifest: pd.DataFrame) -> None:
    with pytest.raises(DatasetError, match=r"1 label not among the 2 classes: 'waving'"):
        ManifestDataset(manifest, PREPROCESSOR, CLASSES[:2])
    unlabelled = manifest.copy()
    unlabelled.loc[4, "label"] = pd.NA
    with pytest.raises(DatasetError, match=r"1 row without a label"):
        ManifestDataset(unlabelled, PREPROCESSOR, CLASSES)
    ManifestDataset(unlabelled, PREPROCESSOR, CLASSES, split="val")  # row 4 is train
    with pytest.raises(DatasetError, match="unique"):
        ManifestDataset(manifest, PREPROCESSOR, [*CLASSES, "running"])
    with pytest.raises(DatasetError, match="augmentation size"):
        ManifestDataset(manifest, PREPROCESSOR, CLASSES, augment=Augmenter("light", (16, 16)))
    dataset = ManifestDataset(manifest, PREPROCESSOR, CLASSES)
    with pytest.raises(ValueError, match="not both"):
        make_loader(dataset, batch_size=2, shuffle=True, sampler=SequentialSampler(dataset))


@pytest.mark.parametrize("workers", [0, 2])
def test_vanished_and_corrupt_files_are_skipped_and_counted(
    manifest: pd.DataFrame, workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = ManifestDataset(
        manifest, PREPROCESSOR, CLASSES, augment=Augmenter("light", (SIDE, SIDE))
    )
    Path(manifest["path"].iat[2]).unlink()
    Path(manifest["path"].iat[5]).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    loader = make_loader(dataset, batch_size=3, shuffle=True, num_workers=workers, seed=1)
    with caplog.at_level(logging.WARNING):
        for epoch in range(2):
            batches = epoch_batches(loader, dataset, epoch)
            assert sum(batch.skipped for batch in batches) == 2
            assert sorted(r for b in batches for r in b.skipped_rows.tolist()) == [2, 5]
            kept = sorted(r for b in batches for r in b.rows.tolist())
            assert kept == [0, 1, 3, 4, 6, 7, 8, 9]
            assert sum(len(b.labels) for b in batches) == sum(len(b.pixels) for b in batches)
    if workers == 0:  # worker processes log in their own process
        assert "skipping manifest row 2" in caplog.text and "file not found" in caplog.text


def test_all_skipped_batches_are_empty_not_errors(manifest: pd.DataFrame) -> None:
    empty = collate([Skipped(4, "gone"), Skipped(1, "gone")], output_size=(SIDE, SIDE))
    assert empty.pixels.shape == (0, 3, SIDE, SIDE) and empty.labels.shape == (0,)
    assert empty.skipped == 2 and empty.skipped_rows.tolist() == [4, 1]
    val = ManifestDataset(manifest, PREPROCESSOR, CLASSES, split="val")
    for path in manifest["path"].iloc[7:]:
        Path(path).unlink()
    batches = list(make_loader(val, batch_size=2, num_workers=2))
    assert [b.skipped for b in batches] == [2, 1]
    assert all(b.pixels.shape == (0, 3, SIDE, SIDE) for b in batches)


def test_epochs_are_reproducible_across_worker_counts_and_restarts(
    manifest: pd.DataFrame,
) -> None:
    def dataset() -> ManifestDataset:
        augment = Augmenter("strong", (SIDE, SIDE), seed=5)
        return ManifestDataset(manifest, PREPROCESSOR, CLASSES, split="train", augment=augment)

    runs = []
    for workers in (0, 2):
        data = dataset()
        loader = make_loader(data, batch_size=3, shuffle=True, num_workers=workers, seed=11)
        runs.append([epoch_batches(loader, data, epoch) for epoch in range(2)])
    for epoch in range(2):
        assert_same_batches(runs[0][epoch], runs[1][epoch])
    first, second = runs[0]
    assert first[0].rows.tolist() != second[0].rows.tolist()  # a new order each epoch
    by_row = [{int(r): b.pixels[i] for b in run for i, r in enumerate(b.rows)} for run in runs[0]]
    assert not torch.equal(by_row[0][0], by_row[1][0])  # and new augmentation draws

    restarted = dataset()  # resuming at epoch 1 gives epoch 1 of the full run
    resumed = make_loader(restarted, batch_size=3, shuffle=True, seed=11)
    assert_same_batches(epoch_batches(resumed, restarted, 1), second)
    other_seed = make_loader(restarted, batch_size=3, shuffle=True, seed=12)
    assert epoch_batches(other_seed, restarted, 1)[0].rows.tolist() != second[0].rows.tolist()
