"""The training loop every gradient-based strategy uses, in one process or under ``torchrun``.

``Trainer(config).fit(model, train_loader, validate)`` returns the best epoch's weights by a
validation metric. Optimisation, checkpoints and resume: docs/training.md#the-trainer.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, get_args

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ValidationError
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset

from clip_har.config import DistributedMode, Precision, TrainSettings
from clip_har.errors import TrainingError
from clip_har.io import atomic_write, plural
from clip_har.training.distributed import (
    BlockSpec,
    DistContext,
    EpochSampler,
    all_reduce_sum,
    broadcast_object,
    full_state_dict,
    gather_objects,
    gradient_sync,
    load_full_state_dict,
    load_optimizer_state_dict,
    local_context,
    optimizer_state_dict,
    unwrap,
    wrap_model,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FILE",
    "TRAIN_DEFAULTS",
    "FitProgress",
    "FitResult",
    "FitStatus",
    "TrainConfig",
    "Trainer",
    "WarmupCosine",
    "feature_loader",
    "from_section",
    "has_checkpoint",
    "parameter_groups",
    "seed_everything",
]

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_VERSION = 1
_NO_DECAY_NAMES = (
    "position_embedding",
    "positional_embedding",
    "pos_embed",
    "class_embedding",
    "cls_token",
    "logit_scale",
    "logit_bias",
)
_HEAVY_KEYS = ("model", "optimizer", "best_state")  # read by rank 0 only, never broadcast


TRAIN_DEFAULTS = TrainSettings()  # one default per setting: the ``train`` section's

RuntimeConfig = TypeVar("RuntimeConfig", bound="DataclassInstance")


def from_section(cls: type[RuntimeConfig], section: BaseModel, **given: Any) -> RuntimeConfig:
    """A runtime config (a dataclass) whose fields not in ``given`` are read from the
    pydantic settings ``section`` by the same name, so no value is copied by hand."""
    names = [item.name for item in fields(cls) if item.name not in given]
    return cls(**{name: getattr(section, name) for name in names}, **given)


@dataclass(frozen=True)
class TrainConfig:
    """The trainer's hyper-parameters: the names, defaults and limits of the ``train``
    settings (:class:`~clip_har.config.TrainSettings`), which :meth:`from_settings` copies.

    ``batch_size`` is the global batch per forward step (each of ``N`` ranks loads about
    ``batch_size / N``); ``distributed`` ``auto`` is DDP under ``torchrun`` with several
    processes and ``none`` otherwise.
    """

    epochs: int = TRAIN_DEFAULTS.epochs
    batch_size: int = TRAIN_DEFAULTS.batch_size
    lr: float = TRAIN_DEFAULTS.lr
    weight_decay: float = TRAIN_DEFAULTS.weight_decay
    warmup_ratio: float = TRAIN_DEFAULTS.warmup_ratio
    grad_clip: float | None = TRAIN_DEFAULTS.grad_clip
    accumulation: int = TRAIN_DEFAULTS.accumulation
    precision: Precision = TRAIN_DEFAULTS.precision
    label_smoothing: float = TRAIN_DEFAULTS.label_smoothing
    patience: int | None = TRAIN_DEFAULTS.patience
    seed: int = TRAIN_DEFAULTS.seed
    distributed: DistributedMode | Literal["auto"] = "auto"

    @classmethod
    def from_settings(cls, train: TrainSettings) -> TrainConfig:
        """The config of a run with these ``train`` settings (each field by its name)."""
        return from_section(cls, train)

    def __post_init__(self) -> None:
        """Check every value against the ``train`` settings' limits (one set of rules)."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        distributed = values.pop("distributed")
        problems = []
        try:
            TrainSettings.model_validate(values, strict=True)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(map(str, error['loc']))} {error['msg'][:1].lower()}"
                f"{error['msg'][1:]} (got {error['input']!r})"
                for error in exc.errors()
            ]
        choices = ("auto", *get_args(DistributedMode))
        if distributed not in choices:
            problems.append(f"distributed must be {', '.join(choices)} (got {distributed!r})")
        if problems:
            raise TrainingError("invalid training settings: " + "; ".join(problems))


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns. In a distributed run ``best_state`` is complete
    on rank 0 and ``{}`` elsewhere; the rest is the same on every rank (but each rank
    times its own ``epoch_seconds``)."""

    best_state: dict[str, torch.Tensor]  # consolidated state dict of the best epoch, on CPU
    best_metric: float
    best_epoch: int  # index into history (0-based; logs count epochs from 1)
    history: list[dict[str, float]]  # per epoch: train_loss, lr, epoch_seconds + metrics
    final_loss: float  # mean train loss of the last epoch over all ranks
    stopped_early: bool = False


@dataclass(frozen=True)
class FitStatus:
    """Where a fit stands, for a progress display (``Trainer(progress=...)``, rank 0 only).

    ``stage`` is ``train`` while the epoch's batches run (``batch`` of ``batches`` done,
    reported from 0), ``validate`` once they are done (``train_loss``, the epoch's mean
    loss, is set from then on), and ``epoch`` when the epoch is scored: ``metrics`` is then
    what ``validate`` returned (``val_accuracy`` by default). ``epoch`` counts from 1.
    """

    epoch: int
    epochs: int
    batch: int
    batches: int
    stage: Literal["train", "validate", "epoch"]
    train_loss: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """How much of the whole fit is done, from 0 to 1 (whole epochs plus batches)."""
        within = 1.0 if self.stage == "epoch" else self.batch / max(self.batches, 1)
        return min(1.0, (self.epoch - 1 + within) / max(self.epochs, 1))


FitProgress = Callable[[FitStatus], None]
"""Called with each :class:`FitStatus` of a fit (after every batch and epoch)."""


class WarmupCosine:
    """LR multiplier per optimizer step: linear warm-up to 1 over ``warmup_steps``, then
    a cosine to 0 at ``total_steps``. Plain attributes, so the scheduler state saves it."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        if not 0 <= warmup_steps <= total_steps or total_steps < 1:
            raise ValueError(
                f"need 0 <= warmup ({warmup_steps}) <= total ({total_steps}), total >= 1"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters: decayed weights, then the rest (norms,
    biases, 1-D tensors, position/class embeddings, logit scale) without decay."""
    norm_params = {
        id(p)
        for module in model.modules()
        if "norm" in type(module).__name__.lower()
        for p in module.parameters(recurse=False)
    }
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = (
            param.ndim <= 1
            or name.endswith("bias")
            or id(param) in norm_params
            or any(key in name for key in _NO_DECAY_NAMES)
        )
        (no_decay if exempt else decay).append(param)
    if not decay and not no_decay:
        raise TrainingError("the model has no trainable parameters (all requires_grad=False)")
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _TensorPairs(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """In-memory ``(features, labels)`` that fetches a whole batch with one indexing op."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(indices, dtype=torch.int64)
        return self.features[rows], self.labels[rows]


def _batch_as_is(batch: Any) -> Any:
    """The collate step of :class:`_TensorPairs`: its batches come out whole already."""
    return batch


def feature_loader(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    seed: int,
    dist: DistContext | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(features[i], labels[i])`` of in-memory tensors through an
    :class:`EpochSampler`: ``batch_size`` is the global batch, and under ``dist`` each
    rank gets its contiguous share of every global batch (possibly empty)."""
    if len(features) != len(labels):
        raise TrainingError(f"{len(features)} feature rows but {len(labels)} labels")
    context = dist or local_context()
    sampler = EpochSampler(
        len(labels),
        batch_size=batch_size,
        seed=seed,
        rank=context.rank,
        world_size=context.world_size,
        shuffle=shuffle,
        drop_last=drop_last,
    )
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        _TensorPairs(features, labels),
        batch_sampler=sampler,
        collate_fn=_batch_as_is,
        generator=generator,
        pin_memory=context.device.type == "cuda",
    )


@dataclass
class _Run:
    """The mutable progress of a fit; all of it goes into the checkpoint."""

    next_epoch: int = 0
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Parts:
    """What one fit trains with."""

    model: nn.Module  # wrapped for ``distributed``
    distributed: DistributedMode
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler
    train: DataLoader[Any]
    batches: int


class Trainer:
    """Runs :meth:`fit`; what it does and saves: docs/training.md#the-trainer.

    ``blocks`` selects the modules FSDP shards one by one (default: Hugging Face encoder
    layers). ``on_epoch(epoch, record)`` gets each history record on rank 0, and
    ``progress`` each :class:`FitStatus` (after every batch and epoch) on rank 0. Under
    ``torchrun`` every rank builds a Trainer with the same arguments (``checkpoint_dir``
    included: saving is collective even though rank 0 alone writes) and calls ``fit``.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        class_weights: torch.Tensor | None = None,
        checkpoint_dir: Path | None = None,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        dist: DistContext | None = None,
        blocks: BlockSpec | None = None,
        resume: bool = False,
        progress: FitProgress | None = None,
    ) -> None:
        self.config = config
        self.resume = resume
        self.dist = dist or local_context()
        if config.precision == "fp16" and self.dist.device.type != "cuda":
            raise TrainingError(
                "precision fp16 needs a CUDA GPU (it relies on a gradient scaler); "
                f"this process trains on {self.dist.device.type}: use bf16 or fp32"
            )
        if class_weights is not None:
            class_weights = class_weights.detach().to(torch.float32)
            if class_weights.ndim != 1 or not bool((class_weights > 0).all()):
                raise TrainingError("class_weights must be a 1-D tensor of positive numbers")
            class_weights = class_weights.to(self.dist.device)
        self.class_weights = class_weights
        self.checkpoint_dir = checkpoint_dir
        self.on_epoch = on_epoch
        self.progress = progress
        self.blocks = blocks

    @property
    def distributed(self) -> DistributedMode:
        """What ``config.distributed`` resolves to in this process (``auto``: DDP with
        several processes, else ``none``)."""
        if self.config.distributed == "auto":
            return "ddp" if self.dist.world_size > 1 else "none"
        return self.config.distributed

    def _info(self, message: str, *args: object) -> None:
        if self.dist.is_main:
            logger.info(message, *args)

    def _warning(self, message: str, *args: object) -> None:
        if self.dist.is_main:
            logger.warning(message, *args)

    def _report(self, status: FitStatus) -> None:
        if self.progress is not None and self.dist.is_main:
            self.progress(status)

    def fit(
        self,
        model: nn.Module,
        train: DataLoader[Any],
        validate: Callable[[nn.Module], dict[str, float]],
        *,
        metric: str = "val_accuracy",
        resume: bool | None = None,
    ) -> FitResult:
        """Train ``model`` on ``train`` for ``config.epochs`` (or until early stopping).

        ``train`` yields batches whose first two items are inputs and int64 labels
        (tuples, lists or :class:`~clip_har.data.datasets.Batch`). ``validate`` returns
        metrics that include ``metric``. ``resume`` defaults to the constructor's. Every
        rank must call ``fit``.
        """
        config = self.config
        resume = self.resume if resume is None else resume
        if resume and self.checkpoint_dir is None:
            raise TrainingError("resume needs a checkpoint_dir to resume from")
        try:
            batches = len(train)
        except TypeError:
            raise TrainingError(
                "the train loader must have a length (a map-style dataset)"
            ) from None
        if batches < 1:
            raise TrainingError("the train loader yields no batches")
        seed_everything(config.seed)
        # confident heads (Tip-Adapter's cache, large logit scales) produce denormal
        # gradients, which make CPU matmuls ~15x slower; flushing them changes nothing else
        with _flushing_denormals():
            wrapped = wrap_model(model, self.distributed, self.dist, self.blocks)
            optimizer = torch.optim.AdamW(
                parameter_groups(wrapped, config.weight_decay),
                lr=config.lr,
                fused=_fused_adamw(wrapped),
            )
            steps = config.epochs * math.ceil(batches / config.accumulation)
            schedule = WarmupCosine(round(config.warmup_ratio * steps), steps)
            parts = _Parts(
                model=wrapped,
                distributed=self.distributed,
                optimizer=optimizer,
                scheduler=LambdaLR(optimizer, schedule),
                scaler=torch.amp.GradScaler(
                    self.dist.device.type, enabled=config.precision == "fp16"
                ),
                train=train,
                batches=batches,
            )
            trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
            self._info(
                "training %s trainable parameters for %s x %s, %s, %s, %s on %s",
                f"{trainable:,}",
                plural(config.epochs, "epoch"),
                plural(batches, "batch"),
                plural(steps, "optimizer step"),
                config.precision,
                parts.distributed,
                plural(self.dist.world_size, "process"),
            )
            run = (self._restore(parts) if resume else None) or _Run()
            start = config.epochs if run.stopped else run.next_epoch
            for epoch in range(start, config.epochs):
                self._epoch(parts, run, epoch, validate, metric)
                if run.stopped:
                    self._info(
                        "early stopping after epoch %d: no %s gain in %s",
                        epoch + 1,
                        metric,
                        plural(run.bad_epochs, "epoch"),
                    )
                    break
            if run.best_epoch != len(run.history) - 1:
                load_full_state_dict(wrapped, run.best_state, parts.distributed)
            self._info("best %s %.4f at epoch %d", metric, run.best_metric, run.best_epoch + 1)
            return FitResult(
                best_state=run.best_state,
                best_metric=run.best_metric,
                best_epoch=run.best_epoch,
                history=run.history,
                final_loss=run.history[-1]["train_loss"],
                stopped_early=run.stopped,
            )

    def _epoch(
        self,
        parts: _Parts,
        run: _Run,
        epoch: int,
        validate: Callable[[nn.Module], dict[str, float]],
        metric: str,
    ) -> None:
        """Train one epoch, validate, track the best state, checkpoint, report."""
        _set_epoch(parts.train, epoch)
        started = time.perf_counter()
        train_loss, lr = self._train_epoch(parts, run, epoch)
        epochs, batches = self.config.epochs, parts.batches
        self._report(FitStatus(epoch + 1, epochs, batches, batches, "validate", train_loss))
        metrics = self._validate(parts.model, validate)
        if metric not in metrics:
            raise TrainingError(
                f"validate() returned {sorted(metrics)}, without the metric {metric!r}"
            )
        record = {
            "train_loss": train_loss,
            "lr": lr,
            **metrics,
            "epoch_seconds": time.perf_counter() - started,
        }
        run.history.append(record)
        value = metrics[metric]
        improved = (
            run.best_epoch < 0
            or value > run.best_metric
            or (math.isnan(run.best_metric) and not math.isnan(value))
        )
        if improved:
            run.best_metric, run.best_epoch, run.bad_epochs = value, epoch, 0
            run.best_state = full_state_dict(parts.model, parts.distributed)
        else:
            run.bad_epochs += 1
        patience = self.config.patience
        run.stopped = patience is not None and run.bad_epochs >= patience
        run.next_epoch = epoch + 1
        self._info(
            "epoch %d/%d: train_loss %.4f, %s %.4f (best %.4f at epoch %d), lr %.3g, %.1fs",
            epoch + 1,
            self.config.epochs,
            train_loss,
            metric,
            value,
            run.best_metric,
            run.best_epoch + 1,
            lr,
            record["epoch_seconds"],
        )
        if self.checkpoint_dir is not None:
            self._save(parts, run, improved)
        if self.on_epoch is not None and self.dist.is_main:
            self.on_epoch(epoch, dict(record))
        self._report(FitStatus(epoch + 1, epochs, batches, batches, "epoch", train_loss, metrics))

    def _autocast(self) -> AbstractContextManager[Any]:
        precision = self.config.precision
        if precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.dist.device.type, dtype=dtype)

    def _train_epoch(self, parts: _Parts, run: _Run, epoch: int) -> tuple[float, float]:
        """One pass over ``train`` (the 0-based ``epoch``); returns the mean loss over all
        ranks and the last lr.

        Each micro-batch is normalised by the global (all-rank) weight of its examples, so
        DDP/FSDP gradient averaging yields the gradient of the global mean loss. A batch
        empty on every rank is skipped; a rank whose share is empty runs a zero-weighted
        copy of an earlier example so that the collectives of its peers still match.
        """
        config, context, model = self.config, self.dist, parts.model
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        totals = torch.zeros(2, dtype=torch.float64, device=context.device)  # loss, weight
        filler: tuple[torch.Tensor, torch.Tensor] | None = None
        pending = False  # gradients accumulated since the last optimizer step
        lr = parts.scheduler.get_last_lr()[0]
        seen = 0
        report = self.progress is not None and context.is_main
        if report:
            self._report(FitStatus(epoch + 1, config.epochs, 0, parts.batches, "train"))
        for index, batch in enumerate(parts.train):
            inputs, labels = _unpack(batch, context.device)
            group_size = min(
                config.accumulation, parts.batches - index + index % config.accumulation
            )
            closes_group = index % config.accumulation == group_size - 1
            weight = (
                float(self.class_weights[labels].sum())
                if self.class_weights is not None
                else float(labels.numel())
            )
            local = [float(labels.numel()), weight, float(labels.numel() == 0 and filler is None)]
            count, total_weight, unfillable = all_reduce_sum(
                torch.tensor(local, dtype=torch.float64), context
            ).tolist()
            # a group that ran a backward must end with a synchronising one (DDP/FSDP)
            must_sync = context.distributed and closes_group and pending
            if (count == 0 or unfillable > 0) and not must_sync:
                if count > 0:
                    self._warning(
                        "skipped a batch of %s: a rank had none", plural(int(count), "example")
                    )
            else:
                scale = 1.0
                if labels.numel() == 0:
                    assert filler is not None  # every rank holds one once its group has run
                    inputs, labels, scale = filler[0], filler[1], 0.0
                else:
                    filler = (inputs[:1], labels[:1])
                denominator = max(total_weight, 1e-12) * group_size / context.world_size
                with gradient_sync(model, closes_group):
                    with self._autocast():
                        logits = model(inputs)
                    loss = nn.functional.cross_entropy(
                        logits.float(),
                        labels,
                        weight=self.class_weights,
                        label_smoothing=config.label_smoothing,
                        reduction="sum",
                    )
                    parts.scaler.scale(loss * (scale / denominator)).backward()
                totals[0] += loss.detach().double() * scale
                totals[1] += weight * scale
                pending = True
            if closes_group:
                if pending:
                    self._step(parts, params)
                parts.optimizer.zero_grad(set_to_none=True)
                lr = parts.scheduler.get_last_lr()[0]
                parts.scheduler.step()
                run.global_step += 1
                pending = False
            seen = index + 1
            if report:
                self._report(FitStatus(epoch + 1, config.epochs, seen, parts.batches, "train"))
        if seen != parts.batches:
            raise TrainingError(
                f"the train loader yielded {plural(seen, 'batch')} but its length is "
                f"{parts.batches}"
            )
        loss_sum, weight_sum = all_reduce_sum(totals, context).tolist()
        return (loss_sum / weight_sum if weight_sum > 0 else math.nan), float(lr)

    def _step(self, parts: _Parts, params: list[nn.Parameter]) -> None:
        """Unscale (fp16), clip, and take an optimizer step."""
        if parts.scaler.is_enabled():
            parts.scaler.unscale_(parts.optimizer)
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()

    def _validate(
        self, model: nn.Module, validate: Callable[[nn.Module], dict[str, float]]
    ) -> dict[str, float]:
        """``validate`` on every rank (eval mode, no grad); rank 0's metrics for all."""
        module = unwrap(model)
        module.eval()
        with torch.no_grad():
            metrics = {str(k): float(v) for k, v in validate(module).items()}
        shared: dict[str, float] = broadcast_object(metrics, self.dist)
        return shared

    def _checkpoint_path(self) -> Path:
        assert self.checkpoint_dir is not None
        return self.checkpoint_dir / CHECKPOINT_FILE

    def _save(self, parts: _Parts, run: _Run, improved: bool) -> None:
        """Write the checkpoint (collective: every rank contributes its state)."""
        model_state = (
            run.best_state if improved else full_state_dict(parts.model, parts.distributed)
        )
        optimizer_state = optimizer_state_dict(parts.model, parts.optimizer)
        rng = gather_objects(_rng_state(parts.train, self.dist.device), self.dist)
        if not self.dist.is_main:
            return
        payload = {
            "version": CHECKPOINT_VERSION,
            "model": model_state,
            "optimizer": optimizer_state,
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(),
            "rng": rng,
            "next_epoch": run.next_epoch,
            "global_step": run.global_step,
            "best_metric": run.best_metric,
            "best_epoch": run.best_epoch,
            "best_state": run.best_state,
            "bad_epochs": run.bad_epochs,
            "stopped": run.stopped,
            "history": run.history,
            "config": asdict(self.config),
            "world_size": self.dist.world_size,
        }
        with atomic_write(self._checkpoint_path(), durable=True) as staging:
            torch.save(payload, staging)

    def _restore(self, parts: _Parts) -> _Run | None:
        """Load the checkpoint into the model, optimizer, scheduler, scaler and RNGs
        (collective); None when there is none yet."""
        path = self._checkpoint_path()
        payload: dict[str, Any] | None = None
        problem: str | None = None
        if self.dist.is_main and path.is_file():
            try:
                payload = _read_checkpoint(path)
            except TrainingError as exc:  # every rank must learn it, or the others wait forever
                problem = str(exc)
        light = (
            None if payload is None else {k: v for k, v in payload.items() if k not in _HEAVY_KEYS}
        )
        problem, meta = broadcast_object((problem, light), self.dist)
        if problem is not None:
            raise TrainingError(problem)
        if meta is None:
            self._info("no checkpoint at %s: starting from scratch", path)
            return None
        if meta.get("version") != CHECKPOINT_VERSION:
            raise TrainingError(
                f"{path} has checkpoint version {meta.get('version')}; "
                f"this version of clip-har reads version {CHECKPOINT_VERSION}"
            )
        changed = sorted(
            k
            for k, v in asdict(self.config).items()
            # how the run is spread over processes does not change the math
            if k != "distributed" and meta["config"].get(k) != v
        )
        if changed:
            self._warning(
                "resuming with changed settings (%s): not an exact continuation", ", ".join(changed)
            )
        heavy = payload or {}
        load_full_state_dict(parts.model, heavy.get("model", {}), parts.distributed)
        load_optimizer_state_dict(
            parts.model, parts.optimizer, heavy.get("optimizer", {}), parts.distributed
        )
        parts.scheduler.load_state_dict(meta["scheduler"])
        if parts.scaler.is_enabled() and meta["scaler"]:
            parts.scaler.load_state_dict(meta["scaler"])
        states: list[dict[str, Any]] = meta["rng"]
        if len(states) != self.dist.world_size:
            self._warning(
                "the checkpoint comes from %s, this run has %d: random streams differ",
                plural(len(states), "process"),
                self.dist.world_size,
            )
        _set_rng_state(states[min(self.dist.rank, len(states) - 1)], parts.train, self.dist.device)
        self._info("resumed from %s after epoch %d", path, meta["next_epoch"])
        return _Run(
            next_epoch=meta["next_epoch"],
            global_step=meta["global_step"],
            best_metric=meta["best_metric"],
            best_epoch=meta["best_epoch"],
            best_state=heavy.get("best_state", {}),
            bad_epochs=meta["bad_epochs"],
            stopped=meta["stopped"],
            history=meta["history"],
        )


