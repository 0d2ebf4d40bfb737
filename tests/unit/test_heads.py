"""Every head type computes what it claims and survives a bundle round trip exactly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from clip_har.errors import BundleError, HeadShapeError, RegistryError
from clip_har.models.backbone import Backbone
from clip_har.models.bundle import open_bundle, save_bundle
from clip_har.models.classifier import HARClassifier
from clip_har.models.heads import (
    HEADS,
    AdapterHead,
    Head,
    LinearHead,
    TipAdapterHead,
    ZeroShotHead,
    head_class,
    register_head,
)
from clip_har.models.prompts import PromptSet

PROMPTS = PromptSet(templates=("a photo of a person {}.",))
CLASSES = ["running", "eating", "texting"]


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=-1)


def _adapter(dim: int) -> Head:
    adapter = AdapterHead(_unit(len(CLASSES), dim, 0), 20.0, reduction=4, ratio=0.3)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_(generator=torch.Generator().manual_seed(3))
    return adapter


def _tip_adapter(dim: int) -> Head:
    values = nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    weights, keys = _unit(len(CLASSES), dim, 0), _unit(6, dim, 1)
    return TipAdapterHead(weights, 20.0, keys, values, alpha=2.0, beta=5.5)


# one non-trivial instance per head type, over ``dim``-d embeddings and the 3 CLASSES
EXAMPLES: dict[str, Callable[[int], Head]] = {
    "zero_shot": lambda dim: ZeroShotHead(_unit(len(CLASSES), dim, 0), 20.0),
    "linear": lambda dim: LinearHead(_unit(3, dim, 2) * 5, torch.tensor([0.1, -0.2, 0.3])),
    "clip_adapter": _adapter,
    "tip_adapter": _tip_adapter,
}


def test_registry_lists_every_head() -> None:
    assert set(HEADS) == {"zero_shot", "linear", "clip_adapter", "tip_adapter"}
    assert all(HEADS[name].head_type == name for name in HEADS)
    assert head_class("linear") is LinearHead
    with pytest.raises(RegistryError, match=r"unknown head type 'mystery'.*zero_shot"):
        head_class("mystery")


def test_a_head_type_name_cannot_be_registered_twice() -> None:
    class Impostor(LinearHead):
        head_type = "linear"

    with pytest.raises(RegistryError, match="'linear' is already registered by LinearHead"):
        register_head(Impostor)
    assert HEADS["linear"] is LinearHead
    assert register_head(LinearHead) is LinearHead  # registering the same class is a no-op


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


@pytest.mark.parametrize("head_type", sorted(HEADS))
def test_every_registered_head_round_trips_through_a_bundle_bit_for_bit(
    head_type: str, tiny_backbone: Backbone, tmp_path: Path
) -> None:
    if head_type not in EXAMPLES:
        pytest.fail(f"add an example of the registered head type {head_type!r} to EXAMPLES")
    head = EXAMPLES[head_type](tiny_backbone.embed_dim)
    assert head.head_type == head_type
    classifier = HARClassifier(tiny_backbone.image_encoder, head, CLASSES).eval()
    save_bundle(tmp_path / "b", classifier=classifier, backbone=tiny_backbone, prompts=PROMPTS)
    bundle = open_bundle(tmp_path / "b")
    assert bundle.manifest.head.type == head_type
    assert bundle.manifest.head.params == head.hparams()
    loaded = bundle.load_classifier(tiny_backbone)
    assert type(loaded.head) is type(head)
    generator = torch.Generator().manual_seed(5)
    pixels = torch.randn(4, 3, *tiny_backbone.image_config.output_size, generator=generator)
    with torch.no_grad():
        expected, actual = classifier(pixels).softmax(-1), loaded(pixels).softmax(-1)
    assert torch.equal(actual, expected)  # the same bits, not merely close
    assert not torch.allclose(expected, torch.full_like(expected, 1 / len(CLASSES)))


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
