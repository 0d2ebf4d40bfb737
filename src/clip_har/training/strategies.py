"""Training strategies, and :data:`STRATEGIES`, their registry.

Each strategy is one :func:`register_strategy` entry; hyper-parameters are chosen on the
validation split. See docs/training.md#strategies.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from clip_har.config import TrainSettings
from clip_har.errors import RegistryError, TrainingError
from clip_har.imaging import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from clip_har.models.backbone import Backbone
from clip_har.models.bundle import EncoderDelta, EncoderMethod
from clip_har.models.classifier import TextEmbeddingCache, zero_shot_weights
from clip_har.models.heads import AdapterHead, Head, LinearHead, TipAdapterHead, ZeroShotHead
from clip_har.models.prompts import PromptSet

if TYPE_CHECKING:  # the trainer pulls in torch.distributed (1 s): imported where it runs
    from clip_har.training.trainer import FitResult, TrainConfig, Trainer

logger = logging.getLogger(__name__)

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
WISE_GRID = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
TIP_ALPHAS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0)
TIP_BETAS = (1.0, 3.0, 5.5, 8.0, 12.0)


@dataclass(frozen=True)
class FeatureData:
    """Everything a feature-based strategy needs: the split embeddings and the text side."""

    train_x: torch.Tensor  # float32 [N, D], L2-normalised
    train_y: torch.Tensor  # int64 [N]
    val_x: torch.Tensor
    val_y: torch.Tensor
    class_names: list[str]
    prompts: PromptSet
    text_cache: TextEmbeddingCache
    logit_scale: float

    def zero_shot_weights(self, prompts: PromptSet | None = None) -> torch.Tensor:
        """``[C, D]`` class embeddings from ``prompts`` (default: the configured set)."""
        return zero_shot_weights(self.class_names, prompts or self.prompts, self.text_cache)


@dataclass
class StrategyResult:
    """A fitted head, the prompts it was built with and what was chosen on val; end-to-end
    strategies add the image-encoder tensors they changed (rank 0 only under torchrun)."""

    head: Head
    prompts: PromptSet
    val_accuracy: float
    chosen: dict[str, float] = field(default_factory=dict)
    fit: FitResult | None = None
    encoder: EncoderDelta | None = None


@torch.no_grad()
def accuracy(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``head`` on embeddings ``x`` with labels ``y``."""
    if len(y) == 0:
        return float("nan")
    was_training = head.training
    head.eval()
    device = next(itertools.chain(head.parameters(), head.buffers())).device
    predicted = head(x.to(device)).argmax(dim=-1).cpu()
    correct = (predicted == y).float().mean().item()
    head.train(was_training)
    return float(correct)


def zero_shot(data: FeatureData, *, select_prompts: bool = False) -> StrategyResult:
    """No training: class embeddings from the prompts (optionally a template subset
    chosen by greedy forward selection on val)."""
    prompts = _select_templates(data) if select_prompts else data.prompts
    head = ZeroShotHead(data.zero_shot_weights(prompts), data.logit_scale)
    return StrategyResult(head, prompts, accuracy(head, data.val_x, data.val_y))


def _select_templates(data: FeatureData) -> PromptSet:
    """Greedily add the template that most improves val accuracy; stop when none does."""
    templates = data.prompts.templates
    per_template = [
        data.zero_shot_weights(data.prompts.model_copy(update={"templates": (t,)}))
        for t in templates
    ]
    chosen: list[int] = []
    best = -1.0
    while len(chosen) < len(templates):
        scores = {}
        for candidate in (i for i in range(len(templates)) if i not in chosen):
            mean = torch.stack([per_template[i] for i in [*chosen, candidate]]).mean(dim=0)
            head = ZeroShotHead(nn.functional.normalize(mean, dim=-1), data.logit_scale)
            scores[candidate] = accuracy(head, data.val_x, data.val_y)
        candidate, score = max(scores.items(), key=lambda item: (item[1], -item[0]))
        if score <= best:
            break
        chosen.append(candidate)
        best = score
    selected = tuple(templates[i] for i in sorted(chosen))
    logger.info(
        "selected %d of %d templates (val accuracy %.4f)", len(selected), len(templates), best
    )
    return data.prompts.model_copy(update={"templates": selected})


def linear_probe(data: FeatureData, *, seed: int = 0, balanced: bool = False) -> StrategyResult:
    """Multinomial logistic regression (L-BFGS) on the features; ``C`` swept on val.
    ``balanced`` weights each class inversely to its frequency."""
    from sklearn.linear_model import LogisticRegression

    train_x, train_y = data.train_x.numpy(), data.train_y.numpy()
    best: tuple[float, float, LinearHead] | None = None
    for c in C_GRID:
        model = LogisticRegression(
            C=c, max_iter=1000, random_state=seed, class_weight="balanced" if balanced else None
        )
        model.fit(train_x, train_y)
        head = _head_from_sklearn(
            model.coef_, model.intercept_, model.classes_, len(data.class_names)
        )
        score = accuracy(head, data.val_x, data.val_y)
        logger.info("linear probe C=%g: val accuracy %.4f", c, score)
        if best is None or score > best[0]:
            best = (score, c, head)
    assert best is not None
    score, c, head = best
    return StrategyResult(head, data.prompts, score, chosen={"C": c})


