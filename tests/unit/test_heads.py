"""Every head type computes what it claims and survives a bundle round trip exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from clip_har.errors import BundleError
from clip_har.models.backbone import Backbone
from clip_har.models.bundle import open_bundle, save_bundle
from clip_har.models.classifier import HARClassifier
from clip_har.models.heads import (
    HEAD_TYPES,
    AdapterHead,
    Head,
    HeadShapeError,
    LinearHead,
    TipAdapterHead,
    ZeroShotHead,
)
from clip_har.models.prompts import PromptSet

PROMPTS = PromptSet(templates=("a photo of a person {}.",))
CLASSES = ["running", "eating", "texting"]


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=-1)


def _heads(dim: int) -> list[Head]:
    weights = _unit(len(CLASSES), dim, 0)
    adapter = AdapterHead(weights, 20.0, reduction=4, ratio=0.3)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_()
    keys = _unit(6, dim, 1)
    values = nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    return [
        ZeroShotHead(weights, 20.0),
        LinearHead(_unit(3, dim, 2) * 5, torch.tensor([0.1, -0.2, 0.3])),
        adapter,
        TipAdapterHead(weights, 20.0, keys, values, alpha=2.0, beta=5.5),
    ]


def test_registry_lists_every_head() -> None:
    assert set(HEAD_TYPES) == {"zero_shot", "linear", "clip_adapter", "tip_adapter"}


def test_zero_shot_initialised_linear_head_equals_the_zero_shot_head() -> None:
    weights, x = _unit(3, 8, 0), _unit(5, 8, 1)
    linear = LinearHead.from_zero_shot(weights, 30.0)
    torch.testing.assert_close(linear(x), ZeroShotHead(weights, 30.0)(x))


def test_tip_adapter_adds_the_cache_model_to_zero_shot_logits() -> None:
    weights, keys, x = _unit(3, 8, 0), _unit(4, 8, 1), _unit(2, 8, 2)
    values = torch.eye(3)[[0, 1, 2, 2]]
    head = TipAdapterHead(weights, 10.0, keys, values, alpha=0.5, beta=3.0)
    expected = 10.0 * x @ weights.T + 0.5 * torch.exp(-3.0 * (1 - x @ keys.T)) @ values
    torch.testing.assert_close(head(x), expected)
    assert [n for n, p in head.named_parameters() if p.requires_grad] == ["cache_keys"]


def test_adapter_with_ratio_zero_is_the_zero_shot_head() -> None:
    weights, x = _unit(3, 8, 0), _unit(4, 8, 1)
    adapter = AdapterHead(weights, 15.0, ratio=0.0)
    torch.testing.assert_close(adapter(x), ZeroShotHead(weights, 15.0)(x))


def test_every_head_round_trips_through_a_bundle(tiny_backbone: Backbone, tmp_path: Path) -> None:
    pixels = torch.randn(2, 3, *tiny_backbone.image_config.output_size)
    for head in _heads(tiny_backbone.embed_dim):
        classifier = HARClassifier(tiny_backbone.image_encoder, head, CLASSES).eval()
        directory = tmp_path / head.head_type
        save_bundle(directory, classifier=classifier, backbone=tiny_backbone, prompts=PROMPTS)
        bundle = open_bundle(directory)
        assert bundle.manifest.head.type == head.head_type
        assert bundle.manifest.head.params == head.hparams()
        loaded = bundle.load_classifier(tiny_backbone)
        assert type(loaded.head) is type(head)
        with torch.no_grad():
            torch.testing.assert_close(loaded(pixels), classifier(pixels), rtol=0, atol=0)


def test_missing_or_misshapen_tensors_are_named() -> None:
    with pytest.raises(HeadShapeError, match="missing bias"):
        LinearHead.from_tensors({"weight": torch.zeros(3, 8)}, {})
    with pytest.raises(
        HeadShapeError, match=r"'cache_values' has shape \(4, 2\), expected \(4, 3\)"
    ):
        TipAdapterHead(_unit(3, 8, 0), 1.0, _unit(4, 8, 1), torch.zeros(4, 2))


def test_a_head_of_the_wrong_width_is_refused_on_load(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    wrong = LinearHead(torch.zeros(3, tiny_backbone.embed_dim + 1))
    classifier = HARClassifier(tiny_backbone.image_encoder, wrong, CLASSES)
    save_bundle(tmp_path / "b", classifier=classifier, backbone=tiny_backbone, prompts=PROMPTS)
    with pytest.raises(BundleError, match=f"does not take {tiny_backbone.embed_dim}-d embeddings"):
        open_bundle(tmp_path / "b").load_head()
