"""``clip-har data preview-augment MANIFEST -o grid.png``: originals beside augmented copies.

Registered in :mod:`clip_har.cli.data` as
``app.command("preview-augment")(preview_augment_command)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from numpy.typing import NDArray
from rich.markup import escape

from clip_har.cli.common import ProgressBar, err_console
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.data.augment import POLICIES, Augmenter
from clip_har.data.manifest import read_manifest
from clip_har.errors import ClipHarError
from clip_har.imaging import ImageConfig, Preprocessor, load_image
from clip_har.io import atomic_write, plural

logger = logging.getLogger(__name__)

_CELL_INCHES = 2.0
_DPI = 100
# Caps on the flags that scale the grid's work and memory (a 904-row grid reached 2.8 GB):
# out-of-range values are usage errors that name the limit.
MAX_IMAGES = 32
MAX_COPIES = 8
MAX_SIZE = 1024


Progress = Callable[[int, int], None]


def _pick(
    frame: pd.DataFrame, preprocessor: Preprocessor, count: int, seed: int, progress: Progress
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
        progress(len(picked), count)
        if len(picked) == count:
            break
    return picked


def _save_grid(
    picked: list[tuple[int, str, NDArray[np.uint8]]],
    augmenter: Augmenter,
    copies: int,
    output: Path,
    progress: Progress,
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
    for row_index, ((row, label, pixels), axes) in enumerate(zip(picked, grid, strict=True)):
        axes[0].imshow(pixels)
        axes[0].set_title(label, fontweight="bold", parse_math=False)
        for epoch in range(copies):
            axes[1 + epoch].imshow(augmenter(pixels, index=row, epoch=epoch))
            axes[1 + epoch].set_title(f"epoch {epoch}", color="dimgray")
            progress(row_index * copies + epoch + 1, len(picked) * copies)
        for cell in axes:
            cell.set_axis_off()
    with err_console.status("drawing the grid"), atomic_write(output) as staging:
        figure.savefig(staging, format="png", dpi=_DPI)


def preview_augment_command(
    manifest: Path = typer.Argument(
        ..., metavar="MANIFEST", help="Folder holding manifest.parquet, or the file."
    ),
    output: Path = output_option(kind="file", help="PNG file to write."),
    policy: str = typer.Option("strong", "--policy", help=f"One of: {', '.join(POLICIES)}."),
    images: int = typer.Option(
        6, "--images", min=1, max=MAX_IMAGES, help="How many images (grid rows)."
    ),
    copies: int = typer.Option(
        4, "--copies", min=1, max=MAX_COPIES, help="Augmented copies per image."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for the picks and augmentation."),
    size: int = typer.Option(
        224, "--size", min=8, max=MAX_SIZE, help="Model input side (resize + crop)."
    ),
    force: bool = force_option(),
) -> None:
    """Show randomly picked images beside augmented copies, as training would see them.

    Copy k of an image is exactly what training with the same --seed, policy and size
    feeds for that manifest row in epoch k. Unreadable files are skipped with a warning.
    """
    augmenter = Augmenter(policy, (size, size), seed=seed)
    preprocessor = Preprocessor(ImageConfig.from_hf({"size": size, "crop_size": size}))
    frame = read_manifest(manifest)
    read = [manifest, *frame["path"].dropna()]
    prepare_output(output, suffixes=(".png",), inputs=read, force=force)
    with ProgressBar("loading images", threshold=0) as bar:  # each step is slow: always a bar
        picked = _pick(frame, preprocessor, images, seed, bar)
        if not picked:
            raise ClipHarError(f"no readable image in {plural(len(frame), 'row')} of {manifest}")
        if len(picked) < images:
            logger.warning(
                "only %s readable; the grid has %s",
                plural(len(picked), "image"),
                plural(len(picked), "row"),
            )
        _save_grid(picked, augmenter, copies, output, partial(bar.update, row="augmenting"))
    err_console.print(
        f"wrote {escape(str(output))}: {plural(len(picked), 'image')} x "
        f"{plural(copies, f'{policy} copy', f'{policy} copies')}"
    )
