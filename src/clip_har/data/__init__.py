"""Data platform: sources, manifest, validation, splits, balance, augmentation, datasets.

See docs/data.md.
"""

from clip_har.data.versioning import version

__all__ = ["version"]
