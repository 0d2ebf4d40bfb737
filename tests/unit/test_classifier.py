"""Zero-shot heads, the classifier module and the text-embedding LRU cache."""

import pytest
import torch
from torch import nn

from clip_har.models.backbone import Backbone
from clip_har.models.classifier import (
    HARClassifier,
    TextEmbeddingCache,
    build_zero_shot_classifier,
    zero_shot_weights,
)
from clip_har.models.heads import ZeroShotHead
from clip_har.models.prompts import PromptSet

PROMPTS = PromptSet(templates=("a photo of a person {}.", "someone {}.", "{}"))


def test_zero_shot_weights_are_renormalised_template_means(tiny_backbone: Backbone) -> None:
    cache = TextEmbeddingCache(tiny_backbone)
    weights = zero_shot_weights(["running", "eating"], PROMPTS, cache)
    for row, name in zip(weights, ["running", "eating"], strict=True):
        expected = nn.functional.normalize(
            tiny_backbone.encode_text(PROMPTS.texts(name)).mean(dim=0), dim=0
        )
        torch.testing.assert_close(row, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(2))


def test_logits_are_scaled_cosine(tiny_backbone: Backbone) -> None:
    classifier = build_zero_shot_classifier(
        tiny_backbone, ["running", "eating", "sitting"], PROMPTS
    )
    pixels = torch.randn(4, 3, *tiny_backbone.image_config.output_size)
    with torch.inference_mode():
        logits = classifier(pixels)
        embeddings = tiny_backbone.encode_image(pixels)
    expected = tiny_backbone.logit_scale * embeddings @ classifier.head.class_weights.T
    torch.testing.assert_close(logits, expected)
    probs = classifier.predict_proba(pixels)
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(4))


def test_text_cache_reuses_and_evicts(tiny_backbone: Backbone) -> None:
    cache = TextEmbeddingCache(tiny_backbone, max_entries=4)
    first = cache.embed(["a", "b", "c"])
    assert (cache.misses, cache.hits) == (3, 0)
    again = cache.embed(["c", "a"])
    assert (cache.misses, cache.hits) == (3, 2)
    torch.testing.assert_close(again, first[[2, 0]])
    cache.embed(["d", "e"])  # "b" is now the least recently used and is evicted
    assert len(cache) == 4
    cache.embed(["b"])
    assert cache.misses == 6


def test_open_vocabulary_labels_reuse_cached_prompts(tiny_backbone: Backbone) -> None:
    cache = TextEmbeddingCache(tiny_backbone)
    build_zero_shot_classifier(tiny_backbone, ["surfing", "juggling"], PROMPTS, cache)
    misses = cache.misses
    classifier = build_zero_shot_classifier(tiny_backbone, ["juggling", "skiing"], PROMPTS, cache)
    assert cache.misses - misses == len(PROMPTS.templates)  # only "skiing" was new
    assert classifier.class_names == ["juggling", "skiing"]


def test_head_and_names_must_agree() -> None:
    head = ZeroShotHead(torch.eye(3), 10.0)
    with pytest.raises(ValueError, match="3 classes but 2 names"):
        HARClassifier(nn.Identity(), head, ["a", "b"])
