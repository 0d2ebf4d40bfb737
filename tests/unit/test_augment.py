"""Train-time augmentation policies: identity, change, shape, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clip_har.data.augment import (
    POLICIES,
    Augmenter,
    build_augmentation,
    sample_seed,
)
from clip_har.errors import ClipHarError, UnknownPolicyError

SIZE = (64, 48)


def pixels(seed: int = 0) -> np.ndarray:
    """Smooth random colours (a resized photo looks more like this than like noise)."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.random((1, 3, 4, 4), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(small, size=SIZE, mode="bilinear")
    return (smooth[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_none_is_identity() -> None:
    image = pixels()
    assert Augmenter("none", SIZE)(image, index=3, epoch=2) is image
    batch = torch.rand(2, 3, *SIZE)
    assert torch.equal(build_augmentation("none", SIZE)(batch), batch)


@pytest.mark.parametrize("policy", ["light", "strong"])
def test_policies_change_pixels_and_keep_shape(policy: str) -> None:
    image = pixels()
    augmenter = Augmenter(policy, SIZE, seed=0)
    outputs = [augmenter(image, index=i) for i in range(6)]
    for out in outputs:
        assert out.shape == image.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    assert all(not np.array_equal(out, image) for out in outputs)
    batch = torch.rand(3, 3, *SIZE)
    assert build_augmentation(policy, SIZE)(batch).shape == batch.shape


@pytest.mark.parametrize("policy", ["light", "strong"])
def test_same_key_same_output_different_key_different(policy: str) -> None:
    image = pixels(1)
    first = Augmenter(policy, SIZE, seed=7)
    again = Augmenter(policy, SIZE, seed=7)
    reference = first(image, index=5, epoch=1)
    torch.manual_seed(123)  # the global RNG state must not matter ...
    state = torch.random.get_rng_state()
    np.testing.assert_array_equal(again(image, index=5, epoch=1), reference)
    assert torch.equal(torch.random.get_rng_state(), state)  # ... nor be changed
    for other in (
        Augmenter(policy, SIZE, seed=8)(image, index=5, epoch=1),
        first(image, index=6, epoch=1),
        first(image, index=5, epoch=2),
    ):
        assert not np.array_equal(other, reference)


def test_sample_seed_keys_and_streams_are_distinct() -> None:
    keys = [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (2**40, 3, 5)]
    seeds = {sample_seed(*key) for key in keys} | {sample_seed(0, 0, 0, stream=1)}
    assert len(seeds) == len(keys) + 1
    assert all(0 <= seed < 2**63 for seed in seeds)
    with pytest.raises(ValueError, match=">= 0"):
        sample_seed(0, -1, 0)


def test_unknown_policy_and_wrong_input_are_clear_errors() -> None:
    with pytest.raises(UnknownPolicyError, match="none, light, strong") as info:
        Augmenter("heavy", SIZE)
    assert isinstance(info.value, ClipHarError)
    with pytest.raises(UnknownPolicyError):
        build_augmentation("Light", SIZE)
    assert POLICIES == ("none", "light", "strong")
    with pytest.raises(ValueError, match=r"uint8 of shape \(64, 48, 3\)"):
        Augmenter("light", SIZE)(np.zeros((48, 64, 3), np.uint8), index=0)
    with pytest.raises(ValueError, match="seed must be"):
        Augmenter("light", SIZE, seed=-1)
