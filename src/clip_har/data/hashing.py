"""Content fingerprints: sha256 of the bytes (exact duplicates) and a perceptual hash (near)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import imagehash
from PIL import Image

from clip_har.inference.preprocess import to_rgb

PHASH_BITS = 64


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``hashlib`` algorithm name), read in 1 MiB blocks."""
    digest = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return file_digest(path)


def perceptual_hash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash (``imagehash.phash``) of the RGB image, as 16 hex chars."""
    return str(imagehash.phash(to_rgb(image)))


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex perceptual hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
