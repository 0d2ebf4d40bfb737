"""``clip-har train``: fit a strategy on a split manifest and write a bundle."""

from __future__ import annotations

import shutil
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import (
    ProgressBar,
    console,
    drop_none,
    err_console,
    one_of,
    settings_from,
)
from clip_har.cli.outputs import (
    check_not_an_input,
    check_outputs_apart,
    force_option,
    manifest_inputs,
    output_option,
    prepare_output,
)
from clip_har.cli.train_embed import embed_command
from clip_har.config import DistributedMode
from clip_har.errors import ClipHarError, UsageError
from clip_har.io import write_json_atomic
from clip_har.training.strategies import STRATEGIES

if TYPE_CHECKING:  # the trainer pulls in torch.distributed: imported when training runs
    from clip_har.training.trainer import FitStatus

app = typer.Typer(
    help="Train heads on cached embeddings (or `train embed` to fill the cache).",
    invoke_without_command=True,
)
app.command("embed")(embed_command)


class FitDisplay:
    """Shows a trainer's :class:`FitStatus` on a :class:`ProgressBar`: an ``epochs`` row
    (epoch, the last train loss and val accuracy, time left) and, within epochs longer than
    the bar's threshold, a ``batches`` row."""

    def __init__(self, bar: ProgressBar) -> None:
        self._bar = bar
        self._scores = ""

    def __call__(self, status: FitStatus) -> None:
        if status.stage == "epoch":
            accuracy = status.metrics.get("val_accuracy")
            self._scores = f" · loss {status.train_loss:.3f}" + (
                "" if accuracy is None else f" · val acc {accuracy:.3f}"
            )
        self._bar.update(
            status.fraction * status.epochs,
            status.epochs,
            row="epochs",
            description=f"epoch {status.epoch}/{status.epochs}{self._scores}",
            count="",
            threshold=0,
        )
        self._bar.update(
            status.batch,
            status.batches,
            row="batches",
            description="validating" if status.stage == "validate" else "batches",
        )


