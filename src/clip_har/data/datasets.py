"""Torch datasets over a manifest, and the DataLoader factory training uses.

Skipped samples, the usage example and reproducibility: docs/data.md#datasets-and-the-loader.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray
from torch.utils.data import DataLoader, Dataset, Sampler

from clip_har.data.augment import Augmenter, sample_seed
from clip_har.errors import DatasetError
from clip_har.imaging import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, Preprocessor, load_image
from clip_har.io import plural

logger = logging.getLogger(__name__)

__all__ = [
    "Batch",
    "ManifestDataset",
    "Sample",
    "Skipped",
    "collate",
    "make_loader",
]


class Sample(NamedTuple):
    """One preprocessed image."""

    pixels: torch.Tensor  # float32 [3, H, W], normalised
    label: int  # index into the dataset's classes
    row: int  # position of the row in the manifest the dataset was built from


class Skipped(NamedTuple):
    """A row whose file could not be read or decoded when the sample was requested."""

    row: int
    reason: str


class Batch(NamedTuple):
    """Collated samples; rows whose files failed are left out and listed in ``skipped_rows``."""

    pixels: torch.Tensor  # float32 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    rows: torch.Tensor  # int64 [N]
    skipped_rows: torch.Tensor  # int64 [K]

    @property
    def skipped(self) -> int:
        """How many samples of this batch were skipped."""
        return int(self.skipped_rows.numel())


class ManifestDataset(Dataset[Sample | Skipped]):
    """The labelled rows of a manifest (optionally one split) as preprocessed samples.

    ``classes`` fixes the label indices. ``augment`` is meant for the training split only;
    its ``size`` must be the preprocessor's output size. Call :meth:`set_epoch` before
    each epoch so augmentation draws change between epochs (also in worker processes).
    ``min_side`` and ``max_pixels`` are the image guards (``data.min_image_side`` and
    ``data.max_image_pixels``); an image outside them is skipped.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        preprocessor: Preprocessor,
        classes: Sequence[str],
        *,
        split: str | None = None,
        augment: Augmenter | None = None,
        min_side: int = DEFAULT_MIN_SIDE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if len(set(classes)) != len(classes):
            raise DatasetError("class names must be unique")
        if augment is not None and augment.size != preprocessor.output_size:
            raise DatasetError(
                f"augmentation size {augment.size} differs from the preprocessing output "
                f"size {preprocessor.output_size}"
            )
        selected = np.ones(len(manifest), dtype=bool)
        if split is not None:
            selected = manifest["split"].eq(split).fillna(False).to_numpy(dtype=bool)
            if not selected.any():
                present = sorted(str(s) for s in manifest["split"].dropna().unique())
                raise DatasetError(
                    f"no rows in split {split!r} (splits present: {', '.join(present) or 'none'}; "
                    "run `clip-har data split` first)"
                )
        rows = np.flatnonzero(selected)
        if not len(rows):
            raise DatasetError("the manifest has no rows: there is nothing to load")
        labels = manifest["label"].iloc[rows]
        if labels.isna().any():
            raise DatasetError(
                f"{plural(int(labels.isna().sum()), 'row')} without a label; training needs "
                "labelled data"
            )
        index = {name: i for i, name in enumerate(classes)}
        unknown = sorted(set(labels) - index.keys())
        if unknown:
            shown = ", ".join(map(repr, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise DatasetError(
                f"{plural(len(unknown), 'label')} not among the {len(classes)} classes: {shown}"
            )
        self.preprocessor = preprocessor
        self.classes = list(classes)
        self.augment = augment
        self.min_side = min_side
        self.max_pixels = max_pixels
        self.rows: NDArray[np.int64] = rows.astype(np.int64)
        self.labels: NDArray[np.int64] = np.array([index[x] for x in labels], dtype=np.int64)
        self._paths = [str(p) for p in manifest["path"].iloc[rows]]
        # shared memory: set_epoch reaches worker processes that already exist
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # type: ignore[no-untyped-call]

    @property
    def output_size(self) -> tuple[int, int]:
        """``(height, width)`` of every sample."""
        return self.preprocessor.output_size

    @property
    def epoch(self) -> int:
        """The epoch augmentation and :func:`make_loader`'s shuffling draw for."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; call it before iterating the loader, never during."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> Sample | Skipped:
        row = int(self.rows[index])
        path = self._paths[index]
        try:
            image = load_image(path, min_side=self.min_side, max_pixels=self.max_pixels)
            pixels = self.preprocessor.resized_uint8(image)
        except (OSError, ValueError) as exc:  # ImageLoadError is a ValueError
            logger.warning("skipping manifest row %d (%s): %s", row, path, exc)
            return Skipped(row, str(exc))
        if self.augment is not None:
            pixels = self.augment(pixels, index=row, epoch=self.epoch)
        normalised = self.preprocessor.normalise(pixels)
        return Sample(torch.from_numpy(normalised), int(self.labels[index]), row)


def collate(samples: Sequence[Sample | Skipped], *, output_size: tuple[int, int]) -> Batch:
    """Stack the samples, leaving out (and listing) the skipped ones; may be empty."""
    kept = [s for s in samples if isinstance(s, Sample)]
    skipped = [s.row for s in samples if isinstance(s, Skipped)]
    pixels = (
        torch.stack([s.pixels for s in kept])
        if kept
        else torch.empty((0, 3, *output_size), dtype=torch.float32)
    )
    return Batch(
        pixels=pixels,
        labels=torch.tensor([s.label for s in kept], dtype=torch.int64),
        rows=torch.tensor([s.row for s in kept], dtype=torch.int64),
        skipped_rows=torch.tensor(skipped, dtype=torch.int64),
    )


class _EpochShuffle(Sampler[int]):
    """A permutation drawn from ``(seed, dataset.epoch)`` alone, so worker settings,
    earlier epochs and restarts cannot change it."""

    def __init__(self, dataset: ManifestDataset, seed: int) -> None:
        self._dataset = dataset
        self._seed = seed

    def __len__(self) -> int:
        return len(self._dataset)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(sample_seed(self._seed, self._dataset.epoch, 0, stream=1))
        yield from torch.randperm(len(self._dataset), generator=generator).tolist()


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in each worker from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: ManifestDataset,
    *,
    batch_size: int | None = None,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    sampler: Sampler[int] | None = None,
    batch_sampler: Sampler[list[int]] | None = None,
    drop_last: bool = False,
) -> DataLoader[Sample | Skipped]:
    """A DataLoader of :class:`Batch` objects: seeded, persistent workers, pinned memory on CUDA.

    Batches come from ``batch_size`` (with ``shuffle``, which draws each epoch's order
    from ``(seed, dataset.epoch)``, or a ``sampler`` such as ``DistributedSampler``) or
    from a ``batch_sampler`` that yields whole batches (e.g. the trainer's distributed
    ``EpochSampler``).
    """
    if sampler is not None and shuffle:
        raise ValueError("pass either sampler or shuffle=True, not both")
    if (batch_sampler is None) == (batch_size is None):
        raise ValueError("pass exactly one of batch_size and batch_sampler")
    if batch_sampler is not None and (shuffle or sampler is not None or drop_last):
        raise ValueError("a batch_sampler decides order and batches: no shuffle/sampler/drop_last")
    if sampler is None and shuffle:
        sampler = _EpochShuffle(dataset, seed)
    batching: dict[str, Any] = (
        {"batch_sampler": batch_sampler}
        if batch_sampler is not None
        else {"batch_size": batch_size, "sampler": sampler, "drop_last": drop_last}
    )
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        num_workers=num_workers,
        collate_fn=functools.partial(collate, output_size=dataset.output_size),
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_seed_worker,
        generator=generator,
        persistent_workers=num_workers > 0,
        **batching,
    )
