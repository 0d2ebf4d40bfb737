"""Content fingerprints: sha256 of the bytes (exact duplicates) and a perceptual hash (near)."""

from __future__ import annotations

import imagehash
from PIL import Image

from clip_har.imaging import to_rgb


def perceptual_hash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash (``imagehash.phash``) of the RGB image, as 16 hex chars."""
    return str(imagehash.phash(to_rgb(image)))


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex perceptual hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
