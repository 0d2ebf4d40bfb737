"""``clip-har export``: ONNX / int8 / fp16 / TorchScript / TensorRT artifacts in a bundle."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import console, err_console, settings_from
from clip_har.errors import ClipHarError


def export(
    ctx: typer.Context,
    bundle: Path = typer.Argument(..., help="Bundle directory to export."),
    formats: str | None = typer.Option(
        None,
        "--formats",
        help="Comma-separated: onnx, onnx-opt, onnx-int8, onnx-int8-static, onnx-fp16, "
        "torchscript, tensorrt, text-onnx (default: params export.formats).",
    ),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="Data manifest folder or image folder for static int8."
    ),
    calibration_method: str | None = typer.Option(
        None, "--calibration-method", help="minmax, entropy or percentile."
    ),
    parity_data: Path | None = typer.Option(
        None, "--parity-data", help="Real photos for the parity gate (folder or manifest)."
    ),
    parity_images: int | None = typer.Option(None, "--parity-images", min=1),
    opset: int | None = typer.Option(None, "--opset", min=17),
    tensorrt_precision: str = typer.Option("fp16", "--tensorrt-precision", help="fp16 or int8."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Runtime threads."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Export into a copy of BUNDLE here (BUNDLE is untouched)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --output."),
) -> None:
    """Export BUNDLE into BUNDLE/exports, check every artifact against torch fp32 and record
    it in the manifest. Exits 1 if a format could not be exported or failed its gate."""
    from clip_har.export.run import ExportOptions, copy_bundle, export_bundle

    if tensorrt_precision not in ("fp16", "int8"):
        raise ClipHarError(f"--tensorrt-precision must be fp16 or int8, not '{tensorrt_precision}'")
    if calibration_method not in (None, "minmax", "entropy", "percentile"):
        raise ClipHarError(
            f"--calibration-method must be minmax, entropy or percentile, not "
            f"'{calibration_method}'"
        )
    settings = settings_from(ctx).export
    options = ExportOptions.from_settings(
        settings,
        opset=opset,
        parity_data=parity_data,
        parity_count=parity_images,
        calibration=calibration,
        calibration_method=calibration_method,
        tensorrt_precision=tensorrt_precision,
        threads=threads,
    )
    if output is not None:
        bundle = copy_bundle(bundle, output, overwrite=force)
    with err_console.status("loading the bundle") as status:

        def progress(name: str, done: int, total: int) -> None:
            status.update(f"[{min(done + 1, total)}/{total}] exporting {name}")

        summary = export_bundle(bundle, formats or settings.formats, options, progress)
    table = Table(title=escape(f"exports of {bundle}"))
    for column in ("format", "file", "MB", "precision", "max |Δp|", "top-1", "gate"):
        table.add_column(column, justify="right" if column in ("MB", "max |Δp|") else "left")
    for record in summary.records.values():
        parity = record.parity
        assert parity is not None
        table.add_row(
            record.format,
            escape(Path(record.file).name),
            f"{record.bytes / 1e6:.1f}",
            record.precision,
            f"{parity.max_abs_diff:.2e}",
            f"{parity.top1_agreement:.1%}",
            "[green]passed[/green]" if parity.passed else "[red]FAILED[/red]",
        )
    console.print(table)
    if summary.records:
        parity = next(iter(summary.records.values())).parity
        assert parity is not None
        kind = "real photos" if parity.real_photos else "synthetic images (use --parity-data)"
        console.print(f"parity: {parity.images} {kind} against torch fp32")
    for name, reason in summary.failures.items():
        err_console.print(f"[bold red]{escape(name)} not exported:[/bold red] {escape(reason)}")
    failed = summary.gate_failures
    if failed:
        err_console.print(
            f"[bold red]failed the parity gate:[/bold red] {', '.join(failed)} (recorded as "
            "failed; engines refuse them unless forced)"
        )
    if summary.failures or failed:
        raise typer.Exit(1)
