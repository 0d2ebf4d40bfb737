"""End-to-end strategies: the image encoder itself learns, on augmented photos.

``partial`` trains the last vision blocks, ``lora`` LoRA adapters, both through the shared
:class:`~clip_har.training.trainer.Trainer`. See docs/training.md#fine-tuning-the-encoder.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from clip_har.config import TrainSettings
from clip_har.data.augment import Augmenter
from clip_har.data.datasets import ManifestDataset, make_loader
from clip_har.errors import ClipHarError
from clip_har.imaging import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, Preprocessor
from clip_har.models.backbone import Backbone, ImageEncoder
from clip_har.models.bundle import EncoderDelta, EncoderMethod
from clip_har.models.classifier import HARClassifier
from clip_har.models.heads import LinearHead
from clip_har.training.distributed import DistContext, EpochSampler, local_context
from clip_har.training.trainer import TRAIN_DEFAULTS, FitResult, Trainer, from_section

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneOptions:
    """What to unfreeze or adapt, and how the photos are fed (the ``train`` settings of
    the same names; :meth:`from_settings` copies them)."""

    blocks: int = TRAIN_DEFAULTS.blocks  # partial: trailing vision blocks to train
    lora_rank: int = TRAIN_DEFAULTS.lora_rank
    augment: str = TRAIN_DEFAULTS.augment
    workers: int = TRAIN_DEFAULTS.workers
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE

    @classmethod
    def from_settings(
        cls, train: TrainSettings, *, max_pixels: int, min_side: int
    ) -> FinetuneOptions:
        """The options of a run with these ``train`` settings and image guards."""
        return from_section(cls, train, max_pixels=max_pixels, min_side=min_side)


@dataclass
class FinetuneResult:
    """The tuned classifier (plain modules, best epoch) and the encoder tensors it changed;
    under torchrun only rank 0 holds the trained weights and the delta (None elsewhere)."""

    classifier: HARClassifier
    encoder: EncoderDelta | None
    val_accuracy: float
    fit: FitResult


def _vision_blocks(model: Any) -> nn.ModuleList:
    try:
        layers: nn.ModuleList = model.vision_model.encoder.layers
    except AttributeError:
        raise ClipHarError(
            "end-to-end strategies need a CLIP-style model (vision_model.encoder.layers)"
        ) from None
    return layers


class VisionTower(nn.Module):
    """The image half of a CLIP-style model (vision transformer + projection), so training
    never carries the text tower through DDP/FSDP. Parameter names match the full model's,
    so the changed tensors load back into it."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What ``CLIPModel.get_image_features`` computes: the projected pooled output."""
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        projected: torch.Tensor = self.visual_projection(pooled)
        return projected


def prepare_model(backbone: Backbone, method: EncoderMethod, options: FinetuneOptions) -> nn.Module:
    """A copy of the backbone's vision tower with only what ``method`` trains trainable."""
    _vision_blocks(backbone.model)
    model = copy.deepcopy(VisionTower(backbone.model))
    model.requires_grad_(False)
    if method == "partial":
        blocks = _vision_blocks(model)
        if not 1 <= options.blocks <= len(blocks):
            raise ClipHarError(f"--blocks must be 1..{len(blocks)} for this model")
        tower: Any = model
        trainable = [*blocks[-options.blocks :], tower.vision_model.post_layernorm]
        trainable.append(tower.visual_projection)
        for module in trainable:
            module.requires_grad_(True)
        return model
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=options.lora_rank,
        lora_alpha=2 * options.lora_rank,
        lora_dropout=0.0,
        target_modules=r".*vision_model\.encoder\.layers\.\d+\.self_attn\.(q_proj|v_proj)",
    )
    tuned: nn.Module = inject_adapter_in_model(config, model)
    return tuned


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base weight and put the plain layer back."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    return model


def changed_tensors(base: nn.Module, tuned: nn.Module) -> dict[str, torch.Tensor]:
    """Tensors of ``tuned``'s state dict that differ from ``base``'s (same names)."""
    before = base.state_dict()
    return {
        name: tensor.detach().cpu().clone()
        for name, tensor in tuned.state_dict().items()
        if name in before and not torch.equal(before[name], tensor.detach().cpu())
    }


@torch.no_grad()
def image_accuracy(model: nn.Module, dataset: ManifestDataset, batch_size: int) -> float:
    """Top-1 accuracy of an image classifier over a dataset (skipped files do not count)."""
    correct = total = 0
    device = next(model.parameters()).device
    for batch in make_loader(dataset, batch_size=batch_size):
        if len(batch.labels):
            predicted = model(batch.pixels.to(device)).argmax(dim=-1).cpu()
            correct += int((predicted == batch.labels).sum())
            total += len(batch.labels)
    return correct / total if total else float("nan")


def finetune(
    method: EncoderMethod,
    backbone: Backbone,
    rows: Mapping[str, pd.DataFrame],
    class_names: list[str],
    zero_shot_weights: torch.Tensor,
    trainer: Trainer,
    options: FinetuneOptions,
    *,
    dist: DistContext | None = None,
) -> FinetuneResult:
    """Train ``method`` on ``rows["train"]``, pick the best epoch on ``rows["val"]``."""
    dist = dist or local_context()
    config = trainer.config
    preprocessor = Preprocessor(backbone.image_config)
    augment = Augmenter(options.augment, preprocessor.output_size, seed=config.seed)
    train_set = ManifestDataset(
        rows["train"],
        preprocessor,
        class_names,
        augment=augment,
        max_pixels=options.max_pixels,
        min_side=options.min_side,
    )
    val_set = ManifestDataset(
        rows["val"],
        preprocessor,
        class_names,
        max_pixels=options.max_pixels,
        min_side=options.min_side,
    )
    sampler = EpochSampler(
        len(train_set),
        batch_size=config.batch_size,
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    loader = make_loader(train_set, batch_sampler=sampler, num_workers=options.workers)

    model = prepare_model(backbone, method, options)
    head = LinearHead.from_zero_shot(zero_shot_weights, backbone.logit_scale)
    classifier = HARClassifier(ImageEncoder(model), head, class_names)
    trainable = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    logger.info("%s: training %d parameters end to end", method, trainable)
    fit = trainer.fit(  # on a copy: DDP/FSDP wrap, move and shard what they train
        copy.deepcopy(classifier),
        loader,
        lambda m: {"val_accuracy": image_accuracy(m, val_set, config.batch_size)},
    )
    classifier.eval()
    if not fit.best_state:  # ranks other than 0: rank 0 saves the bundle
        return FinetuneResult(classifier, None, fit.best_metric, fit)
    classifier.load_state_dict(fit.best_state)
    if method == "lora":
        merge_lora(model)
    tensors = changed_tensors(backbone.model, model)
    if not tensors:
        raise ClipHarError(f"{method} training left the image encoder unchanged (lr 0?)")
    return FinetuneResult(classifier, EncoderDelta(method, tensors), fit.best_metric, fit)
