"""``clip-har export``: ONNX / int8 / fp16 / TorchScript / TensorRT artifacts in a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import (
    choice_metavar,
    console,
    drop_none,
    err_console,
    one_of,
    settings_from,
)
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.cli.tables import PathCell
from clip_har.config import CALIBRATION_METHODS, split_commas
from clip_har.errors import ClipHarError, UsageError
from clip_har.inference.formats import format_names, get_format
from clip_har.io import plural, replace_directory, staging_directory
from clip_har.registry.resolve import resolve_bundle
from clip_har.registry.store import is_model_uri

if TYPE_CHECKING:
    from clip_har.export.run import ExportOptions, ExportSummary

_TENSORRT_PRECISIONS = get_format("tensorrt").precisions


def export(
    ctx: typer.Context,
    reference: str = typer.Argument(
        ...,
        metavar="BUNDLE",
        help="Bundle directory to export, or a registered version (models:/NAME@ALIAS or "
        "models:/NAME/VERSION; then --output is required).",
    ),
    formats: str | None = typer.Option(
        None,
        "--formats",
        help=f"Comma-separated: {', '.join(format_names())} (default: params export.formats).",
    ),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="Data manifest folder or image folder for static int8."
    ),
    calibration_method: str | None = typer.Option(
        None,
        "--calibration-method",
        parser=one_of(CALIBRATION_METHODS),
        metavar=choice_metavar(CALIBRATION_METHODS),
        help="Static int8 calibration (default: params export.calibration).",
    ),
    parity_data: Path | None = typer.Option(
        None, "--parity-data", help="Real photos for the parity gate (folder or manifest)."
    ),
    parity_images: int | None = typer.Option(None, "--parity-images", min=1),
    opset: int | None = typer.Option(None, "--opset", min=17),
    tensorrt_precision: str = typer.Option(
        _TENSORRT_PRECISIONS[0],
        "--tensorrt-precision",
        parser=one_of(_TENSORRT_PRECISIONS),
        metavar=choice_metavar(_TENSORRT_PRECISIONS),
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Runtime threads."),
    output: Path | None = output_option(
        None, kind="dir", help="Export into a copy of BUNDLE here (BUNDLE is untouched)."
    ),
    force: bool = force_option(),
) -> None:
    """Export BUNDLE into BUNDLE/exports, check every artifact against torch fp32 and record
    it in the manifest. Exits 1 if a format could not be exported or failed its gate (with
    --output, nothing is written then)."""
    from clip_har.export.run import ExportOptions, copy_bundle, parse_formats

    if formats is not None and not split_commas(formats):
        raise UsageError("--formats is empty: name at least one format (see clip-har formats)")
    overrides = {"formats": formats, "opset": opset, "parity_images": parity_images}
    everything = settings_from(ctx, {"export": drop_none(overrides)})
    settings = everything.export
    options = ExportOptions.from_settings(
        settings,
        parity_data=parity_data,
        calibration=calibration,
        calibration_method=calibration_method,
        tensorrt_precision=tensorrt_precision,
        threads=threads,
    )
    try:  # unknown names fail before anything is copied
        names = parse_formats(settings.formats)
    except ClipHarError as exc:  # a bad --formats is a usage error; a bad params.yaml is not
        raise (UsageError(str(exc)) if formats is not None else exc) from None
    if is_model_uri(reference) and output is None:
        raise UsageError(
            f"{reference} is a registered version, kept verified in the cache: export it into "
            "a copy with --output DIR"
        )
    bundle = resolve_bundle(reference, cache_dir=everything.cache_dir)
    read = [bundle, calibration, parity_data]
    prepare_output(output, kind="dir", inputs=read, force=force)
    if output is None:
        summary = _export(bundle, names, options)
    else:  # the copy appears, exported, only when every format succeeds
        with staging_directory(output) as staging:
            copy_bundle(bundle, staging, overwrite=True)
            summary = _export(staging, names, options)
            if not (summary.failures or summary.gate_failures):
                replace_directory(staging, output)
        bundle = output
    _report(summary, bundle)
    if summary.failures or summary.gate_failures:
        if output is not None:
            err_console.print(f"nothing was written to {escape(str(output))}")
        raise typer.Exit(1)


def _export(bundle: Path, names: list[str], options: ExportOptions) -> ExportSummary:
    """Export ``names`` into ``bundle`` with a status line per format."""
    from clip_har.export.run import export_bundle

    with err_console.status("loading the bundle") as status:

        def progress(name: str, done: int, total: int) -> None:
            status.update(f"[{min(done + 1, total)}/{total}] exporting {name}")

        return export_bundle(bundle, names, options, progress)


def _report(summary: ExportSummary, bundle: Path) -> None:
    """The tables of exports and of their parity (two, so that each fits 80 columns with
    every name and number whole), and every failure."""
    files = Table(title=escape(f"exports of {bundle}"))
    files.add_column("format", no_wrap=True)
    files.add_column("file")  # the one column that may wrap
    files.add_column("MB", justify="right", no_wrap=True)
    files.add_column("precision", no_wrap=True)
    gates = Table(title="parity against torch fp32")
    gates.add_column("format", no_wrap=True)
    for column in ("max |Δp|", "top-1", "decided"):
        gates.add_column(column, justify="right", no_wrap=True)
    gates.add_column("gate", no_wrap=True)
    for record in summary.records.values():
        parity = record.parity
        assert parity is not None
        files.add_row(
            escape(record.format),
            PathCell(Path(record.file).name),
            f"{record.bytes / 1e6:.1f}",
            escape(record.precision),
        )
        gates.add_row(
            escape(record.format),
            f"{parity.max_abs_diff:.2e}",
            f"{parity.top1_agreement:.1%}",
            f"{parity.decided_images}/{parity.images}",
            "[green]passed[/green]" if parity.passed else "[red]FAILED[/red]",
        )
    console.print(files)
    if summary.records:
        console.print(gates)
    if summary.records:
        parity = next(iter(summary.records.values())).parity
        assert parity is not None
        kind = "real photo" if parity.real_photos else "synthetic image"
        hint = "" if parity.real_photos else " (use --parity-data)"
        console.print(
            f"parity: {plural(parity.images, kind)}{hint} against torch fp32; top-1 agreement "
            "counts the decided images (reference top-1 margin over 2 x max |Δp|), near-ties "
            "are excluded"
        )
    for name, reason in summary.failures.items():
        err_console.print(f"[bold red]{escape(name)} not exported:[/bold red] {escape(reason)}")
    failed = summary.gate_failures
    if failed:
        err_console.print(
            f"[bold red]failed the parity gate:[/bold red] {', '.join(failed)} (recorded as "
            "failed; engines refuse them unless given --ignore-parity)"
        )
