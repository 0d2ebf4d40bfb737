"""One training run, end to end: split manifest -> cached features -> strategy -> bundle,
tracked in MLflow / W&B. ``clip-har train`` and the DVC ``train`` stage call this."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from clip_har.config import Settings
from clip_har.data.balance import class_weights
from clip_har.data.manifest import manifest_path, read_manifest
from clip_har.data.versioning import DataVersionError, version
from clip_har.errors import ClipHarError
from clip_har.models.backbone import Backbone, load_backbone
from clip_har.models.bundle import Bundle, EncoderDelta, save_bundle
from clip_har.models.classifier import HARClassifier, TextEmbeddingCache
from clip_har.models.prompts import load_prompt_set
from clip_har.tracking import NullTracker, create_tracker, parse_backends, run_tags
from clip_har.training.distributed import DistContext, barrier, local_context
from clip_har.training.features import EmbedStats, FeatureStore, default_store_root
from clip_har.training.finetune import E2E_STRATEGIES, FinetuneOptions, finetune
from clip_har.training.strategies import (
    FEATURE_STRATEGIES,
    FeatureData,
    StrategyResult,
    fit_strategy,
    zero_shot,
)
from clip_har.training.trainer import TrainConfig, Trainer

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainOutcome:
    """What a run produced and measured."""

    bundle: Bundle | None  # None on ranks other than 0
    result: StrategyResult
    zero_shot_accuracy: float
    embedding: EmbedStats  # train + val together; ``encoded`` counts image forward passes
    run_id: str | None


def _split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    rows = manifest[manifest["split"].eq(split).fillna(False)]
    rows = rows[rows["label"].notna()]
    if rows.empty:
        raise ClipHarError(
            f"the manifest has no labelled '{split}' rows: run `clip-har data split` first"
        )
    return rows.reset_index(drop=True)


def _embed(
    store: FeatureStore,
    rows: pd.DataFrame,
    classes: list[str],
    settings: Settings,
    progress: Progress | None,
) -> tuple[torch.Tensor, torch.Tensor, EmbedStats]:
    features, stats = store.embed(
        rows,
        batch_size=settings.train.batch_size,
        num_workers=settings.train.workers,
        progress=progress,
    )
    index = {name: i for i, name in enumerate(classes)}
    labels = torch.tensor([index[name] for name in rows["label"]], dtype=torch.int64)
    return features.embeddings[features.present], labels[features.present], stats


def feature_data(
    settings: Settings,
    manifest: pd.DataFrame,
    backbone: Backbone,
    progress: Progress | None,
    dist: DistContext | None = None,
) -> tuple[FeatureData, EmbedStats]:
    """Train/val embeddings (from the cache where possible) and the text side. Under
    torchrun rank 0 encodes first; the other ranks then read its cache entries."""
    dist = dist or local_context()
    train_rows, val_rows = _split_rows(manifest, "train"), _split_rows(manifest, "val")
    classes = sorted(set(train_rows["label"]) | set(val_rows["label"]))
    store = FeatureStore(
        default_store_root(settings.cache_dir),
        backbone,
        max_pixels=settings.data.max_image_pixels,
    )
    if not dist.is_main:
        barrier(dist)
    train_x, train_y, train_stats = _embed(store, train_rows, classes, settings, progress)
    val_x, val_y, val_stats = _embed(store, val_rows, classes, settings, progress)
    if dist.is_main:
        barrier(dist)
    data = FeatureData(
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        class_names=classes,
        prompts=load_prompt_set(settings.prompts.set),
        text_cache=TextEmbeddingCache(backbone),
        logit_scale=backbone.logit_scale,
    )
    stats = EmbedStats(
        encoded=train_stats.encoded + val_stats.encoded,
        reused=train_stats.reused + val_stats.reused,
        skipped=train_stats.skipped + val_stats.skipped,
    )
    return data, stats


def _data_version(data: Path) -> str | None:
    try:
        return version(manifest_path(data))
    except DataVersionError as exc:
        logger.info("no data version: %s", exc)
        return None


def train_config(settings: Settings, parallel: str = "auto") -> TrainConfig:
    """The trainer's configuration from the ``train`` settings."""
    train = settings.train
    return TrainConfig(
        epochs=train.epochs,
        batch_size=train.batch_size,
        lr=train.lr,
        weight_decay=train.weight_decay,
        warmup_ratio=train.warmup_ratio,
        grad_clip=train.grad_clip,
        accumulation=train.accumulation,
        precision=train.precision,
        label_smoothing=train.label_smoothing,
        patience=train.patience,
        seed=train.seed,
        parallel=parallel,  # type: ignore[arg-type]
    )


