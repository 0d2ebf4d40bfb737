"""Bundles written before the layer refactor (issue 12) still load and predict the same.

``tests/fixtures/legacy_bundles`` holds one ``tiny`` bundle per head type, written by the
code at commit 56dbb2b, with the probabilities that code gave for seeded pixels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clip_har.inference.engines import create_engine
from clip_har.models.bundle import open_bundle, save_bundle
from clip_har.models.heads import HEADS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_bundles"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
HEAD_TYPES = sorted(p.name for p in FIXTURES.iterdir() if (p / "manifest.json").is_file())


def seeded_pixels() -> np.ndarray:
    """The pixels the reference probabilities were computed for (platform-independent)."""
    return np.random.default_rng(12).standard_normal((4, 3, 64, 64)).astype(np.float32)


def test_every_head_type_of_the_old_code_has_a_legacy_bundle() -> None:
    assert HEAD_TYPES == ["clip_adapter", "linear", "tip_adapter", "zero_shot"]
    assert set(HEAD_TYPES) <= set(HEADS)


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_legacy_bundle_loads_and_gives_the_same_probabilities(
    head_type: str, tmp_path: Path
) -> None:
    directory = shutil.copytree(FIXTURES / head_type, tmp_path / head_type)
    bundle = open_bundle(directory)
    assert bundle.manifest.head.type == head_type
    assert bundle.class_names == ["calling", "clapping", "cycling", "dancing", "drinking"]

    probabilities = create_engine(bundle, "torch").predict(seeded_pixels())
    expected = np.load(FIXTURES / f"{head_type}.probabilities.npy")

    # today's code re-saves it and loads it back: the same probabilities, bit for bit, on
    # any CPU (this comparison runs both sides on this machine's kernels)
    resaved = save_bundle(
        tmp_path / "resaved",
        classifier=bundle.load_classifier(backbone := bundle.load_backbone()),
        backbone=backbone,
        prompts=bundle.manifest.prompts,
        include_backbone=True,
    )
    again = create_engine(open_bundle(resaved.directory), "torch").predict(seeded_pixels())
    np.testing.assert_array_equal(again, probabilities)
    stored = load_file(directory / "head.safetensors")
    for name, tensor in bundle.load_head().state_dict().items():
        assert torch.equal(tensor, stored[name]), name

    if torch.backends.cpu.get_cpu_capability() == REFERENCE["cpu_capability"]:
        # same kernels as the machine that wrote the reference: every bit must match
        np.testing.assert_array_equal(probabilities, expected)
    else:
        # another SIMD family sums in another order: only float rounding may differ
        np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)
