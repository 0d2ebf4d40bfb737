"""One training run, end to end: split manifest -> cached features -> strategy -> bundle,
tracked in MLflow / W&B. ``clip-har train`` and the DVC ``train`` stage call this.

See docs/training.md#a-training-run.
"""

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
from clip_har.data.versioning import version
from clip_har.errors import ClipHarError, DataVersionError, TrainingError
from clip_har.io import plural
from clip_har.models.backbone import Backbone, load_backbone
from clip_har.models.bundle import Bundle, save_bundle
from clip_har.models.classifier import HARClassifier, TextEmbeddingCache
from clip_har.models.prompts import load_prompt_set
from clip_har.tracking import NullTracker, create_tracker, parse_backends, run_tags
from clip_har.training.distributed import DistContext, local_context, rank_zero_first
from clip_har.training.features import EmbedStats, FeatureStore, default_store_root
from clip_har.training.strategies import (
    FeatureData,
    PhotoData,
    Strategy,
    StrategyInputs,
    StrategyResult,
    get_strategy,
    zero_shot,
)
from clip_har.training.trainer import FitProgress, TrainConfig, Trainer

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainOutcome:
    """What a run produced and measured."""

    bundle: Bundle | None  # None on ranks other than 0
    backbone: str  # its label: flagged "(RANDOM WEIGHTS)" for a random-weight preset
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
        min_side=settings.data.min_image_side,
    )
    train_total = 0

    def train_progress(done: int, total: int) -> None:
        nonlocal train_total
        train_total = total
        if progress is not None:
            progress(done, total)

    def val_progress(done: int, total: int) -> None:  # one count: val continues train's
        if progress is not None:
            progress(train_total + done, train_total + total)

    with rank_zero_first(dist):
        train_x, train_y, train_stats = _embed(store, train_rows, classes, settings, train_progress)
        val_x, val_y, val_stats = _embed(store, val_rows, classes, settings, val_progress)
    for split, embedded, rows in (("train", train_x, train_rows), ("val", val_x, val_rows)):
        if len(embedded) == 0:
            raise TrainingError(
                f"no {split} image could be read ({plural(len(rows), 'row')} in the {split} "
                "split): run `clip-har data validate` and train on its accepted manifest"
            )
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


def _fit(
    strategy: Strategy,
    settings: Settings,
    manifest: pd.DataFrame,
    backbone: Backbone,
    features: FeatureData,
    trainer: Trainer,
) -> StrategyResult:
    """Run ``strategy``: on the cached features, or end to end on the photos."""
    photos = None
    if strategy.end_to_end:
        rows = {split: _split_rows(manifest, split) for split in ("train", "val")}
        photos = PhotoData(
            backbone,
            rows,
            max_pixels=settings.data.max_image_pixels,
            min_side=settings.data.min_image_side,
        )
    return strategy.fit(StrategyInputs(features, trainer, settings.train, photos))


def run_training(
    settings: Settings,
    data: Path,
    output: Path,
    *,
    strict_tracking: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    dist: DistContext | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    fit_progress: FitProgress | None = None,
) -> TrainOutcome:
    """Train ``settings.train.strategy`` on the split manifest at ``data``; write a bundle.

    ``progress(done, total)`` follows the embedding of the train and val images (one
    count), ``fit_progress`` every batch and epoch of a gradient-trained strategy. Under
    ``torchrun`` every rank calls this with its ``dist`` context; rank 0 alone tracks,
    reports progress and writes the bundle.
    """
    train = settings.train
    dist = dist or local_context()
    strategy = get_strategy(train.strategy)
    if output.exists() and not overwrite:
        raise ClipHarError(f"{output} already exists (use --force to replace it)")
    if train.balance == "weights" and not strategy.weighted:
        logger.warning("%s uses no class weights: --balance weights does not apply", train.strategy)
    manifest = read_manifest(data)
    with rank_zero_first(dist):  # rank 0 downloads (or builds) the backbone once
        backbone = load_backbone(
            settings.model.spec, revision=settings.model.revision, cache_dir=settings.cache_dir
        )
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
            TrainConfig.from_settings(train),
            class_weights=weights,
            checkpoint_dir=checkpoint_dir,
            on_epoch=lambda epoch, metrics: tracker.log_metrics(metrics, step=epoch),
            dist=dist,
            resume=resume,
            progress=fit_progress,
        )
        baseline = zero_shot(features).val_accuracy
        result = _fit(strategy, settings, manifest, backbone, features, trainer)
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
                lineage={
                    "data_version": data_version,
                    "run_id": tracker.run_id,
                    "strategy": train.strategy,
                },
                encoder=result.encoder,
                overwrite=overwrite,
            )
            tracker.log_metrics(metrics, step=trainer.config.epochs)
            tracker.log_artifact(bundle.directory, name="bundle")
    logger.info(
        "%s: val accuracy %.4f (zero-shot %.4f)", train.strategy, result.val_accuracy, baseline
    )
    return TrainOutcome(bundle, backbone.label, result, baseline, stats, tracker.run_id)
