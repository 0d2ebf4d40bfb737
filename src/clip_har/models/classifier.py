"""Contract 3 — the classifier: pixels -> image embedding -> head -> logits.

``HARClassifier`` is the one module that prediction, training and export all use.
See docs/models.md#the-classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from clip_har.lru import BatchLru
from clip_har.models.heads import Head, ZeroShotHead
from clip_har.models.prompts import PromptSet, validate_class_names

if TYPE_CHECKING:
    from clip_har.models.backbone import Backbone


class HARClassifier(nn.Module):
    """Image encoder + head. ``forward`` returns logits ``[N, C]``."""

    def __init__(self, image_encoder: nn.Module, head: Head, class_names: Sequence[str]):
        super().__init__()
        if head.num_classes != len(class_names):
            raise ValueError(f"head has {head.num_classes} classes but {len(class_names)} names")
        self.image_encoder = image_encoder
        self.head = head
        self.class_names = list(class_names)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.image_encoder(pixels))
        return logits

    @torch.inference_mode()
    def predict_proba(self, pixels: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[N, C]`` (softmax over logits)."""
        probs: torch.Tensor = self(pixels).softmax(dim=-1)
        return probs


class TextEmbeddingCache:
    """LRU cache of normalised text embeddings for one backbone."""

    def __init__(self, backbone: Backbone, max_entries: int = 8192) -> None:
        self.backbone = backbone
        self._entries: BatchLru[torch.Tensor] = BatchLru(max_entries)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings ``[M, D]`` for ``texts``; only unseen texts reach the text encoder."""
        rows, missing = self._entries.lookup(texts, self.backbone.encode_text)
        self.misses += missing
        self.hits += len(texts) - missing
        return torch.stack(rows)


def zero_shot_weights(
    class_names: Sequence[str], prompts: PromptSet, cache: TextEmbeddingCache
) -> torch.Tensor:
    """Per class: mean of its normalised template embeddings, renormalised. Shape ``[C, D]``."""
    names = validate_class_names(list(class_names))
    texts = [text for name in names for text in prompts.texts(name)]
    embeddings = cache.embed(texts).reshape(len(names), len(prompts.templates), -1)
    return nn.functional.normalize(embeddings.mean(dim=1), dim=-1)


def build_zero_shot_classifier(
    backbone: Backbone,
    class_names: Sequence[str],
    prompts: PromptSet,
    cache: TextEmbeddingCache | None = None,
) -> HARClassifier:
    """A classifier for any labels, from text alone."""
    cache = cache if cache is not None else TextEmbeddingCache(backbone)
    weights = zero_shot_weights(class_names, prompts, cache)
    head = ZeroShotHead(weights, backbone.logit_scale)
    return HARClassifier(backbone.image_encoder, head, class_names).eval()