@app.callback(
    epilog="Strategies:\n\n"
    + "\n\n".join(f"{spec.name}: {spec.summary}" for spec in STRATEGIES.values())
)
def train(
    ctx: typer.Context,
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Split manifest folder (from `clip-har data split`)."
    ),
    output: Path | None = output_option(None, kind="dir", help="Bundle directory to write."),
    strategy: str | None = typer.Option(
        None,
        "--strategy",
        "-s",
        parser=one_of(list(STRATEGIES)),
        metavar="NAME",
        help="A strategy listed below (default: params train.strategy).",
    ),
    model: str | None = typer.Option(None, "--model", "-m", help="Hub id, folder or preset."),
    prompts: str | None = typer.Option(None, "--prompts", help="Prompt set name or YAML file."),
    epochs: int | None = typer.Option(None, "--epochs", min=1),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    lr: float | None = typer.Option(None, "--lr", min=0.0),
    seed: int | None = typer.Option(None, "--seed", min=0),
    precision: str | None = typer.Option(None, "--precision", help="fp32, bf16 or fp16 (CUDA)."),
    balance: str | None = typer.Option(None, "--balance", help="none or weights."),
    select_prompts: bool | None = typer.Option(
        None, "--select-prompts/--all-prompts", help="zero-shot: choose templates on val."
    ),
    blocks: int | None = typer.Option(None, "--blocks", min=1, help="partial: blocks to train."),
    lora_rank: int | None = typer.Option(None, "--lora-rank", min=1, help="lora: adapter rank."),
    augment: str | None = typer.Option(
        None, "--augment", help="End-to-end: none, light or strong augmentation."
    ),
    workers: int | None = typer.Option(None, "--workers", min=0, help="Image-loading processes."),
    distributed: str | None = typer.Option(
        None,
        "--distributed",
        help=f"{', '.join(get_args(DistributedMode))}; ddp and fsdp run under "
        "`torchrun --nproc_per_node N -m clip_har.cli train`.",
    ),
    checkpoint_dir: Path | None = output_option(
        None,
        "--checkpoint-dir",
        kind="dir",
        help="Save a checkpoint every epoch here (gradient strategies); --resume reads it.",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from --checkpoint-dir."),
    tracking: str | None = typer.Option(
        None, "--tracking", help="Comma-separated: mlflow, wandb, none."
    ),
    strict_tracking: bool = typer.Option(
        False, "--strict-tracking", help="Fail when a tracking backend fails (default: warn)."
    ),
    metrics_file: Path | None = output_option(
        None,
        "--metrics",
        kind="file",
        help="Also write the run's metrics as JSON (for `dvc metrics show`).",
    ),
    force: bool = force_option(),
) -> None:
    """Train --strategy on --data and write the bundle to --output (values default to
    params.yaml's `train` section)."""
    if ctx.invoked_subcommand is not None:
        return
    if data is None or output is None:
        raise UsageError("clip-har train needs --data DIR and --output BUNDLE (or `train embed`)")
    settings = settings_from(
        ctx,
        {
            "model": drop_none({"spec": model}),
            "prompts": drop_none({"set": prompts}),
            "train": drop_none(
                {
                    "strategy": strategy,
                    "epochs": epochs,
                    "batch_size": batch_size,
                    "lr": lr,
                    "seed": seed,
                    "precision": precision,
                    "balance": balance,
                    "select_prompts": select_prompts,
                    "blocks": blocks,
                    "lora_rank": lora_rank,
                    "augment": augment,
                    "workers": workers,
                    "distributed": distributed,
                    "tracking": tracking,
                }
            ),
        },
    )
    if resume and checkpoint_dir is None:
        raise UsageError("--resume needs --checkpoint-dir")
    check_outputs_apart(
        {"--output": output, "--checkpoint-dir": checkpoint_dir, "--metrics": metrics_file}
    )
    read = [*manifest_inputs(data), model, prompts]
    prepare_output(output, kind="dir", inputs=read, force=force)
    prepare_output(metrics_file, suffixes=(".json",), inputs=read, force=force, option="--metrics")
    if resume:  # read back, never replaced: it must hold what it resumes
        assert checkpoint_dir is not None
        check_not_an_input(checkpoint_dir, kind="dir", inputs=read, option="--checkpoint-dir")
    elif prepare_output(  # started afresh
        checkpoint_dir, kind="dir", inputs=read, force=force, option="--checkpoint-dir"
    ):
        assert checkpoint_dir is not None
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # no stale checkpoint survives
    # torch, sklearn and peft load only when training
    from clip_har.training.distributed import cleanup, init_distributed, launch_rank, local_context
    from clip_har.training.run import run_training
    from clip_har.training.trainer import CHECKPOINT_FILE, has_checkpoint

    if resume and launch_rank() == 0:  # rank 0 alone reads and writes checkpoints
        assert checkpoint_dir is not None
        if not has_checkpoint(checkpoint_dir):
            found = "holds no" if checkpoint_dir.is_dir() else "does not exist, so it holds no"
            raise ClipHarError(
                f"--checkpoint-dir {checkpoint_dir} {found} checkpoint ({CHECKPOINT_FILE}) "
                "to resume from; drop --resume to start a fresh run"
            )

    distributed_run = settings.train.distributed != "none"
    dist = init_distributed() if distributed_run else local_context()
    # a spinner through the steps without a count: loading, fitting without epochs, saving
    working: AbstractContextManager[object] = (
        err_console.status(f"training {settings.train.strategy}") if dist.is_main else nullcontext()
    )
    try:
        with working, ProgressBar("embedding") as bar:
            outcome = run_training(
                settings,
                data,
                output,
                strict_tracking=strict_tracking,
                overwrite=True,  # prepare_output has refused it without --force
                progress=bar if dist.is_main else None,
                fit_progress=FitDisplay(bar) if dist.is_main else None,
                dist=dist,
                checkpoint_dir=checkpoint_dir,
                resume=resume,
            )
    finally:
        if distributed_run:
            cleanup()
    if outcome.bundle is None:  # not rank 0
        return
    table = Table(title=escape(settings.train.strategy))
    table.add_column("", no_wrap=True)
    table.add_column("value", justify="right", overflow="fold")
    flagged = outcome.bundle.manifest.backbone.random_weights  # shown as evaluate shows it
    table.add_row(
        "backbone",
        f"[red]{escape(outcome.backbone)}[/red]" if flagged else escape(outcome.backbone),
    )
    table.add_row("zero-shot val accuracy", f"{outcome.zero_shot_accuracy:.4f}")
    table.add_row("trained val accuracy", f"[bold]{outcome.result.val_accuracy:.4f}[/bold]")
    for key, value in outcome.result.chosen.items():
        table.add_row(f"chosen {escape(key)}", f"{value:g}")
    stats = outcome.embedding
    table.add_row("images encoded / reused", f"{stats.encoded} / {stats.reused}")
    if stats.skipped:
        table.add_row("[yellow]unreadable, skipped[/yellow]", str(stats.skipped))
    console.print(table)
    if metrics_file is not None:
        write_json_atomic(metrics_file, outcome.bundle.manifest.metrics, sort_keys=True)
    err_console.print(
        f"wrote bundle {escape(str(outcome.bundle.directory))}"
        + (f" (run {escape(outcome.run_id)})" if outcome.run_id else "")
    )
