"""``clip-har predict``: label images, folders and globs with a bundle or a model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from clip_har.cli.common import (
    EXIT_PARTIAL,
    ProgressBar,
    bundle_option,
    chosen_format,
    console,
    drop_none,
    err_console,
    given,
    model_format_option,
    precision_option,
    settings_from,
)
from clip_har.cli.output import RENDERERS, Rendering, to_csv, to_json, to_table, write_results
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.config import Settings
from clip_har.errors import ClipHarError, UsageError
from clip_har.inference.engines import EngineOptions
from clip_har.inference.formats import REFERENCE_FORMAT
from clip_har.inference.inputs import CollectedInputs, collect_inputs
from clip_har.inference.predictor import FileResult, PredictOptions, Predictor
from clip_har.io import plural
from clip_har.models.prompts import load_prompt_set, parse_class_names, resolve_class_names
from clip_har.registry.resolve import resolve_registered


def predict(
    ctx: typer.Context,
    inputs: list[str] = typer.Argument(
        ..., metavar="IMAGES...", help="Image files, folders or glob patterns."
    ),
    bundle: str | None = bundle_option(),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Hub id, local directory or preset (zero-shot, no bundle)."
    ),
    labels: str | None = typer.Option(
        None, "--labels", "-l", help='Open-vocabulary labels, comma separated: "running,eating".'
    ),
    prompts: str | None = typer.Option(None, "--prompts", help="Prompt set name or YAML file."),
    top_k: int | None = typer.Option(None, "--top-k", "-k", min=1, help="Labels per image."),
    print_as: Rendering = typer.Option(
        Rendering.table, "--print", help="How to print the results on stdout."
    ),
    output: Path | None = output_option(
        None, kind="file", help="Also write results to a .csv or .json file."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    model_format: str = model_format_option(),
    precision: str = precision_option(),
    ignore_parity: bool = typer.Option(
        False, "--ignore-parity", help="Use an export even if it failed its parity gate."
    ),
    force: bool = force_option(),
    skip_errors: bool = typer.Option(
        False, "--skip-errors", help="Exit 0 even when some files could not be read."
    ),
) -> None:
    """Predict the action in each image. Exit code 3 when some inputs failed, 1 when all did."""
    if bundle is not None and model is not None:
        raise UsageError("use either --bundle or --model, not both")
    if model_format != REFERENCE_FORMAT and bundle is None:
        raise UsageError(f"--format {model_format} runs a bundle's export: pass --bundle")
    settings = settings_from(
        ctx, {"predict": drop_none({"top_k": top_k, "batch_size": batch_size})}
    )
    collected = collect_inputs(inputs)
    folder = None
    if bundle is not None:  # a models:/ version runs the format it serves unless --format says
        resolved = resolve_registered(bundle, cache_dir=settings.cache_dir)
        folder = resolved.path
        model_format = chosen_format(resolved, bundle, model_format, given(ctx, "model_format"))
    read = [*inputs, *collected.paths, folder, model, prompts]
    prepare_output(output, suffixes=tuple(RENDERERS), inputs=read, force=force)

    if collected.paths:
        engine = EngineOptions(force=ignore_parity, precision=precision)
        predictor = _make_predictor(settings, folder, model, labels, prompts, engine, model_format)
        results = _run(predictor, collected)
        title = f"{plural(len(results), 'image')} — model: {predictor.model_label}"
    else:  # nothing to predict: every input gets its error row without loading a model
        results = [FileResult.for_problem(problem) for problem in collected.problems]
        title = plural(len(results), "image")

    title = escape(title)
    if print_as is Rendering.table:
        console.print(to_table(results, title))
    else:
        renderer = to_json if print_as is Rendering.json else to_csv
        typer.echo(renderer(results), nl=False)
    if output is not None:
        write_results(output, results)
        err_console.print(f"wrote {output}")

    failed = [r for r in results if r.error is not None]
    for result in failed:
        err_console.print(f"[red]✗[/red] {escape(f'{result.path}: {result.error}')}")
    err_console.print(
        f"predicted {len(results) - len(failed)} of {plural(len(results), 'image')}"
        + (f", [red]{len(failed)} failed[/red]" if failed else "")
    )
    if len(failed) == len(results):
        raise ClipHarError(
            "no input images found"
            if not collected.paths
            else f"no image could be read ({plural(len(failed), 'input')} failed)"
        )
    if failed and not skip_errors:
        raise typer.Exit(EXIT_PARTIAL)


def _make_predictor(
    settings: Settings,
    bundle: Path | None,
    model: str | None,
    labels: str | None,
    prompts: str | None,
    engine_options: EngineOptions,
    model_format: str,
) -> Predictor:
    options = PredictOptions.from_settings(settings)
    label_list = parse_class_names(labels, source="--labels") if labels is not None else None
    prompt_set = load_prompt_set(prompts) if prompts else None
    with err_console.status("loading model…"):
        if bundle is not None:
            predictor = Predictor.from_bundle(bundle, model_format, options, engine_options)
            return predictor.with_labels(label_list, prompt_set) if label_list else predictor
        return Predictor.from_model(
            model or settings.model.spec,
            label_list or resolve_class_names(settings.data.classes),
            prompt_set or settings.prompts.set,
            revision=settings.model.revision if model is None else None,
            cache_dir=settings.cache_dir,
            options=options,
            engine_options=engine_options,
        )


def _run(predictor: Predictor, inputs: CollectedInputs) -> list[FileResult]:
    """One result per entry: each image's, and each unusable input's, in input order."""
    results: list[FileResult] = []
    with ProgressBar("predicting") as bar:
        for result in predictor.predict_inputs(inputs):
            results.append(result)
            bar(len(results), len(inputs.entries))
    return results
