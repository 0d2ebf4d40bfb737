"""Train-time augmentation: ``none`` / ``light`` / ``strong`` policies built from kornia.

Placement and the determinism contract: docs/data.md#augmentation.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from clip_har.errors import UnknownPolicyError

__all__ = [
    "POLICIES",
    "Augmenter",
    "Policy",
    "build_augmentation",
    "sample_seed",
]

Policy = Literal["none", "light", "strong"]
POLICIES: tuple[Policy, ...] = get_args(Policy)


def _check_policy(policy: str) -> Policy:
    if policy not in POLICIES:
        raise UnknownPolicyError(policy, POLICIES)
    return policy


def build_augmentation(policy: str, size: tuple[int, int]) -> nn.Module:
    """The policy's module for float ``[B, 3, H, W]`` in ``[0, 1]``; output keeps ``size``.

    ``none`` is :class:`torch.nn.Identity`. ``light``: random resized crop (70-100% of the
    area), horizontal flip, mild colour jitter. ``strong``: a wider crop range, stronger
    colour jitter, random greyscale, a small affine warp, Gaussian blur and random erasing.
    Actions do not depend on left/right, so flipping keeps labels valid.
    """
    name = _check_policy(policy)
    if name == "none":
        return nn.Identity()
    from kornia import augmentation as kaug  # 0.4 s to import: only when a policy is built

    if name == "light":
        return kaug.AugmentationSequential(
            kaug.RandomResizedCrop(size, scale=(0.7, 1.0), cropping_mode="resample"),
            kaug.RandomHorizontalFlip(),
            kaug.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, p=0.5),
        )
    return kaug.AugmentationSequential(
        kaug.RandomResizedCrop(size, scale=(0.4, 1.0), cropping_mode="resample"),
        kaug.RandomHorizontalFlip(),
        kaug.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
        kaug.RandomGrayscale(p=0.2),
        kaug.RandomAffine(degrees=10.0, translate=(0.05, 0.05), scale=(0.9, 1.1), p=0.5),
        kaug.RandomGaussianBlur((5, 5), sigma=(0.1, 2.0), p=0.2),
        kaug.RandomErasing(scale=(0.02, 0.15), p=0.25),
    )


def sample_seed(seed: int, epoch: int, index: int, *, stream: int = 0) -> int:
    """A well-mixed 63-bit seed for sample ``index`` of ``epoch``; ``stream`` separates
    uses of the same key (augmentation is stream 0)."""
    if min(seed, epoch, index, stream) < 0:
        raise ValueError(
            f"seed, epoch, index and stream must be >= 0, got {seed}, {epoch}, {index}, {stream}"
        )
    sequence = np.random.SeedSequence([seed, epoch, index], spawn_key=(stream,))
    return int(sequence.generate_state(1, dtype=np.uint64)[0]) >> 1


class Augmenter:
    """Augments uint8 ``[H, W, 3]`` pixels of the model's input size with one policy."""

    def __init__(self, policy: str, size: tuple[int, int], *, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.policy: Policy = _check_policy(policy)
        self.size = size
        self.seed = seed
        self.module = build_augmentation(policy, size)

    def __call__(
        self, pixels: NDArray[np.uint8], *, index: int, epoch: int = 0
    ) -> NDArray[np.uint8]:
        """The augmented copy of ``pixels`` for sample ``index`` in ``epoch`` (a new array,
        except for ``none``, which returns ``pixels`` itself)."""
        if pixels.dtype != np.uint8 or pixels.shape != (*self.size, 3):
            raise ValueError(
                f"pixels must be uint8 of shape ({self.size[0]}, {self.size[1]}, 3), "
                f"got {pixels.dtype} {pixels.shape}"
            )
        if self.policy == "none":
            return pixels
        image = (
            torch.tensor(pixels).permute(2, 0, 1).unsqueeze(0).float().div_(255)
        )  # a copy: pixels may be read-only
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            augmented: torch.Tensor = self.module(image)
        quantised = augmented[0].mul(255).round_().clamp_(0, 255).to(torch.uint8)
        result: NDArray[np.uint8] = quantised.permute(1, 2, 0).contiguous().numpy()
        return result