def _fit(
    settings: Settings,
    manifest: pd.DataFrame,
    backbone: Backbone,
    features: FeatureData,
    trainer: Trainer,
    dist: DistContext,
) -> tuple[StrategyResult, EncoderDelta | None]:
    """Run the configured strategy: on cached features, or end to end on the photos."""
    train = settings.train
    if train.strategy not in E2E_STRATEGIES:
        result = fit_strategy(
            train.strategy, features, trainer, trainer.config, select_prompts=train.select_prompts
        )
        return result, None
    options = FinetuneOptions(
        blocks=train.blocks,
        lora_rank=train.lora_rank,
        augment=train.augment,
        workers=train.workers,
        max_pixels=settings.data.max_image_pixels,
    )
    rows = {split: _split_rows(manifest, split) for split in ("train", "val")}
    tuned = finetune(
        train.strategy,  # type: ignore[arg-type]
        backbone,
        rows,
        features.class_names,
        features.zero_shot_weights(),
        trainer,
        options,
        dist=dist,
    )
    result = StrategyResult(
        tuned.classifier.head, features.prompts, tuned.val_accuracy, fit=tuned.fit
    )
    return result, tuned.encoder


def run_training(
    settings: Settings,
    data: Path,
    output: Path,
    *,
    strict_tracking: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    dist: DistContext | None = None,
    parallel: str = "auto",
    checkpoint_dir: Path | None = None,
    resume: bool = False,
) -> TrainOutcome:
    """Train ``settings.train.strategy`` on the split manifest at ``data``; write a bundle.

    Under ``torchrun`` every rank calls this with its ``dist`` context; rank 0 alone
    tracks and writes the bundle.
    """
    train = settings.train
    dist = dist or local_context()
    if train.strategy not in FEATURE_STRATEGIES + E2E_STRATEGIES:
        raise ClipHarError(
            f"unknown strategy {train.strategy!r}; "
            f"choose one of {', '.join(FEATURE_STRATEGIES + E2E_STRATEGIES)}"
        )
    if output.exists() and not overwrite:
        raise ClipHarError(f"{output} already exists (use --force to replace it)")
    if train.balance == "weights" and train.strategy in ("zero-shot", "tip-adapter"):
        logger.warning("%s trains nothing: --balance weights does not apply", train.strategy)
    manifest = read_manifest(data)
    if not dist.is_main:  # rank 0 downloads (or builds) the backbone once, then the others
        barrier(dist)
    backbone = load_backbone(
        settings.model.spec, revision=settings.model.revision, cache_dir=settings.cache_dir
    )
    if dist.is_main:
        barrier(dist)
    features, stats = feature_data(settings, manifest, backbone, progress, dist)
    weights = (
        class_weights(
            [features.class_names[i] for i in features.train_y.tolist()], features.class_names
        )
        if train.balance == "weights"
        else None
    )
    data_version = _data_version(data)
    tracker = (
        create_tracker(
            parse_backends(train.tracking),
            experiment=train.experiment,
            strict=strict_tracking,
            root=Path.cwd(),
        )
        if dist.is_main
        else NullTracker()
    )
    with tracker:
        tracker.start(
            f"{train.strategy}-{backbone.label}",
            params=settings.model_dump(mode="json", exclude={"cache_dir"}),
            tags=run_tags(backbone_fingerprint=backbone.fingerprint, data_version=data_version),
        )
        trainer = Trainer(
            train_config(settings, parallel),
            class_weights=weights,
            checkpoint_dir=checkpoint_dir,
            on_epoch=lambda epoch, metrics: tracker.log_metrics(metrics, step=epoch),
            dist=dist,
            resume=resume,
        )
        baseline = zero_shot(features).val_accuracy
        result, encoder = _fit(settings, manifest, backbone, features, trainer, dist)
        metrics = {
            "val_accuracy": result.val_accuracy,
            "zero_shot_val_accuracy": baseline,
            "train_images": float(len(features.train_y)),
            "val_images": float(len(features.val_y)),
            **{f"chosen_{key}": value for key, value in result.chosen.items()},
        }
        bundle = None
        if dist.is_main:
            classifier = HARClassifier(backbone.image_encoder, result.head, features.class_names)
            bundle = save_bundle(
                output,
                classifier=classifier.eval(),
                backbone=backbone,
                prompts=result.prompts,
                metrics=metrics,
                lineage={"data_version": data_version, "run_id": tracker.run_id},
                encoder=encoder,
                overwrite=overwrite,
            )
            tracker.log_metrics(metrics, step=trainer.config.epochs)
            tracker.log_artifact(bundle.directory, name="bundle")
    logger.info(
        "%s: val accuracy %.4f (zero-shot %.4f)", train.strategy, result.val_accuracy, baseline
    )
    return TrainOutcome(bundle, result, baseline, stats, tracker.run_id)
