"""``clip-har data preview-augment MANIFEST -o grid.png``: originals beside augmented copies.

Registered in :mod:`clip_har.cli.data` as
``app.command("preview-augment")(preview_augment_command)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from numpy.typing import NDArray
from rich.markup import escape

from clip_har.cli.common import err_console
from clip_har.data.augment import POLICIES, Augmenter
from clip_har.data.manifest import read_manifest
from clip_har.errors import ClipHarError
from clip_har.imaging import ImageConfig, Preprocessor, load_image
from clip_har.io import atomic_write

logger = logging.getLogger(__name__)

_CELL_INCHES = 2.0
_DPI = 100


def _pick(
    frame: pd.DataFrame, preprocessor: Preprocessor, count: int, seed: int
) -> list[tuple[int, str, NDArray[np.uint8]]]:
    """Up to ``count`` readable rows in a seeded random order: (row, label, pixels)."""
    picked: list[tuple[int, str, NDArray[np.uint8]]] = []
    for row in np.random.default_rng(seed).permutation(len(frame)):
        path, label = frame["path"].iat[row], frame["label"].iat[row]
        try:
            pixels = preprocessor.resized_uint8(load_image(str(path)))
        except (OSError, ValueError) as exc:  # ImageLoadError is a ValueError
            logger.warning("skipping manifest row %d (%s): %s", row, path, exc)
            continue
        picked.append((int(row), "(unlabelled)" if pd.isna(label) else str(label), pixels))
        if len(picked) == count:
            break
    return picked


def _save_grid(
    picked: list[tuple[int, str, NDArray[np.uint8]]],
    augmenter: Augmenter,
    copies: int,
    output: Path,
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = 1 + copies
    figure = Figure(
        figsize=(columns * _CELL_INCHES, len(picked) * _CELL_INCHES + 0.4), layout="constrained"
    )
    FigureCanvasAgg(figure)
    figure.suptitle(f"augmentation policy {augmenter.policy!r}, seed {augmenter.seed}")
    grid = figure.subplots(len(picked), columns, squeeze=False)
    for (row, label, pixels), axes in zip(picked, grid, strict=True):
        axes[0].imshow(pixels)
        axes[0].set_title(label, fontweight="bold", parse_math=False)
        for epoch in range(copies):
            axes[1 + epoch].imshow(augmenter(pixels, index=row, epoch=epoch))
            axes[1 + epoch].set_title(f"epoch {epoch}", color="dimgray")
        for cell in axes:
            cell.set_axis_off()
    with atomic_write(output) as staging:
        figure.savefig(staging, format="png", dpi=_DPI)


def preview_augment_command(
    manifest: Path = typer.Argument(..., help="Folder holding manifest.parquet, or the file."),
    output: Path = typer.Option(..., "--output", "-o", help="PNG file to write."),
    policy: str = typer.Option("strong", "--policy", help=f"One of: {', '.join(POLICIES)}."),
    images: int = typer.Option(6, "--images", min=1, help="How many images (grid rows)."),
    copies: int = typer.Option(4, "--copies", min=1, help="Augmented copies per image."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for the picks and augmentation."),
    size: int = typer.Option(224, "--size", min=8, help="Model input side (resize + crop)."),
) -> None:
    """Show randomly picked images beside augmented copies, as training would see them.

    Copy k of an image is exactly what training with the same --seed, policy and size
    feeds for that manifest row in epoch k. Unreadable files are skipped with a warning.
    """
    augmenter = Augmenter(policy, (size, size), seed=seed)
    preprocessor = Preprocessor(ImageConfig.from_hf({"size": size, "crop_size": size}))
    frame = read_manifest(manifest)
    picked = _pick(frame, preprocessor, images, seed)
    if not picked:
        raise ClipHarError(f"no readable image among the {len(frame)} rows of {manifest}")
    if len(picked) < images:
        logger.warning("only %d readable image(s); the grid has %d rows", len(picked), len(picked))
    _save_grid(picked, augmenter, copies, output)
    err_console.print(
        f"wrote {escape(str(output))}: {len(picked)} image(s) x {copies} {policy} cop"
        + ("y" if copies == 1 else "ies")
    )
