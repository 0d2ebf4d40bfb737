"""Progress on long work (issue 13, defect 8): the trainer reports every batch and epoch
through a callback (no rich in the library), and the CLI renders it, and other long steps,
on stderr only."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo
from PIL import Image
from typer.testing import CliRunner

from clip_har.cli.common import ProgressBar
from clip_har.cli.main import app
from clip_har.cli.train import FitDisplay
from clip_har.config import load_settings
from clip_har.data.manifest import write_manifest
from clip_har.data.sources import import_source
from clip_har.data.splits import split_manifest
from clip_har.training.run import run_training
from clip_har.training.trainer import FitStatus, TrainConfig, Trainer, feature_loader

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make rich treat stderr as an interactive terminal, wide enough for one line a row."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "160")


def _plain(text: str) -> str:
    return _ANSI.sub("", text).replace("\r", "\n")


def _split(root: Path, per_class: int = 3) -> Path:
    for c, label in enumerate(("running", "eating")):
        (root / "photos" / label).mkdir(parents=True)
        for i in range(per_class):
            make_photo(root / "photos" / label / f"{i}.png", size=(48, 40 + c), seed=10 * c + i)
    manifest = import_source(str(root / "photos"), workers=1)
    split = split_manifest(manifest, (0.5, 0.5, 0.0), seed=0, near_distance=0)
    return write_manifest(split.manifest, root / "split").parent


def _check_epochs(statuses: list[FitStatus], epochs: int, batches: int) -> None:
    """Each epoch: batches 0..N while training, then validate, then a scored epoch."""
    assert [s.epoch for s in statuses if s.stage == "epoch"] == list(range(1, epochs + 1))
    for epoch in range(1, epochs + 1):
        mine = [s for s in statuses if s.epoch == epoch]
        assert [s.stage for s in mine] == ["train"] * (batches + 1) + ["validate", "epoch"]
        assert [s.batch for s in mine if s.stage == "train"] == list(range(batches + 1))
        scored = mine[-1]
        assert scored.epochs == epochs and scored.batches == batches
        assert scored.train_loss is not None and math.isfinite(scored.train_loss)
        assert 0.0 <= scored.metrics["val_accuracy"] <= 1.0
    fractions = [s.fraction for s in statuses]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # what the time left uses


def test_end_to_end_training_reports_epoch_loss_accuracy_and_time_left(
    tmp_path: Path, clip_har_cache: Path
) -> None:
    """``partial`` on the tiny preset: the callback sees every batch and each epoch's
    train loss and val accuracy (it used to see nothing: only ``-v`` logged them)."""
    split = _split(tmp_path)
    train = {"strategy": "partial", "blocks": 1, "epochs": 2, "batch_size": 2}
    settings = load_settings(
        None,
        {
            "cache_dir": str(clip_har_cache),
            "model": {"spec": "tiny"},
            "prompts": {"set": "minimal"},
            "train": train | {"tracking": "none", "workers": 0},
        },
    )
    statuses: list[FitStatus] = []
    outcome = run_training(settings, split, tmp_path / "bundle", fit_progress=statuses.append)
    assert outcome.bundle is not None and outcome.result.fit is not None
    train_images = int(outcome.bundle.manifest.metrics["train_images"])
    _check_epochs(statuses, epochs=2, batches=math.ceil(train_images / 2))
    final = [s for s in statuses if s.stage == "epoch"][-1]
    assert final.train_loss == pytest.approx(outcome.result.fit.history[-1]["train_loss"])
    assert final.metrics["val_accuracy"] == outcome.result.fit.history[-1]["val_accuracy"]


def test_head_training_on_cached_features_reports_every_batch_and_epoch() -> None:
    """The same callback for heads trained on cached features (zs-init-linear & co)."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 8, generator=generator)
    labels = (features[:, 0] > 0).long()
    loader = feature_loader(features, labels, batch_size=4, seed=0)
    statuses: list[FitStatus] = []
    trainer = Trainer(TrainConfig(epochs=3, batch_size=4, lr=0.1), progress=statuses.append)
    head = torch.nn.Linear(8, 2)

    def validate(model: torch.nn.Module) -> dict[str, float]:
        return {"val_accuracy": float((model(features).argmax(-1) == labels).float().mean())}

    result = trainer.fit(head, loader, validate)
    _check_epochs(statuses, epochs=3, batches=10)
    scored = [s for s in statuses if s.stage == "epoch"]
    assert [s.metrics["val_accuracy"] for s in scored] == [
        record["val_accuracy"] for record in result.history
    ]