def _head_from_sklearn(
    coef: np.ndarray, intercept: np.ndarray, present: np.ndarray, classes: int
) -> LinearHead:
    """A head over all ``classes``; classes absent from training get a very low bias."""
    if coef.shape[0] == 1:  # binary: sklearn keeps one row for the positive class
        coef = np.concatenate([-coef, coef]) / 2
        intercept = np.concatenate([-intercept, intercept]) / 2
    weight = torch.zeros(classes, coef.shape[1])
    bias = torch.full((classes,), -1e4)
    index = torch.as_tensor(present, dtype=torch.long)
    weight[index] = torch.as_tensor(coef, dtype=torch.float32)
    bias[index] = torch.as_tensor(intercept, dtype=torch.float32)
    return LinearHead(weight, bias)


def _train(head: Head, data: FeatureData, trainer: Trainer, config: TrainConfig) -> FitResult:
    """Fit ``head`` on the train features with the shared trainer, then load the best val
    epoch into it. The trainer works on a copy (DDP/FSDP wrap and move what they train), so
    ``head`` stays a plain CPU module; under torchrun only rank 0 receives the weights."""
    from clip_har.training.trainer import feature_loader

    loader = feature_loader(
        data.train_x, data.train_y, batch_size=config.batch_size, seed=config.seed,
        dist=trainer.dist,
    )  # fmt: skip
    result = trainer.fit(
        copy.deepcopy(head),
        loader,
        lambda model: {"val_accuracy": accuracy(model, data.val_x, data.val_y)},
    )
    if result.best_state:  # empty on ranks other than 0
        head.load_state_dict(result.best_state)
    return result


def zs_init_linear(data: FeatureData, trainer: Trainer, config: TrainConfig) -> StrategyResult:
    """A linear head initialised from zero-shot, trained, then WiSE-FT: the weights are
    interpolated with the zero-shot ones and the mixing weight picked on val."""
    start = LinearHead.from_zero_shot(data.zero_shot_weights(), data.logit_scale)
    tuned = LinearHead.from_zero_shot(data.zero_shot_weights(), data.logit_scale)
    fit = _train(tuned, data, trainer, config)
    best: tuple[float, float, LinearHead] | None = None
    for alpha in WISE_GRID:
        mixed = LinearHead(
            (1 - alpha) * start.weight + alpha * tuned.weight,
            (1 - alpha) * start.bias + alpha * tuned.bias,
        )
        score = accuracy(mixed, data.val_x, data.val_y)
        if best is None or score > best[0]:
            best = (score, alpha, mixed)
    assert best is not None
    score, alpha, head = best
    logger.info("WiSE-FT: mixing weight %.2f, val accuracy %.4f", alpha, score)
    return StrategyResult(head, data.prompts, score, chosen={"wise_alpha": alpha}, fit=fit)


def clip_adapter(
    data: FeatureData, trainer: Trainer, config: TrainConfig, *, ratio: float = 0.2
) -> StrategyResult:
    """CLIP-Adapter: a residual bottleneck MLP trained on the features."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # the adapter's initial weights are part of the run
        head = AdapterHead(data.zero_shot_weights(), data.logit_scale, ratio=ratio)
    fit = _train(head, data, trainer, config)
    return StrategyResult(head, data.prompts, accuracy(head, data.val_x, data.val_y), fit=fit)


def tip_adapter(
    data: FeatureData,
    trainer: Trainer | None = None,
    config: TrainConfig | None = None,
) -> StrategyResult:
    """Tip-Adapter: a cache model over the train features, ``alpha``/``beta`` searched on
    val. With a trainer (Tip-Adapter-F) the cache keys are fine-tuned first."""
    values = nn.functional.one_hot(data.train_y, len(data.class_names)).float()
    head = TipAdapterHead(data.zero_shot_weights(), data.logit_scale, data.train_x, values)
    fit = None
    if trainer is not None and config is not None:
        fit = _train(head, data, trainer, config)
    alpha, beta, score = _search_alpha_beta(head, data)
    head.alpha, head.beta = alpha, beta
    return StrategyResult(head, data.prompts, score, chosen={"alpha": alpha, "beta": beta}, fit=fit)


@torch.no_grad()
def _search_alpha_beta(head: TipAdapterHead, data: FeatureData) -> tuple[float, float, float]:
    """Grid search on val; the affinities are computed once, not once per pair."""
    device = head.cache_keys.device
    x, y = data.val_x.to(device), data.val_y.to(device)
    zero_shot, affinity = head.zero_shot_logits(x), head.affinity(x)
    best = (head.alpha, head.beta, -1.0)
    for beta in TIP_BETAS:
        cache = head.cache_logits(affinity, beta)
        for alpha in TIP_ALPHAS:
            score = float(((zero_shot + alpha * cache).argmax(dim=-1) == y).float().mean())
            if score > best[2]:
                best = (alpha, beta, score)
    return best


# ------------------------------------------------------------------ the registry


@dataclass(frozen=True)
class PhotoData:
    """The labelled photos that end-to-end strategies train the image encoder on."""

    backbone: Backbone
    rows: Mapping[str, pd.DataFrame]  # "train" and "val": labelled manifest rows
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE


@dataclass(frozen=True)
class StrategyInputs:
    """What a strategy gets: the cached features, the shared trainer (its ``config`` and
    process context ``dist``), the run's ``train`` settings for its own options, and the
    photos for end-to-end strategies."""

    features: FeatureData
    trainer: Trainer
    settings: TrainSettings = field(default_factory=TrainSettings)
    photos: PhotoData | None = None


StrategyFn = Callable[[StrategyInputs], StrategyResult]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its ``train.strategy`` name, a one-line summary, and how a
    run treats it."""

    name: str
    fit: StrategyFn
    summary: str
    end_to_end: bool = False  # trains the image encoder on photos (needs inputs.photos)
    weighted: bool = True  # honours ``train.balance: weights`` (class weights)


