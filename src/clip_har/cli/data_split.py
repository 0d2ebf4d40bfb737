"""``clip-har data split``: stratified, duplicate-aware train/val/test splits."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import console, drop_none, settings_from
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.config import DEFAULT_NEAR_DISTANCE, DEFAULT_SPLIT_RATIOS
from clip_har.io import plural, publish_directory, write_json_atomic


def split_command(
    ctx: typer.Context,
    directory: Path = typer.Argument(
        ..., metavar="DIR", help="Folder holding manifest.parquet (validated)."
    ),
    output: Path = output_option(kind="dir", help="Folder to write the split into."),
    ratios: str | None = typer.Option(
        None,
        "--ratios",
        help="train,val,test fractions "
        f"(default: params split.ratios, {','.join(map(str, DEFAULT_SPLIT_RATIOS))}).",
    ),
    seed: int | None = typer.Option(
        None,
        "--seed",
        min=0,
        help="Random seed for the assignment (default: params split.seed, 0).",
    ),
    near_distance: int | None = typer.Option(
        None,
        "--near-distance",
        min=0,
        max=63,
        help="Max perceptual-hash distance of near duplicates "
        f"(default: params data.near_distance, {DEFAULT_NEAR_DISTANCE}).",
    ),
    force: bool = force_option(),
) -> None:
    """Split a manifest so duplicates never cross splits; report per-class counts."""
    from clip_har.data.manifest import read_manifest, write_manifest
    from clip_har.data.splits import SPLITS, split_manifest

    settings = settings_from(
        ctx,
        {
            "split": drop_none({"ratios": ratios, "seed": seed}),
            "data": drop_none({"near_distance": near_distance}),
        },
    )
    seed = settings.split.seed
    frame = read_manifest(directory)
    prepare_output(output, kind="dir", inputs=[directory, *frame["path"].dropna()], force=force)
    result = split_manifest(
        frame,
        settings.split.ratios,
        seed=seed,
        near_distance=settings.data.near_distance,
    )
    with publish_directory(output) as staging:
        write_manifest(result.manifest, staging, published=output)
        write_json_atomic(staging / "split_report.json", result.report)

    table = Table(title=f"split of {plural(len(result.manifest), 'image')} (seed {seed})")
    table.add_column("class", overflow="fold")
    for split in SPLITS:
        table.add_column(split, justify="right", no_wrap=True)
    for label, counts in result.report["per_class"].items():
        cells = [f"{counts['actual'][s]} / {counts['target'][s]}" for s in SPLITS]
        table.add_row(escape(label), *cells)
    console.print(table)
    console.print(
        f"actual / target per class; max deviation {result.report['max_deviation_from_target']}; "
        f"cross-split duplicate leakage: {result.report['cross_split_leakage']}"
    )