def has_checkpoint(checkpoint_dir: Path) -> bool:
    """Whether ``checkpoint_dir`` holds a checkpoint for a fit with ``resume`` to read
    (without one, such a fit starts from scratch)."""
    return (checkpoint_dir / CHECKPOINT_FILE).is_file()


def _fused_adamw(model: nn.Module) -> bool:
    """Fused AdamW (one kernel per step instead of ~10 passes) where torch has it: CPU and
    CUDA floating-point parameters that are plain tensors (not FSDP's DTensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return bool(params) and all(
        p.device.type in ("cpu", "cuda")
        and p.dtype.is_floating_point
        and type(p.data) is torch.Tensor
        for p in params
    )


def _unpack(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` on ``device`` from a tuple/list/NamedTuple batch."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TrainingError(
            f"a training batch must be a tuple (inputs, labels, ...), got {type(batch).__name__}"
        )
    inputs, labels = batch[0], batch[1]
    return inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def _set_epoch(train: DataLoader[Any], epoch: int) -> None:
    """``set_epoch(epoch)`` on the loader's sampler, batch sampler and dataset (once each)."""
    seen: set[int] = set()
    for target in (getattr(train, name, None) for name in ("sampler", "batch_sampler", "dataset")):
        setter = getattr(target, "set_epoch", None)
        if callable(setter) and id(target) not in seen:
            seen.add(id(target))
            setter(epoch)