STRATEGIES: dict[str, Strategy] = {}
"""Every strategy by name, in registration order (the order ``--help`` lists them)."""


def register_strategy(
    name: str, *, summary: str, end_to_end: bool = False, weighted: bool = True
) -> Callable[[StrategyFn], StrategyFn]:
    """Decorator: register ``fit(inputs) -> StrategyResult`` as the strategy ``name``."""

    def register(fit: StrategyFn) -> StrategyFn:
        if name in STRATEGIES:
            raise RegistryError(f"strategy {name!r} is already registered")
        STRATEGIES[name] = Strategy(name, fit, summary, end_to_end, weighted)
        return fit

    return register


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; a :class:`RegistryError` naming the setting and
    every registered name otherwise."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise RegistryError(
            f"unknown strategy {name!r} (params.yaml train.strategy, or --strategy); "
            f"choose one of: {', '.join(STRATEGIES)}"
        ) from None


@register_strategy(
    "zero-shot",
    summary="no training: class embeddings of the prompts",
    weighted=False,
)
def _zero_shot(inputs: StrategyInputs) -> StrategyResult:
    return zero_shot(inputs.features, select_prompts=inputs.settings.select_prompts)


@register_strategy("linear-probe", summary="logistic regression on the features, C chosen on val")
def _linear_probe(inputs: StrategyInputs) -> StrategyResult:
    balanced = inputs.trainer.class_weights is not None
    return linear_probe(inputs.features, seed=inputs.trainer.config.seed, balanced=balanced)


@register_strategy(
    "zs-init-linear", summary="a zero-shot-initialised linear head, trained, then WiSE-FT"
)
def _zs_init_linear(inputs: StrategyInputs) -> StrategyResult:
    return zs_init_linear(inputs.features, inputs.trainer, inputs.trainer.config)


@register_strategy("clip-adapter", summary="a residual bottleneck MLP on the features, trained")
def _clip_adapter(inputs: StrategyInputs) -> StrategyResult:
    return clip_adapter(inputs.features, inputs.trainer, inputs.trainer.config)


@register_strategy(
    "tip-adapter",
    summary="a training-free cache model of the train features",
    weighted=False,
)
def _tip_adapter(inputs: StrategyInputs) -> StrategyResult:
    return tip_adapter(inputs.features)


@register_strategy("tip-adapter-f", summary="tip-adapter with its cache keys trained")
def _tip_adapter_f(inputs: StrategyInputs) -> StrategyResult:
    return tip_adapter(inputs.features, inputs.trainer, inputs.trainer.config)


def _end_to_end(method: EncoderMethod) -> StrategyFn:
    """The strategy that fine-tunes the image encoder with ``method`` (training/finetune.py)."""

    def fit(inputs: StrategyInputs) -> StrategyResult:
        # imported here: finetune pulls in torch.distributed (1 s) and, for lora, peft
        from clip_har.training.finetune import FinetuneOptions, finetune

        if inputs.photos is None:
            raise TrainingError(
                f"strategy {method!r} trains the image encoder on photos: "
                "give StrategyInputs the labelled rows (photos=PhotoData(...))"
            )
        tuned = finetune(
            method,
            inputs.photos.backbone,
            inputs.photos.rows,
            inputs.features.class_names,
            inputs.features.zero_shot_weights(),
            inputs.trainer,
            FinetuneOptions.from_settings(
                inputs.settings,
                max_pixels=inputs.photos.max_pixels,
                min_side=inputs.photos.min_side,
            ),
            dist=inputs.trainer.dist,
        )
        return StrategyResult(
            tuned.classifier.head,
            inputs.features.prompts,
            tuned.val_accuracy,
            fit=tuned.fit,
            encoder=tuned.encoder,
        )

    return fit


register_strategy(
    "lora",
    summary="LoRA adapters in the vision attention, trained end to end on photos",
    end_to_end=True,
)(_end_to_end("lora"))
register_strategy(
    "partial",
    summary="the last train.blocks vision blocks, trained end to end on photos",
    end_to_end=True,
)(_end_to_end("partial"))
