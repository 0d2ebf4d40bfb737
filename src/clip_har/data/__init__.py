"""Data platform: sources, manifest, validation, splits, balance, augmentation, datasets."""