def _generators(train: DataLoader[Any]) -> dict[str, torch.Generator]:
    """The loader's own random generators (its base seed, a shuffling/weighted sampler)."""
    candidates = {
        "loader": getattr(train, "generator", None),
        "sampler": getattr(getattr(train, "sampler", None), "generator", None),
        "batch_sampler": getattr(getattr(train, "batch_sampler", None), "generator", None),
    }
    found: dict[str, torch.Generator] = {}
    for name, generator in candidates.items():
        if isinstance(generator, torch.Generator) and all(
            generator is not g for g in found.values()
        ):
            found[name] = generator
    return found


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's payload; a :class:`TrainingError` naming the file when it is not one
    (truncated, overwritten, not written by clip-har)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types: RuntimeError, UnpicklingError, EOFError
        # torch's own messages suggest weights_only=False: unsafe advice for a damaged file
        raise TrainingError(
            f"{path}: not a readable checkpoint (damaged, or not written by clip-har: "
            f"{type(exc).__name__}); delete it to start over"
        ) from None
    if not isinstance(payload, dict):
        raise TrainingError(f"{path}: not a clip-har checkpoint (a {type(payload).__name__})")
    return payload


def _rng_state(train: DataLoader[Any], device: torch.device) -> dict[str, Any]:
    """This process's random states, as types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, cached = cast(
        tuple[str, NDArray[np.uint32], int, int, float], np.random.get_state(legacy=True)
    )
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in _generators(train).items()},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], train: DataLoader[Any], device: torch.device) -> None:
    """Restore what :func:`_rng_state` captured."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    saved = state["generators"]
    for name, generator in _generators(train).items():
        if name in saved:
            generator.set_state(saved[name])


@contextmanager
def _flushing_denormals() -> Iterator[None]:
    """Flush denormal floats to zero while training, then restore the default (off): the
    setting is process-wide, and later code (hypothesis, numerics) must not inherit it."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