def _status(epoch: int, batch: int, stage: str, loss: float | None = None) -> FitStatus:
    metrics = {"val_accuracy": 0.75} if stage == "epoch" else {}
    return FitStatus(epoch, 2, batch, 12, stage, loss, metrics)  # type: ignore[arg-type]


def test_training_display_shows_epoch_loss_accuracy_and_time_left_on_stderr(
    terminal: None, capsys: pytest.CaptureFixture[str]
) -> None:
    statuses = [_status(1, b, "train") for b in range(13)]
    statuses += [_status(1, 12, "validate", 0.5), _status(1, 12, "epoch", 0.5)]
    statuses += [_status(2, b, "train") for b in range(13)]
    statuses += [_status(2, 12, "validate", 0.25), _status(2, 12, "epoch", 0.25)]
    with ProgressBar("embedding") as bar:
        display = FitDisplay(bar)
        for status in statuses:
            display(status)
    out, err = capsys.readouterr()
    assert out == ""  # progress never goes to stdout
    screen = _plain(err)
    assert "epoch 2/2 · loss 0.250 · val acc 0.750" in screen
    assert "ETA" in screen and re.search(r"ETA \d+:\d\d:\d\d", screen)
    assert re.search(r"batches .*12/12", screen)  # the per-batch row of long epochs
    assert "\x1b[" in err  # rendered live, for a terminal


def test_progress_bar_rows_keep_short_work_quiet_and_restart_each_round(
    terminal: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with ProgressBar("reading") as bar:
        bar(3, 3)  # at most the threshold: no bar for short work
        for epoch in range(2):
            for done in range(0, 21, 5):
                bar.update(done, 20, row="round", description=f"round {epoch + 1}")
    screen = _plain(capsys.readouterr().err)
    assert "reading" not in screen
    assert "round 2" in screen and "20/20" in screen


def test_preview_augment_shows_progress_before_its_slow_steps(
    tmp_path: Path, terminal: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to be silent for half a minute: images load, copies augment, the grid draws."""
    (tmp_path / "photos" / "running").mkdir(parents=True)
    for i in range(2):
        make_photo(tmp_path / "photos" / "running" / f"{i}.png", seed=i)
    write_manifest(import_source(str(tmp_path / "photos"), workers=1), tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    args = ["data", "preview-augment", "m", "-o", "grid.png", "--images", "2", "--copies", "2"]
    done = CliRunner().invoke(app, [*args, "--size", "32", "--policy", "light"])
    assert done.exit_code == 0, done.output
    screen = _plain(done.stderr)
    assert re.search(r"loading images .*2/2", screen)
    assert re.search(r"augmenting .*4/4", screen)
    assert np.asarray(Image.open(tmp_path / "grid.png")).ndim == 3
    assert "augmenting" not in done.stdout


def test_export_names_each_format_and_its_parity_check_as_it_goes(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    from clip_har.export.run import copy_bundle, export_bundle

    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    steps: list[tuple[str, int, int]] = []
    summary = export_bundle(bundle, ["onnx"], progress=lambda *step: steps.append(step))
    assert not summary.failures
    assert steps[0] == ("onnx", 0, 1) and steps[-1] == ("done", 1, 1)
    assert any(name.startswith("onnx (parity check on ") for name, _, _ in steps)
