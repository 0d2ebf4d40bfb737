"""Classification heads: L2-normalised image embeddings ``[N, D]`` -> logits ``[N, C]``.

:data:`HEADS` is the registry of head types; a head class joins it with :func:`register_head`.
See docs/models.md#heads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar, TypeVar

import torch
from torch import nn

from clip_har.errors import HeadShapeError, RegistryError


class Head(nn.Module, ABC):
    """Base of all heads: a type name, the class count and (de)serialisation."""

    head_type: ClassVar[str]
    tensor_names: ClassVar[tuple[str, ...]]

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """How many classes the logits cover."""

    def hparams(self) -> dict[str, float]:
        """Scalar settings that are not tensors (saved in the bundle manifest)."""
        return {}

    @classmethod
    @abstractmethod
    def from_tensors(
        cls, tensors: Mapping[str, torch.Tensor], hparams: Mapping[str, float]
    ) -> Head:
        """Rebuild the head saved as ``state_dict`` tensors plus :meth:`hparams`."""

    @classmethod
    def _require(cls, tensors: Mapping[str, torch.Tensor]) -> None:
        missing = [name for name in cls.tensor_names if name not in tensors]
        if missing:
            raise HeadShapeError(
                f"{cls.head_type} head needs tensors {', '.join(cls.tensor_names)}; "
                f"missing {', '.join(missing)} (found {', '.join(sorted(tensors)) or 'none'})"
            )


HEADS: dict[str, type[Head]] = {}
"""Every head type by its ``head_type`` name (the manifest's ``head.type``)."""

HeadT = TypeVar("HeadT", bound=type[Head])


def register_head(cls: HeadT) -> HeadT:
    """Class decorator: add a :class:`Head` subclass to :data:`HEADS` under its
    ``head_type``, so bundles can name it and :func:`head_class` can rebuild it."""
    name = cls.head_type
    if HEADS.get(name, cls) is not cls:
        raise RegistryError(f"head type {name!r} is already registered by {HEADS[name].__name__}")
    HEADS[name] = cls
    return cls


def head_class(name: str) -> type[Head]:
    """The registered head class called ``name``; a :class:`RegistryError` lists the
    registered ones otherwise."""
    try:
        return HEADS[name]
    except KeyError:
        raise RegistryError(f"unknown head type {name!r}; registered: {', '.join(HEADS)}") from None


def _check_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise HeadShapeError(f"tensor '{name}' has shape {tuple(tensor.shape)}, expected {shape}")


class _TextAnchoredHead(Head):
    """A head that scores against fixed class text embeddings ``[C, D]`` with a logit
    scale, as zero-shot CLIP does; the adapters add their learnt parts around that."""

    class_weights: torch.Tensor
    logit_scale: torch.Tensor

    def __init__(self, class_weights: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights.detach().clone().float())
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))

    @property
    def num_classes(self) -> int:
        return int(self.class_weights.shape[0])

    def zero_shot_logits(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """``scale * cos(image, class)`` for L2-normalised embeddings."""
        return self.logit_scale * image_embeddings @ self.class_weights.T


@register_head
class ZeroShotHead(_TextAnchoredHead):
    """``logits = scale * cos(image, class)`` against fixed class embeddings ``[C, D]``."""

    head_type = "zero_shot"
    tensor_names = ("class_weights", "logit_scale")

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        return self.zero_shot_logits(image_embeddings)

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, torch.Tensor], hparams: Mapping[str, float]
    ) -> ZeroShotHead:
        cls._require(tensors)
        _check_shape("logit_scale", tensors["logit_scale"], ())
        return cls(tensors["class_weights"], float(tensors["logit_scale"]))


@register_head
class LinearHead(Head):
    """``logits = image @ weight.T + bias``: a linear probe, or a zero-shot-initialised one."""

    head_type = "linear"
    tensor_names = ("weight", "bias")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        classes = weight.shape[0]
        self.weight = nn.Parameter(weight.detach().clone().float())
        initial_bias = torch.zeros(classes) if bias is None else bias.detach().clone().float()
        _check_shape("bias", initial_bias, (classes,))
        self.bias = nn.Parameter(initial_bias)

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(image_embeddings, self.weight, self.bias)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @classmethod
    def from_zero_shot(cls, class_weights: torch.Tensor, logit_scale: float) -> LinearHead:
        """The linear head that computes exactly what the zero-shot head does."""
        return cls(class_weights * logit_scale)

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, torch.Tensor], hparams: Mapping[str, float]
    ) -> LinearHead:
        cls._require(tensors)
        return cls(tensors["weight"], tensors["bias"])


