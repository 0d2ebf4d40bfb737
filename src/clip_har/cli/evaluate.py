"""``clip-har evaluate``: metrics, plots and reports for a bundle; ``evaluate compare``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import (
    ProgressBar,
    bundle_option,
    chosen_format,
    console,
    drop_none,
    err_console,
    given,
    model_format_option,
    settings_from,
)
from clip_har.cli.outputs import force_option, manifest_inputs, output_option, prepare_output
from clip_har.errors import UsageError
from clip_har.evaluation import BOOTSTRAP_RESAMPLES, MAX_BOOTSTRAP_RESAMPLES
from clip_har.io import publish_directory

app = typer.Typer(
    help="Evaluate a bundle on a manifest (or `evaluate compare` evaluations).",
    invoke_without_command=True,
)


@app.callback()
def evaluate(
    ctx: typer.Context,
    bundle: str | None = bundle_option(),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Manifest folder (from data import|validate|split)."
    ),
    split: str | None = typer.Option(
        None,
        "--split",
        help="Split to evaluate, or 'all' (default: test; every row of a manifest without "
        "splits, where naming a split is an error).",
    ),
    format: str = model_format_option(),
    output: Path | None = output_option(None, kind="dir", help="Folder for the results."),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Images per forward pass (default: params predict.batch_size).",
    ),
    bootstrap: int = typer.Option(
        BOOTSTRAP_RESAMPLES,
        "--bootstrap",
        min=0,
        max=MAX_BOOTSTRAP_RESAMPLES,
        help="Bootstrap resamples.",
    ),
    seed: int = typer.Option(0, "--seed", min=0),
    tracking: str | None = typer.Option(
        None, "--tracking", help="mlflow, wandb, none, or a,b (default: params train.tracking)."
    ),
    force: bool = force_option(),
) -> None:
    """Predict every image of --data with --bundle; write metrics.json, predictions.csv,
    report.html, report.md and the plots to --output. Images are read with the same
    guards as `predict` (params data.min_image_side and data.max_image_pixels)."""
    if ctx.invoked_subcommand is not None:
        return
    if bundle is None or data is None or output is None:
        raise UsageError("clip-har evaluate needs --bundle, --data and --output")
    from clip_har.evaluation.run import evaluate as run_evaluation
    from clip_har.inference.predictor import PredictOptions
    from clip_har.registry.resolve import resolve_registered
    from clip_har.tracking import create_tracker

    settings = settings_from(ctx, {"train": drop_none({"tracking": tracking})})
    resolved = resolve_registered(bundle, cache_dir=settings.cache_dir)
    folder = resolved.path  # a models:/ version runs the format it serves unless --format says
    format = chosen_format(resolved, bundle, format, given(ctx, "format"))
    prepare_output(output, kind="dir", inputs=[folder, *manifest_inputs(data)], force=force)
    tracker = create_tracker(
        settings.train.tracking,
        experiment=settings.train.experiment,
        root=Path.cwd(),
    )
    working = err_console.status(f"evaluating {escape(str(bundle))}")  # loading, then scoring
    with tracker, working, ProgressBar("predicting") as bar, publish_directory(output) as staging:
        tracker.start(
            f"evaluate-{Path(bundle).name}",
            params=drop_none(
                {"bundle": bundle, "data": str(data), "split": split, "format": format}
            ),
            tags={},
        )
        outcome = run_evaluation(
            str(folder),
            data,
            staging,
            split=split,
            format=format,
            options=PredictOptions.from_settings(settings, batch_size=batch_size),
            n_bootstrap=bootstrap,
            seed=seed,
            progress=bar,
            tracker=tracker,
        )
    metrics, source = outcome.metrics, outcome.source
    table = Table(title=escape(source.title))
    table.add_column("", no_wrap=True)
    table.add_column("value", justify="right", overflow="fold")
    for field, value in source.rows():
        flagged = field == "backbone" and source.random_weights
        table.add_row(field, f"[red]{escape(value)}[/red]" if flagged else escape(value))
    table.add_section()

    def with_ci(value: float, ci: list[float] | None) -> str:
        return f"{value:.4f}" + ("" if ci is None else f" [{ci[0]:.4f}, {ci[1]:.4f}]")

    table.add_row("accuracy [95% CI]", with_ci(metrics["accuracy"], metrics["accuracy_ci"]))
    table.add_row("macro-F1 [95% CI]", with_ci(metrics["macro"]["f1"], metrics["f1_macro_ci"]))
    table.add_row("balanced accuracy", f"{metrics['balanced_accuracy']:.4f}")
    table.add_row("ECE", f"{metrics['ece']:.4f}")
    table.add_row("images / s", f"{outcome.images_per_second:.1f}")
    if outcome.unreadable:
        table.add_row("[yellow]unreadable[/yellow]", str(outcome.unreadable))
    for label, count in outcome.unknown_labels.items():
        table.add_row(f"[yellow]unknown label {escape(str(label))}[/yellow]", str(count))
    console.print(table)  # a random-weight backbone was also logged as a warning
    for key in ("classes_without_support", "predicted_but_absent"):
        if metrics[key]:
            err_console.print(
                f"[yellow]{key.replace('_', ' ')}:[/yellow] {', '.join(metrics[key])}"
            )
    err_console.print(f"wrote {escape(str(output))}/ (report.html, metrics.json, predictions.csv)")


_WHOLE = {"accuracy", "McNemar p", "n", "strategy", "rows"}  # compare's unwrapped columns


@app.command("compare")
def compare(
    evaluations: list[str] = typer.Argument(
        ...,
        metavar="EVALUATIONS...",
        help="Evaluation folders or MLflow run ids; the first is the baseline.",
    ),
    output: Path = output_option(kind="dir", help="Folder for compare.{json,md,html}."),
    bootstrap: int = typer.Option(
        BOOTSTRAP_RESAMPLES, "--bootstrap", min=0, max=MAX_BOOTSTRAP_RESAMPLES
    ),
    seed: int = typer.Option(0, "--seed", min=0),
    force: bool = force_option(),
) -> None:
    """Side-by-side table, delta plot, McNemar test and paired bootstrap CIs."""
    from clip_har.evaluation.compare_runs import (
        HEADERS,
        SOURCE_HEADERS,
        compare_evaluations,
        source_rows,
        table_rows,
    )

    if len(evaluations) < 2:
        raise UsageError(
            f"evaluate compare needs at least two evaluations (a baseline and one to compare "
            f"with it), got {len(evaluations)}"
        )
    prepare_output(output, kind="dir", inputs=evaluations, force=force)
    comparing = err_console.status(f"comparing {len(evaluations)} evaluations")
    with comparing, publish_directory(output) as staging:
        report = compare_evaluations(evaluations, staging, n_bootstrap=bootstrap, seed=seed)
    table = Table(title=escape(f"vs {report['baseline']}"))
    for header in HEADERS:  # names and numbers whole; paths and intervals may wrap
        table.add_column(header, no_wrap=header in _WHOLE, overflow="fold")
    for cells in table_rows(report["comparisons"]):
        table.add_row(*(escape(c) for c in cells))
    console.print(table)
    sources = Table(title="sources")
    for header in SOURCE_HEADERS:
        sources.add_column(header, no_wrap=header in _WHOLE, overflow="fold")
    for cells in source_rows(report["sources"]):
        sources.add_row(*(escape(c) for c in cells))
    console.print(sources)
    for note in report["warnings"]:
        err_console.print(f"[yellow]warning:[/yellow] {escape(note)}")
    err_console.print(f"wrote {escape(str(output))}/compare.{{json,md,html}}, compare_delta.png")
