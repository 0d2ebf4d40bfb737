"""The ``torchrun`` side of ``test_distributed.py``: the tiny CLIP vision tower + a linear head.

Run as ``torchrun --nproc_per_node 2 torchrun_worker.py OUT CACHE``. In one process group
it trains with DDP and with FSDP (same seed, data and global batch as the test's
single-process run), and for each a run interrupted after epoch 2 and resumed. Rank 0
writes, per run, ``OUT/<run>/checkpoint.pt`` (the trainer's), ``result.json`` and
``probe.pt`` (the trained model's logits on fixed inputs, computed distributed).
The test imports the builders below, so both sides train the very same problem.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from clip_har.models.backbone import load_backbone
from clip_har.training.distributed import (
    DistContext,
    EpochSampler,
    cleanup,
    init_distributed,
)
from clip_har.training.trainer import FitResult, TrainConfig, Trainer, feature_loader

CLASSES = 4
EXAMPLES = 33  # global batches of 8, 8, 8, 8, 1: the last one leaves a rank empty
CONFIG = TrainConfig(
    epochs=3,
    batch_size=8,
    lr=2e-3,
    warmup_ratio=0.2,
    accumulation=2,
    label_smoothing=0.1,
    grad_clip=1.0,
    seed=7,
)


class VisionClassifier(nn.Module):
    """pixels -> CLIP vision transformer -> projection -> linear head -> logits."""

    def __init__(self, vision_model: nn.Module, projection: nn.Linear, classes: int) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = projection
        self.head = nn.Linear(projection.out_features, classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixels).pooler_output
        logits: torch.Tensor = self.head(self.visual_projection(pooled))
        return logits


def build_model(cache_dir: Path) -> VisionClassifier:
    """A fresh model: the tiny preset's weights and a head seeded the same everywhere."""
    clip = load_backbone("tiny", cache_dir=cache_dir).model
    torch.manual_seed(11)
    return VisionClassifier(clip.vision_model, clip.visual_projection, CLASSES)


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train pixels, train labels (a learnable function of colour) and probe pixels."""
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(EXAMPLES + 6, 3, 64, 64, generator=generator)
    labels = pixels[:, :2].mean(dim=(2, 3)).gt(0).long() @ torch.tensor([1, 2])
    return pixels[:EXAMPLES], labels[:EXAMPLES], pixels[EXAMPLES:]


def progress(start: int = 0) -> Callable[[nn.Module], dict[str, float]]:
    """A validate() whose metric grows every epoch (``start`` epochs already ran), so the
    best epoch is the last one on every side (accuracy ties could pick different ones)."""
    calls = {"n": start}

    def validate(model: nn.Module) -> dict[str, float]:
        calls["n"] += 1
        return {"progress": float(calls["n"])}

    return validate


class _InterruptedError(Exception):
    """The stand-in for a killed job: raised on every rank as epoch 2 starts."""


class _InterruptingSampler(EpochSampler):
    def set_epoch(self, epoch: int) -> None:
        if epoch == 2:
            raise _InterruptedError
        super().set_epoch(epoch)


def _train(
    run: str,
    out: Path,
    cache: Path,
    context: DistContext,
    *,
    loader: DataLoader[Any] | None = None,
    done: int = 0,
) -> FitResult:
    pixels, labels, probe = make_data()
    config = replace(CONFIG, distributed=run.split("_")[0])
    model = build_model(cache)
    train = loader or feature_loader(
        pixels, labels, batch_size=config.batch_size, seed=config.seed, dist=context
    )
    trainer = Trainer(config, checkpoint_dir=out / run, dist=context)
    result = trainer.fit(
        model, train, progress(done), metric="progress", resume=run.endswith("resumed")
    )
    model.eval()
    with torch.no_grad():
        logits = model(probe.to(context.device)).cpu()  # every rank: FSDP gathers in forward
    if context.is_main:
        summary = {"final_loss": result.final_loss, "best_epoch": result.best_epoch}
        (out / run / "result.json").write_text(json.dumps(summary))
        torch.save(logits, out / run / "probe.pt")
    return result


def _interrupting_loader(context: DistContext) -> DataLoader[Any]:
    """The usual loader, except that every rank raises as epoch 2 starts."""
    pixels, labels, _ = make_data()
    usual = feature_loader(pixels, labels, batch_size=CONFIG.batch_size, seed=CONFIG.seed)
    sampler = _InterruptingSampler(
        EXAMPLES,
        batch_size=CONFIG.batch_size,
        seed=CONFIG.seed,
        rank=context.rank,
        world_size=context.world_size,
    )
    return DataLoader(
        usual.dataset,
        batch_sampler=sampler,
        collate_fn=usual.collate_fn,
        generator=torch.Generator().manual_seed(CONFIG.seed),
    )


def main(out: Path, cache: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    context = init_distributed()
    try:
        for distributed in ("ddp", "fsdp"):
            _train(distributed, out, cache, context)
            resumed = f"{distributed}_resumed"
            try:
                _train(resumed, out, cache, context, loader=_interrupting_loader(context))
            except _InterruptedError:
                logging.getLogger(__name__).info("%s run interrupted as planned", distributed)
            _train(resumed, out, cache, context, done=2)
    finally:
        cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
