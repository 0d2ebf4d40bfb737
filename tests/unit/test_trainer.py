"""The generic trainer: optimisation pieces, loss scaling, early stopping and exact resume."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clip_har.config import TrainSettings
from clip_har.data.balance import weighted_sampler
from clip_har.data.datasets import Batch
from clip_har.errors import ClipHarError, DistributedError, TrainingError
from clip_har.models.backbone import Backbone
from clip_har.training.distributed import (
    DistContext,
    EpochSampler,
    all_reduce_mean,
    broadcast_object,
    encoder_blocks,
    gather_objects,
    init_distributed,
    local_context,
    wrap_model,
)
from clip_har.training.trainer import (
    CHECKPOINT_FILE,
    TrainConfig,
    Trainer,
    WarmupCosine,
    feature_loader,
    parameter_groups,
)

CLASSES = 3


def _data(n: int = 96, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return x, y


def _model(seed: int = 1, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, 16), nn.LayerNorm(16), nn.Dropout(dropout), nn.ReLU(), nn.Linear(16, CLASSES)
    )


def _accuracy(x: torch.Tensor, y: torch.Tensor) -> Callable[[nn.Module], dict[str, float]]:
    def validate(model: nn.Module) -> dict[str, float]:
        return {"val_accuracy": float((model(x).argmax(-1) == y).float().mean())}

    return validate


def _scripted(values: list[float]) -> Callable[[nn.Module], dict[str, float]]:
    """A validate() returning the next of ``values`` at each call."""
    calls = iter(values)

    def validate(model: nn.Module) -> dict[str, float]:
        return {"val_accuracy": next(calls)}

    return validate


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


# ---------------------------------------------------------------- configuration and pieces


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"accumulation": 0}, "accumulation"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"patience": 0}, "patience"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"lr": 0.0}, "lr"),
        ({"seed": -1}, "seed"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_config_rejects_bad_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        TrainConfig(**settings)


def test_config_is_built_from_the_train_settings_field_by_field() -> None:
    train = TrainSettings(
        epochs=3, lr=0.5, precision="bf16", patience=2, seed=9, distributed="fsdp"
    )
    config = TrainConfig.from_settings(train)
    assert asdict(config) == {item.name: getattr(train, item.name) for item in fields(config)}
    assert config.distributed == "fsdp" and config.precision == "bf16"
    defaults = TrainSettings()  # the same defaults as the settings, but ``auto`` spreading
    assert asdict(TrainConfig()) == {
        **{item.name: getattr(defaults, item.name) for item in fields(TrainConfig)},
        "distributed": "auto",
    }
    with pytest.raises(TrainingError, match=r"distributed must be auto, none, ddp, fsdp"):
        TrainConfig(distributed="threads")  # type: ignore[arg-type]


def test_fp16_on_cpu_is_a_clear_error() -> None:
    with pytest.raises(ClipHarError, match=r"fp16 needs a CUDA GPU.*bf16"):
        Trainer(TrainConfig(precision="fp16"), dist=DistContext(0, 1, 0, torch.device("cpu"), None))


def test_warmup_then_cosine() -> None:
    schedule = WarmupCosine(warmup_steps=4, total_steps=20)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(4) == 1.0
    assert schedule(12) == pytest.approx(0.5)
    assert schedule(19) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 16)))
    values = [schedule(s) for s in range(4, 20)]
    assert values == sorted(values, reverse=True)
    assert WarmupCosine(0, 10)(0) == 1.0


def test_parameter_groups_exempt_norms_biases_embeddings_and_scale() -> None:
    class Tower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.class_embedding = nn.Parameter(torch.zeros(4))
            self.position_embedding = nn.Embedding(5, 4)
            self.proj = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.logit_scale = nn.Parameter(torch.ones(()))
            self.frozen = nn.Linear(4, 4)
            self.frozen.requires_grad_(False)

    tower = Tower()
    decay, no_decay = parameter_groups(tower, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(tower.proj.weight)}
    exempt = [
        tower.class_embedding,
        tower.position_embedding.weight,
        tower.proj.bias,
        tower.norm.weight,
        tower.norm.bias,
        tower.logit_scale,
    ]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in exempt}
    with pytest.raises(TrainingError, match="no trainable parameters"):
        parameter_groups(nn.Linear(2, 2).requires_grad_(False), 0.1)


def test_epoch_sampler_shards_each_global_batch_contiguously() -> None:
    single = EpochSampler(23, batch_size=8, seed=3)
    ranks = [EpochSampler(23, batch_size=8, seed=3, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        expected = list(single)
        shards = [list(s) for s in ranks]
        assert len(expected) == 3 and all(len(s) == 3 for s in shards)
        for k, batch in enumerate(expected):
            assert [i for shard in shards for i in shard[k]] == batch
        assert sorted(i for b in expected for i in b) == list(range(23))
    single.set_epoch(0)
    first = list(single)
    single.set_epoch(1)
    assert list(single) != first
    tails = [EpochSampler(9, batch_size=8, rank=r, world_size=2, shuffle=False) for r in (0, 1)]
    # a last batch of one example leaves a rank empty, yet both yield two batches
    assert [list(t) for t in tails] == [[[0, 1, 2, 3], []], [[4, 5, 6, 7], [8]]]
    assert len(EpochSampler(9, batch_size=8, drop_last=True)) == 1


def test_feature_loader_batches_and_reshuffles_per_epoch() -> None:
    x, y = _data(10)
    loader = feature_loader(x, y, batch_size=4, seed=0)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    features, labels = batches[0]
    assert features.shape == (4, 8) and labels.dtype == torch.int64
    loader.batch_sampler.set_epoch(1)  # type: ignore[union-attr]
    assert not torch.equal(torch.cat([b[1] for b in loader]), torch.cat([b[1] for b in batches]))
    with pytest.raises(TrainingError, match="labels"):
        feature_loader(x, y[:5], batch_size=4, seed=0)


# ---------------------------------------------------------------- the loss and the loop


def test_epoch_loss_is_the_class_weighted_smoothed_mean() -> None:
    x, y = _data(40)
    weights = torch.tensor([1.0, 2.0, 0.5])
    model = _model()
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(x), y, weight=weights, label_smoothing=0.2)
    config = TrainConfig(epochs=1, batch_size=7, lr=1e-12, label_smoothing=0.2, grad_clip=None)
    result = Trainer(config, class_weights=weights).fit(
        model, feature_loader(x, y, batch_size=7, seed=0), _accuracy(x, y)
    )
    assert result.final_loss == pytest.approx(float(expected), rel=1e-5)


def test_fit_leaves_denormal_floats_as_it_found_them() -> None:
    """Training flushes denormals for speed; the process-wide setting must not outlive fit
    (property-based tests and numerics in the same process rely on subnormal floats)."""
    x, y = _data(16)
    Trainer(TrainConfig(epochs=1, batch_size=8)).fit(
        _model(), feature_loader(x, y, batch_size=8, seed=0), _accuracy(x, y)
    )
    assert torch.tensor([1e-310], dtype=torch.float64).item() != 0.0


def test_accumulation_matches_the_larger_batch() -> None:
    x, y = _data(64)
    states = []
    for batch, accumulation in ((16, 1), (8, 2), (4, 4)):
        config = TrainConfig(epochs=2, batch_size=batch, accumulation=accumulation, lr=0.05)
        loader = feature_loader(x, y, batch_size=batch, seed=0, shuffle=False)
        model = _model()
        Trainer(config).fit(model, loader, _scripted([0.0, 1.0]))
        states.append(model.state_dict())
    assert _same_state(states[0], states[1], atol=1e-6)
    assert _same_state(states[0], states[2], atol=1e-6)


def test_early_stopping_keeps_the_best_epoch() -> None:
    x, y = _data()
    model = _model()
    config = TrainConfig(epochs=10, batch_size=16, lr=0.05, patience=2)
    seen: list[tuple[int, dict[str, float]]] = []
    result = Trainer(config, on_epoch=lambda e, r: seen.append((e, r))).fit(
        model, feature_loader(x, y, batch_size=16, seed=0), _scripted([0.2, 0.6, 0.5, 0.6, 0.9])
    )
    assert result.stopped_early and result.best_epoch == 1 and result.best_metric == 0.6
    assert [e for e, _ in seen] == [0, 1, 2, 3] and len(result.history) == 4
    assert set(result.history[0]) == {"train_loss", "lr", "val_accuracy", "epoch_seconds"}
    assert seen[-1][1] == result.history[-1]
    assert _same_state(model.state_dict(), result.best_state, atol=0)
    assert result.final_loss == result.history[-1]["train_loss"]


def test_missing_metric_is_reported() -> None:
    x, y = _data(16)
    with pytest.raises(TrainingError, match="without the metric 'val_f1'"):
        Trainer(TrainConfig(epochs=1)).fit(
            _model(), feature_loader(x, y, batch_size=8, seed=0), _accuracy(x, y), metric="val_f1"
        )


def test_batches_of_manifest_datasets_and_empty_batches() -> None:
    x, y = _data(24)
    rows = torch.arange(24)
    no_rows = torch.empty(0, dtype=torch.int64)
    batches = [
        Batch(x[:12], y[:12], rows[:12], no_rows),
        Batch(x[:0], y[:0], no_rows, torch.tensor([3, 4])),  # every file of it was unreadable
        Batch(x[12:], y[12:], rows[12:], no_rows),
    ]
    loader = DataLoader(batches, batch_size=None)
    result = Trainer(TrainConfig(epochs=2, lr=0.05)).fit(_model(), loader, _accuracy(x, y))
    assert math.isfinite(result.final_loss) and len(result.history) == 2


def test_bf16_autocast_trains_on_cpu() -> None:
    x, y = _data()
    config = TrainConfig(epochs=3, batch_size=16, lr=0.05, precision="bf16")
    result = Trainer(config).fit(
        _model(), feature_loader(x, y, batch_size=16, seed=0), _accuracy(x, y)
    )
    losses = [record["train_loss"] for record in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


# ---------------------------------------------------------------- checkpoints and resume


class _InterruptedError(Exception):
    """Stands for the process being killed between two epochs."""


class _InterruptingSampler(EpochSampler):
    def __init__(self, *args: Any, stop_at: int | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_at = stop_at

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.stop_at:
            raise _InterruptedError
        super().set_epoch(epoch)


def _loader(kind: str, x: torch.Tensor, y: torch.Tensor, stop_at: int | None) -> DataLoader[Any]:
    if kind == "epoch_sampler":
        sampler = _InterruptingSampler(len(y), batch_size=16, seed=5, stop_at=stop_at)
        return DataLoader(TensorDataset(x, y), batch_sampler=sampler)

    class Dataset(TensorDataset):  # balanced draws from a sampler with its own generator
        def set_epoch(self, epoch: int) -> None:
            if epoch == stop_at:
                raise _InterruptedError

    sampler = weighted_sampler(y.tolist(), seed=5)
    generator = torch.Generator().manual_seed(7)
    return DataLoader(Dataset(x, y), batch_size=16, sampler=sampler, generator=generator)


@pytest.mark.parametrize("kind", ["epoch_sampler", "weighted_sampler"])
def test_resume_after_an_interruption_is_exact(kind: str, tmp_path: Path) -> None:
    x, y = _data()
    config = TrainConfig(
        epochs=4, batch_size=16, lr=0.05, warmup_ratio=0.3, accumulation=2, label_smoothing=0.1,
        grad_clip=0.5,
    )  # fmt: skip
    weights = torch.tensor([1.0, 1.5, 3.0])

    def trainer(directory: Path) -> Trainer:
        return Trainer(config, class_weights=weights, checkpoint_dir=directory)

    straight = _model(dropout=0.3)
    expected = trainer(tmp_path / "a").fit(straight, _loader(kind, x, y, None), _accuracy(x, y))

    with pytest.raises(_InterruptedError):
        trainer(tmp_path / "b").fit(
            _model(dropout=0.3), _loader(kind, x, y, 2), _accuracy(x, y), resume=True
        )
    saved = torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=True)
    assert saved["next_epoch"] == 2 and len(saved["history"]) == 2
    assert [p.name for p in (tmp_path / "b").iterdir()] == [CHECKPOINT_FILE]

    torch.manual_seed(123)  # the resumed process starts from other random states
    resumed_model = _model(seed=99, dropout=0.3)
    resumed = trainer(tmp_path / "b").fit(
        resumed_model, _loader(kind, x, y, None), _accuracy(x, y), resume=True
    )
    assert _same_state(resumed_model.state_dict(), straight.state_dict(), atol=1e-6)
    assert _same_state(resumed.best_state, expected.best_state, atol=1e-6)
    final = torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=True)
    reference = torch.load(tmp_path / "a" / CHECKPOINT_FILE, weights_only=True)
    assert _same_state(final["model"], reference["model"], atol=1e-6)
    assert [r["train_loss"] for r in resumed.history] == pytest.approx(
        [r["train_loss"] for r in expected.history], abs=1e-9
    )
    assert resumed.best_epoch == expected.best_epoch


def test_checkpoint_contents(tmp_path: Path) -> None:
    x, y = _data(32)
    Trainer(TrainConfig(epochs=2, batch_size=8), checkpoint_dir=tmp_path).fit(
        _model(), feature_loader(x, y, batch_size=8, seed=0), _scripted([0.5, 0.4])
    )
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert {
        "model", "optimizer", "scheduler", "scaler", "rng", "next_epoch", "global_step",
        "best_metric", "best_epoch", "best_state", "bad_epochs", "history", "config",
    } <= set(saved)  # fmt: skip
    assert saved["next_epoch"] == 2 and saved["global_step"] == 8
    assert saved["best_epoch"] == 0 and saved["best_metric"] == 0.5
    assert set(saved["rng"][0]) == {"python", "numpy", "torch", "generators"}
    assert set(saved["rng"][0]["generators"]) == {"loader"}
    assert set(saved["optimizer"]["state"]) == set(saved["model"])  # keyed by parameter name
    fresh = _model(seed=5)
    fresh.load_state_dict(saved["model"], strict=True)


def test_a_checkpoint_from_before_the_distributed_rename_resumes_as_unchanged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    x, y = _data(32)
    trainer = Trainer(TrainConfig(epochs=2, batch_size=8), checkpoint_dir=tmp_path)
    trainer.fit(_model(), feature_loader(x, y, batch_size=8, seed=0), _scripted([0.5, 0.7]))
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    saved["config"]["parallel"] = saved["config"].pop("distributed")  # the old key
    torch.save(saved, tmp_path / CHECKPOINT_FILE)
    with caplog.at_level("WARNING"):
        again = trainer.fit(
            _model(seed=4), feature_loader(x, y, batch_size=8, seed=0), _scripted([]), resume=True
        )
    assert again.best_epoch == 1 and "changed settings" not in caplog.text


def test_resume_of_a_finished_run_returns_at_once(tmp_path: Path) -> None:
    x, y = _data(32)
    trainer = Trainer(TrainConfig(epochs=2, batch_size=8), checkpoint_dir=tmp_path)
    first = trainer.fit(_model(), feature_loader(x, y, batch_size=8, seed=0), _scripted([0.5, 0.7]))
    again = trainer.fit(
        _model(seed=4), feature_loader(x, y, batch_size=8, seed=0), _scripted([]), resume=True
    )
    assert again.history == first.history and again.best_epoch == 1
    assert _same_state(again.best_state, first.best_state, atol=0)


def test_resume_without_a_checkpoint_starts_fresh(tmp_path: Path) -> None:
    x, y = _data(32)
    result = Trainer(TrainConfig(epochs=1, batch_size=8), checkpoint_dir=tmp_path).fit(
        _model(), feature_loader(x, y, batch_size=8, seed=0), _scripted([0.5]), resume=True
    )
    assert len(result.history) == 1 and (tmp_path / CHECKPOINT_FILE).is_file()
    with pytest.raises(TrainingError, match="checkpoint_dir"):
        Trainer(TrainConfig(epochs=1)).fit(
            _model(), feature_loader(x, y, batch_size=8, seed=0), _scripted([0.5]), resume=True
        )


# ---------------------------------------------------------------- distributed, single process


def test_without_torchrun_the_context_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed()
    assert context == local_context() and context.is_main and not context.distributed
    assert all_reduce_mean(torch.tensor(2.5), context) == 2.5
    assert broadcast_object({"a": 1}, context) == {"a": 1}
    assert gather_objects("x", context) == ["x"]
    crowd = DistContext(0, 2, 0, torch.device("cpu"), None)
    with pytest.raises(DistributedError, match="independent copies"):
        wrap_model(_model(), "none", crowd)
    for distributed in ("ddp", "fsdp"):
        with pytest.raises(DistributedError, match="torchrun --nproc_per_node"):
            wrap_model(_model(), distributed, context)  # type: ignore[arg-type]
    with pytest.raises(DistributedError, match="torchrun"):
        Trainer(TrainConfig(epochs=1, distributed="fsdp")).fit(
            _model(), feature_loader(*_data(8), batch_size=8, seed=0), _scripted([0.5])
        )


def test_encoder_blocks_are_the_vision_layers(tiny_backbone: Backbone) -> None:
    model = tiny_backbone.model
    blocks = encoder_blocks(model)
    assert [id(b) for b in blocks] == [id(b) for b in model.vision_model.encoder.layers]
    with_text = encoder_blocks(model, include_text=True)
    assert len(with_text) == len(blocks) + len(model.text_model.encoder.layers)
    assert [id(b) for b in encoder_blocks(tiny_backbone.image_encoder)] == [id(b) for b in blocks]
