"""``torchrun --nproc_per_node 2`` on CPU (gloo): DDP and FSDP match one process.

The worker (``torchrun_worker.py``) trains the tiny CLIP vision tower + a linear head with
the same seed, data and global batch as the single-process run here; the losses must agree,
and the checkpoints rank 0 consolidated must load into a plain model in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import free_port
from torchrun_worker import CONFIG, build_model, make_data, progress

from clip_har.models.backbone import Backbone
from clip_har.training.trainer import CHECKPOINT_FILE, FitResult, Trainer, feature_loader

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = Path(__file__).with_name("torchrun_worker.py")
Reference = tuple[FitResult, dict[str, torch.Tensor], torch.Tensor]  # result, state, probe logits


@pytest.fixture(scope="module")
def torchrun_out(
    tiny_backbone: Backbone, clip_har_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Run the worker once under torchrun with 2 CPU processes."""
    out = tmp_path_factory.mktemp("torchrun")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "1",
        "CLIP_HAR_CACHE": str(clip_har_cache),
        "CUDA_VISIBLE_DEVICES": "",  # gloo on CPU, as on the machines CI has
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(WORKER), str(out), str(clip_har_cache),
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out


@pytest.fixture(scope="module")
def single(
    tiny_backbone: Backbone, clip_har_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    """The same training in this one process: final loss, weights and probe logits."""
    pixels, labels, probe = make_data()
    model = build_model(clip_har_cache)
    config = replace(CONFIG, distributed="none")
    directory = tmp_path_factory.mktemp("single")
    loader = feature_loader(pixels, labels, batch_size=config.batch_size, seed=config.seed)
    result = Trainer(config, checkpoint_dir=directory).fit(
        model, loader, progress(), metric="progress"
    )
    with torch.no_grad():
        logits = model.eval()(probe)
    return result, model.state_dict(), logits


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_final_loss_matches_one_process(
    distributed: str, torchrun_out: Path, single: Reference
) -> None:
    reference = single[0]
    summary = json.loads((torchrun_out / distributed / "result.json").read_text())
    assert summary["final_loss"] == pytest.approx(reference.final_loss, rel=1e-3)
    assert summary["best_epoch"] == reference.best_epoch == CONFIG.epochs - 1


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_checkpoint_loads_in_one_process(
    distributed: str,
    torchrun_out: Path,
    single,
    clip_har_cache: Path,  # type: ignore[no-untyped-def]
) -> None:
    _, reference_state, reference_logits = single
    saved = torch.load(torchrun_out / distributed / CHECKPOINT_FILE, weights_only=True)
    assert saved["world_size"] == 2 and saved["next_epoch"] == CONFIG.epochs
    assert len(saved["rng"]) == 2
    model = build_model(clip_har_cache)
    model.load_state_dict(saved["model"], strict=True)
    assert all(type(v) is torch.Tensor for v in saved["model"].values())  # no DTensor shards
    with torch.no_grad():
        logits = model.eval()(make_data()[2])
    distributed_logits = torch.load(torchrun_out / distributed / "probe.pt", weights_only=True)
    torch.testing.assert_close(logits, distributed_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, reference_logits, atol=2e-3, rtol=1e-3)
    for name, value in reference_state.items():
        torch.testing.assert_close(saved["model"][name], value, atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("distributed", ["ddp", "fsdp"])
def test_resume_after_an_interruption_is_exact(distributed: str, torchrun_out: Path) -> None:
    straight = torch.load(torchrun_out / distributed / CHECKPOINT_FILE, weights_only=True)
    resumed = torch.load(
        torchrun_out / f"{distributed}_resumed" / CHECKPOINT_FILE, weights_only=True
    )
    assert [r["train_loss"] for r in resumed["history"]] == pytest.approx(
        [r["train_loss"] for r in straight["history"]], abs=1e-6
    )
    for name, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, atol=1e-6, rtol=0)
    assert (
        json.loads((torchrun_out / f"{distributed}_resumed" / "result.json").read_text())[
            "best_epoch"
        ]
        == 2
    )
    torch.testing.assert_close(
        torch.load(torchrun_out / f"{distributed}_resumed" / "probe.pt", weights_only=True),
        torch.load(torchrun_out / distributed / "probe.pt", weights_only=True),
        atol=1e-6,
        rtol=0,
    )
