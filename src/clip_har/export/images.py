"""Images for parity checks, calibration and benchmarks: real photos when a folder or data
manifest is given, otherwise seeded synthetic images through the same preprocessing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from clip_har.data.manifest import MANIFEST_FILE, read_manifest
from clip_har.errors import ClipHarError
from clip_har.imaging import ImageConfig, ImageLoadError, Preprocessor, images_under, load_image

log = logging.getLogger(__name__)


def image_files(data: Path) -> list[Path]:
    """Every image of a data manifest directory, or every image file under a folder."""
    if (data / MANIFEST_FILE).is_file() or data.suffix == ".parquet":
        return [Path(p) for p in read_manifest(data)["path"]]
    if not data.is_dir():
        raise ClipHarError(f"image data not found: {data} (a folder of images or a manifest)")
    return images_under(data)


def sample_pixels(
    config: ImageConfig, data: Path | None, count: int, seed: int = 0
) -> tuple[np.ndarray, bool]:
    """``count`` preprocessed images ``[n, 3, H, W]`` and whether they are real photos.

    Real photos are a seeded sample of ``data`` (unreadable files are skipped); with no
    data, seeded random images of varied sizes stand in for them."""
    if count < 1:
        raise ClipHarError(f"the image count must be at least 1, got {count}")
    preprocessor = Preprocessor(config)
    rng = np.random.default_rng(seed)
    if data is None:
        images = [
            Image.fromarray(rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8))
            for h, w in rng.integers(48, 320, size=(count, 2))
        ]
        return preprocessor.batch(images), False
    files = image_files(data)
    if not files:
        raise ClipHarError(f"no images found in {data}")
    order = rng.permutation(len(files))
    loaded: list[Image.Image] = []
    for index in order:
        try:
            loaded.append(load_image(files[index]))
        except ImageLoadError as exc:
            log.warning("skipping %s: %s", files[index], exc.reason)
        if len(loaded) == count:
            break
    if not loaded:
        raise ClipHarError(f"none of the images in {data} could be read")
    return preprocessor.batch(loaded), True
