"""``clip-har train embed DATA``: fill the embedding cache for a manifest.

Registered in :mod:`clip_har.cli.train` as ``app.command("embed")(embed_command)``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from clip_har.cli.common import ProgressBar, console, drop_none, err_console, settings_from
from clip_har.cli.outputs import prepare_cache_folder
from clip_har.data.manifest import read_manifest
from clip_har.io import plural
from clip_har.models.backbone import load_backbone
from clip_har.training.features import FeatureStore, default_store_root


def embed_command(
    ctx: typer.Context,
    data: Path = typer.Argument(
        ..., metavar="DATA", help="Folder holding manifest.parquet, or the file."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Hub id, local directory or preset (default: model.spec)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per forward pass."),
    workers: int = typer.Option(0, "--workers", min=0, help="Image loading worker processes."),
    store: Path | None = typer.Option(
        None, "--store", help="Embedding store root (default: CACHE_DIR/features)."
    ),
) -> None:
    """Compute the image embeddings of a manifest once and cache them on disk.

    Images already in the store (same backbone, preprocessing and file bytes) are not
    encoded again; an interrupted run resumes where it stopped.
    """
    settings = settings_from(ctx, {"model": drop_none({"spec": model})})
    manifest = read_manifest(data)
    # a cache that grows across runs: never replaced, so it takes no --force
    prepare_cache_folder(store, inputs=[data, *manifest["path"].dropna()], option="--store")
    with err_console.status("loading model…"):
        backbone = load_backbone(
            settings.model.spec,
            revision=settings.model.revision if model is None else None,
            cache_dir=settings.cache_dir,
        )
    root = store if store is not None else default_store_root(settings.cache_dir)
    features = FeatureStore(
        root,
        backbone,
        max_pixels=settings.data.max_image_pixels,
        min_side=settings.data.min_image_side,
    )
    try:
        with ProgressBar("embedding") as bar:
            _, stats = features.embed(
                manifest, batch_size=batch_size, num_workers=workers, progress=bar
            )
    except KeyboardInterrupt:
        err_console.print(
            f"[yellow]interrupted[/yellow]: {len(features)} embeddings are kept in "
            f"{escape(str(features.directory))}; run the command again to resume"
        )
        raise
    console.print(f"model: {escape(backbone.label)}", soft_wrap=True)
    console.print(
        f"encoded {stats.encoded}, reused {stats.reused}, skipped {stats.skipped} "
        f"(of {plural(len(manifest), 'row')})"
    )
    if stats.skipped:
        err_console.print(
            f"[yellow]{plural(stats.skipped, 'row')} skipped[/yellow]: no sha256, or the file is "
            "missing or unreadable (see the warnings above)"
        )
    console.print(
        f"store: {escape(str(features.directory))} ({plural(len(features), 'image')})",
        soft_wrap=True,
    )
