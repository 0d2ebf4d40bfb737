"""``clip-har benchmark``: every exported format of a bundle, timed side by side."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import typer
from rich.markup import escape

from clip_har.cli.common import ProgressBar, err_console, settings_from
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.config import split_commas
from clip_har.devices import DEVICE_NAMES, parse_device
from clip_har.errors import ClipHarError, UsageError
from clip_har.inference.formats import REFERENCE_FORMAT, engine_formats
from clip_har.io import publish_directory
from clip_har.registry.resolve import resolve_bundle
from clip_har.registry.store import is_model_uri


def benchmark(
    ctx: typer.Context,
    reference: str = typer.Argument(
        ...,
        metavar="BUNDLE",
        help="Bundle directory, or a registered version (models:/NAME@ALIAS or "
        "models:/NAME/VERSION; then --output is required).",
    ),
    formats: str | None = typer.Option(
        None,
        "--formats",
        help=f"Comma-separated, of {', '.join(engine_formats())} (default: torch + every "
        "format the bundle has exported).",
    ),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma-separated sizes."),
    data: Path | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Photos to time on (a folder or a data manifest); default: seeded synthetic images.",
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="Intra-op threads for every engine (default: all usable)."
    ),
    device: str = typer.Option("cpu", "--device", help=f"{DEVICE_NAMES}."),
    output: Path | None = output_option(
        None,
        kind="dir",
        help="Folder for the results (default: BUNDLE/exports/benchmark, refreshed each run).",
    ),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed batches per format and size."),
    min_iterations: int = typer.Option(
        5, "--min-iterations", min=1, help="Timed batches per format and size, at least."
    ),
    min_seconds: float = typer.Option(
        3.0, "--min-seconds", min=0.0, help="Timed seconds per format and size, at least."
    ),
    max_seconds: float = typer.Option(
        90.0,
        "--max-seconds",
        min=0.0,
        help="Seconds for all warm-up and timing (loading and memory probes come on top); "
        "rows it stops before their minimums are marked cut short.",
    ),
    memory: bool = typer.Option(
        True, "--memory/--no-memory", help="Measure peak RSS per format (a child process each)."
    ),
    ignore_parity: bool = typer.Option(
        False,
        "--ignore-parity",
        help="Also run exports that failed (or never ran) their parity gate.",
    ),
    force: bool = force_option(),
    tracking: str = typer.Option(
        "none", "--tracking", help="Comma-separated: mlflow, wandb, none."
    ),
    strict_tracking: bool = typer.Option(
        False, "--strict-tracking", help="Fail when a tracking backend fails (default: warn)."
    ),
) -> None:
    """Latency p50/p90/p99, throughput, peak memory, file size, parity and energy per image of
    each format x batch size; writes benchmark.json, benchmark.md and benchmark.png."""
    from clip_har.export.benchmark import (
        BenchmarkConfig,
        check_formats,
        markdown_table,
        parse_batch_sizes,
        run_benchmark,
    )
    from clip_har.models.bundle import open_bundle
    from clip_har.tracking import create_tracker

    device = str(parse_device(device))
    sizes = parse_batch_sizes(batch_sizes)  # usage errors before any work
    chosen = None if formats is None else check_formats(split_commas(formats))
    if data is not None and not data.exists():
        raise ClipHarError(f"--data {data}: no such file or folder")
    if is_model_uri(reference) and output is None:
        raise UsageError(
            f"{reference} is a registered version, kept verified in the cache: write the "
            "results elsewhere with --output DIR"
        )
    settings = settings_from(ctx)
    bundle = resolve_bundle(reference, cache_dir=settings.cache_dir)
    prepare_output(output, kind="dir", inputs=[bundle, data], force=force)
    opened = open_bundle(bundle)
    if chosen is None:
        exported = [name for name in opened.manifest.exports if name in engine_formats()]
        chosen = (REFERENCE_FORMAT, *exported)
    config = BenchmarkConfig(
        formats=chosen,
        batch_sizes=sizes,
        threads=threads,
        warmup=warmup,
        min_iterations=min_iterations,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        device=device,
        data=data,
        ignore_parity=ignore_parity,
        measure_memory=memory,
    )
    target = output if output is not None else opened.directory / "exports" / "benchmark"
    tracker = create_tracker(
        split_commas(tracking),
        experiment=settings.train.experiment,
        strict=strict_tracking,
        root=Path.cwd(),
    )
    # an explicit --output appears complete, or not at all; the bundle's own folder is
    # refreshed in place, like its exports
    folder: AbstractContextManager[Path] = (
        nullcontext(target) if output is None else publish_directory(output)
    )
    with tracker, ProgressBar("benchmarking") as bar, folder as written:
        tracker.start(
            f"benchmark-{opened.manifest.name}",
            params={"bundle": str(opened.directory), **config.to_dict()},
            tags={"kind": "benchmark"},
        )
        result = run_benchmark(opened, config, written, progress=bar, tracker=tracker)
        if not result.rows:
            reasons = "; ".join(f"{name}: {why}" for name, why in result.skipped.items())
            raise ClipHarError(f"no format could be benchmarked ({reasons})")
    typer.echo(markdown_table(result.rows), nl=False)
    for name, reason in result.skipped.items():
        err_console.print(f"[yellow]skipped {escape(name)}:[/yellow] {escape(reason)}")
    energy = result.payload["energy"]
    if not energy["available"]:
        err_console.print(f"energy per image unavailable: {escape(str(energy['reason']))}")
    err_console.print(f"wrote {escape(str(target))}/ (benchmark.json, benchmark.md, benchmark.png)")