@register_head
class AdapterHead(_TextAnchoredHead):
    """CLIP-Adapter (Gao et al. 2021): a residual bottleneck MLP on the image embedding,
    ``x' = normalise(ratio * mlp(x) + (1 - ratio) * x)``, then the zero-shot head."""

    head_type = "clip_adapter"
    tensor_names = ("down.weight", "up.weight", "class_weights", "logit_scale")

    def __init__(
        self,
        class_weights: torch.Tensor,
        logit_scale: float,
        *,
        reduction: int = 4,
        ratio: float = 0.2,
    ) -> None:
        super().__init__(class_weights, logit_scale)
        dim = class_weights.shape[1]
        hidden = max(1, dim // reduction)
        self.down = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(hidden, dim, bias=False)
        self.ratio = float(ratio)

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        adapted = torch.relu(self.up(torch.relu(self.down(image_embeddings))))
        mixed = self.ratio * adapted + (1.0 - self.ratio) * image_embeddings
        return self.zero_shot_logits(nn.functional.normalize(mixed, dim=-1))

    def hparams(self) -> dict[str, float]:
        return {"ratio": self.ratio}

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, torch.Tensor], hparams: Mapping[str, float]
    ) -> AdapterHead:
        cls._require(tensors)
        hidden, dim = tensors["down.weight"].shape
        head = cls(
            tensors["class_weights"],
            float(tensors["logit_scale"]),
            reduction=max(1, dim // hidden),
            ratio=float(hparams.get("ratio", 0.2)),
        )
        _check_shape("down.weight", tensors["down.weight"], tuple(head.down.weight.shape))
        head.load_state_dict(dict(tensors))
        return head


@register_head
class TipAdapterHead(_TextAnchoredHead):
    """Tip-Adapter (Zhang et al. 2022): zero-shot logits plus a cache model over the
    training embeddings, ``alpha * exp(-beta * (1 - x @ keys.T)) @ values``.

    The keys are a parameter, so Tip-Adapter-F fine-tunes them; training-free
    Tip-Adapter just picks ``alpha``/``beta``.
    """

    head_type = "tip_adapter"
    tensor_names = ("cache_keys", "cache_values", "class_weights", "logit_scale")
    cache_values: torch.Tensor

    def __init__(
        self,
        class_weights: torch.Tensor,
        logit_scale: float,
        cache_keys: torch.Tensor,
        cache_values: torch.Tensor,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
    ) -> None:
        super().__init__(class_weights, logit_scale)
        classes, dim = class_weights.shape
        _check_shape("cache_keys", cache_keys, (cache_keys.shape[0], dim))
        _check_shape("cache_values", cache_values, (cache_keys.shape[0], classes))
        self.cache_keys = nn.Parameter(cache_keys.detach().clone().float())
        self.register_buffer("cache_values", cache_values.detach().clone().float())
        self.alpha = float(alpha)
        self.beta = float(beta)

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        cache = self.cache_logits(self.affinity(image_embeddings), self.beta)
        return self.zero_shot_logits(image_embeddings) + self.alpha * cache

    def affinity(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity to every cache key, ``[N, K]``."""
        return image_embeddings @ self.cache_keys.T

    def cache_logits(self, affinity: torch.Tensor, beta: float) -> torch.Tensor:
        """The cache model's class scores for precomputed :meth:`affinity` values."""
        return torch.exp(-beta * (1.0 - affinity)) @ self.cache_values

    def hparams(self) -> dict[str, float]:
        return {"alpha": self.alpha, "beta": self.beta}

    @classmethod
    def from_tensors(
        cls, tensors: Mapping[str, torch.Tensor], hparams: Mapping[str, float]
    ) -> TipAdapterHead:
        cls._require(tensors)
        return cls(
            tensors["class_weights"],
            float(tensors["logit_scale"]),
            tensors["cache_keys"],
            tensors["cache_values"],
            alpha=float(hparams.get("alpha", 1.0)),
            beta=float(hparams.get("beta", 1.0)),
        )
