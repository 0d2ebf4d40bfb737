"""``clip-har monitor``: a reference profile of a bundle on known data, and the drift of the
service's prediction log against it (docs/deployment.md "Drift monitoring").

``monitor drift`` exits 1 when a score is over its threshold (``params.yaml`` ``monitor:``)
or when the window holds too few predictions for a verdict, 0 otherwise; it records its
scores in the service's database, where ``clip-har serve`` exports the latest of each as
the gauge ``clip_har_drift_score{metric=...}``.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import (
    EXIT_FAILURE,
    ProgressBar,
    console,
    drop_none,
    err_console,
    settings_from,
)
from clip_har.cli.feedback import IMAGES_ENV, database_option, database_url, images_or_env
from clip_har.cli.outputs import force_option, manifest_inputs, output_option, prepare_output
from clip_har.config import Settings
from clip_har.data.manifest import manifest_info, read_manifest
from clip_har.errors import ClipHarError, UsageError
from clip_har.io import plural, publish_directory, write_text_atomic
from clip_har.monitoring import EMBEDDING_AUC, EMBEDDINGS_FILE, PROFILE_FILE

if TYPE_CHECKING:
    import pandas as pd
    from numpy.typing import NDArray

    from clip_har.monitoring.drift import DriftResult
    from clip_har.monitoring.profile import ReferenceProfile
    from clip_har.serving.store import PredictionWindow

app = typer.Typer(
    help="Drift monitoring: profile a bundle on reference data, then test the service's "
    "predictions against that profile.",
    no_args_is_help=True,
)

MAX_WINDOW = 1_000_000
"""Predictions read at most (the latest of the window)."""
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_LISTED = 10  # unusable reference images named at most


def parse_since(text: str, now: datetime) -> datetime | None:
    """The start of the window: ``all`` (None), a duration back from ``now`` (``90s``, ``30m``,
    ``24h``, ``7d``, ``2w``) or an ISO 8601 time (UTC when it has no offset)."""
    value = text.strip().lower()
    if value == "all":
        return None
    match = _DURATION.match(value)
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    raw = text.strip()
    try:
        moment = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError:
        raise UsageError(
            f"--since {text}: not a duration (30m, 24h, 7d), an ISO time "
            "(2026-01-31T12:00:00Z) or 'all'"
        ) from None
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
    if moment > now:
        raise UsageError(f"--since {text}: in the future")
    return moment.astimezone(timezone.utc)


def _select_split(frame: pd.DataFrame, split: str | None, manifest: Path) -> pd.DataFrame:
    """The rows of ``split`` (every row when None)."""
    if split is None:
        return frame
    present = sorted(frame["split"].dropna().unique())
    if not present:
        raise UsageError(
            f"--split {split}: {manifest} has no splits; split it first "
            f"(`clip-har data split {manifest} -o DIR`) or leave out --split"
        )
    chosen = frame[frame["split"].eq(split).fillna(False)]
    if chosen.empty:
        raise UsageError(f"--split {split}: no such split in {manifest} ({', '.join(present)})")
    return chosen


@app.command("reference")
def reference(
    ctx: typer.Context,
    bundle: str = typer.Argument(
        ...,
        metavar="BUNDLE",
        help="Bundle directory, or a registered version (models:/NAME@ALIAS).",
    ),
    manifest: Path = typer.Argument(
        ..., metavar="MANIFEST", help="Manifest folder of the reference images (data import)."
    ),
    output: Path = output_option(
        kind="dir", help=f"Folder for the reference ({PROFILE_FILE} + {EMBEDDINGS_FILE})."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Only this split's rows (e.g. val); default: every row."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Images per forward pass (default: params)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the embedding sample."),
    force: bool = force_option(),
) -> None:
    """Profile BUNDLE on MANIFEST's images: the predicted-class distribution, a confidence
    histogram and the image embeddings (a sample of at most params monitor.max_embeddings,
    with their mean and covariance). `monitor drift` compares the service's traffic with it."""
    settings = settings_from(ctx)
    from clip_har.inference.predictor import PredictOptions
    from clip_har.monitoring.profile import save_profile
    from clip_har.monitoring.reference import build_reference
    from clip_har.registry.resolve import resolve_registered

    folder = resolve_registered(bundle, cache_dir=settings.cache_dir).path
    prepare_output(output, kind="dir", inputs=[folder, *manifest_inputs(manifest)], force=force)
    rows = _select_split(read_manifest(manifest), split, manifest)
    paths = [Path(p) for p in rows["path"]]
    data = {"split": split, **manifest_info(manifest, len(rows))}
    options = PredictOptions.from_settings(settings, batch_size=batch_size)
    status = err_console.status(f"profiling {escape(bundle)}")
    with status, ProgressBar("embedding") as bar, publish_directory(output) as staging:
        profile, unusable = build_reference(
            folder,
            paths,
            data=data,
            options=options,
            max_embeddings=settings.monitor.max_embeddings,
            bins=settings.monitor.histogram_bins,
            seed=seed,
            progress=bar,
        )
        save_profile(staging, profile)
    _print_reference(profile)
    for path, why in unusable[:_LISTED]:
        err_console.print(f"[yellow]skipped[/yellow] {escape(str(path))}: {escape(why)}")
    if len(unusable) > _LISTED:
        err_console.print(f"[yellow]… and {len(unusable) - _LISTED} more unusable images[/yellow]")
    err_console.print(f"wrote {escape(str(output))}/ (reference {profile.id})")


def _print_reference(profile: ReferenceProfile) -> None:
    info = profile.info
    table = Table(title=escape(f"reference {profile.id}"))
    table.add_column("predicted class", overflow="fold")
    table.add_column("images", justify="right", no_wrap=True)
    for label, count in sorted(profile.class_counts.items(), key=lambda item: -item[1]):
        table.add_row(escape(label), str(count))
    table.add_section()
    table.add_row("images profiled", str(info["images"]))
    table.add_row("unusable", str(info["unusable"]))
    table.add_row("mean confidence", f"{info['confidence_mean']:.4f}")
    table.add_row("embeddings kept", str(info["embedding"]["kept"]))
    console.print(table)


@app.command("drift")
def drift(
    ctx: typer.Context,
    reference: Path = typer.Option(
        ...,
        "--reference",
        "-r",
        metavar="DIR",
        help="Reference folder from `clip-har monitor reference`.",
    ),
    database: Path | None = database_option(),
    images: Path | None = typer.Option(
        None,
        "--images",
        metavar="DIR",
        help="Folder `clip-har serve --store-images` keeps the uploads in (default: "
        f"${IMAGES_ENV}); without it, embedding drift is skipped.",
    ),
    since: str = typer.Option(
        "24h",
        "--since",
        help="Window start: a duration back from now (30m, 24h, 7d), an ISO time (UTC "
        "without an offset), or 'all'.",
    ),
    bundle: str | None = typer.Option(
        None,
        "--bundle",
        "-b",
        help="Bundle to embed the window's images with (default: the reference's own; it "
        "must be the same model).",
    ),
    output: Path | None = output_option(None, kind="file", help="HTML report with plots."),
    min_predictions: int | None = typer.Option(
        None,
        "--min-predictions",
        min=1,
        help="Fewer predictions in the window: no verdict, exit 1 (default: params "
        "monitor.min_predictions).",
    ),
    record: bool = typer.Option(
        True,
        "--record/--no-record",
        help="Record the scores in the database (the server exports the latest).",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of samples and folds."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
    force: bool = force_option(),
) -> None:
    """Compare the service's predictions since --since with the reference: PSI of the
    predicted classes, a KS test of the confidences and, with --images, a domain classifier's
    ROC AUC on the image embeddings. Exits 1 when a score is over its threshold (params
    monitor:) or the window has too few predictions for a verdict; 0 otherwise."""
    settings = settings_from(ctx, {"monitor": drop_none({"min_predictions": min_predictions})})
    from clip_har.monitoring.drift import Thresholds, compute_drift
    from clip_har.monitoring.profile import load_profile
    from clip_har.monitoring.report import render_html
    from clip_har.serving.store import read_prediction_window, safe_url

    now = datetime.now(timezone.utc)
    start = parse_since(since, now)
    url, database_file = database_url(database)
    images = images_or_env(images)
    if images is not None and not images.is_dir():
        raise UsageError(f"--images {images}: no such folder")
    prepare_output(
        output,
        kind="file",
        suffixes=(".html",),
        inputs=[reference, database_file, images],
        force=force,
    )
    profile = load_profile(reference)
    window = read_prediction_window(url, start, now, limit=MAX_WINDOW)
    needed = settings.monitor.min_predictions
    if len(window) < needed:
        raise ClipHarError(
            f"{plural(len(window), 'prediction')} in {safe_url(url)} since "
            f"{start.isoformat(timespec='seconds') if start else 'the start'}: fewer than the "
            f"{needed} a verdict needs (monitor.min_predictions); no drift verdict. Widen "
            "--since or lower --min-predictions"
        )
    embeddings: NDArray[np.float32] | None = None
    note: str | None = _NO_IMAGES
    if images is not None:
        embeddings, note = _window_embeddings(profile, window, images, bundle, settings, seed)
    result = compute_drift(
        profile,
        window.labels,
        window.confidences,
        Thresholds.from_settings(settings.monitor),
        embeddings=embeddings,
        embedding_note=note,
        seed=seed,
    )
    if record:
        _record(url, result, start, now)
    summary = {
        "since": start.isoformat(timespec="seconds") if start else None,
        "until": now.isoformat(timespec="seconds"),
        "predictions": len(window),
        "database": safe_url(url),
    }
    if output is not None:
        write_text_atomic(output, render_html(profile, result, window=summary, created_at=now))
    if as_json:
        typer.echo(json.dumps(_as_json(result, summary), indent=2))
    else:
        _print_drift(result, summary)
    if output is not None:
        err_console.print(f"wrote {escape(str(output))}")
    if result.drifted:
        over = ", ".join(f"{s.metric} {s.value:.3f} > {s.threshold:g}" for s in result.drifted)
        err_console.print(f"[bold red]drift:[/bold red] {escape(over)}")
        raise typer.Exit(EXIT_FAILURE)


_NO_IMAGES = (
    "no --images: embedding drift needs the folder `clip-har serve --store-images DIR` "
    "keeps the uploads in"
)


def _window_embeddings(
    profile: ReferenceProfile,
    window: PredictionWindow,
    images: Path,
    bundle: str | None,
    settings: Settings,
    seed: int,
) -> tuple[NDArray[np.float32] | None, str | None]:
    """Embeddings of the window's stored images (one per prediction, at most
    monitor.max_embeddings, each distinct image embedded once), or None and why not."""
    from clip_har.inference.predictor import PredictOptions
    from clip_har.monitoring.embed import BundleEmbedder
    from clip_har.monitoring.reference import sample_indices
    from clip_har.serving.store import find_image

    digests = [digest for digest in window.image_sha256 if digest]
    found = {d: path for d in set(digests) if (path := find_image(images, d)) is not None}
    stored = [digest for digest in digests if digest in found]
    needed = settings.monitor.min_predictions
    if len(stored) < needed:
        return None, (
            f"only {len(stored)} of {plural(len(window), 'prediction')} have a stored image "
            f"under {images} (embedding drift needs {needed}); serve with --store-images"
        )
    chosen = [stored[i] for i in sample_indices(len(stored), settings.monitor.max_embeddings, seed)]
    unique = sorted(set(chosen))
    folder = _embedding_bundle(profile, bundle, settings)
    embedder = BundleEmbedder(folder, PredictOptions.from_settings(settings))
    if embedder.model_key != profile.model_key:
        raise ClipHarError(
            f"{folder} is not the model the reference {profile.id} profiled "
            f"({profile.info['bundle'].get('path')}): embeddings of two models do not compare"
        )
    with ProgressBar("embedding the window's images") as bar:
        embedded = embedder.embed_files([found[d] for d in unique], bar)
    vectors = {unique[i]: embedded.embeddings[k] for k, i in enumerate(embedded.indices)}
    rows = [vectors[digest] for digest in chosen if digest in vectors]
    if len(rows) < 2:
        return None, f"the stored images under {images} could not be read"
    return np.stack(rows), None


def _embedding_bundle(profile: ReferenceProfile, bundle: str | None, settings: Settings) -> Path:
    from clip_har.registry.resolve import resolve_registered

    if bundle is not None:
        return resolve_registered(bundle, cache_dir=settings.cache_dir).path
    recorded = Path(str(profile.info["bundle"].get("path")))
    if not recorded.is_dir():
        raise ClipHarError(
            f"the reference's bundle {recorded} is gone: give the same model with --bundle"
        )
    return recorded


def _record(url: str, result: DriftResult, start: datetime | None, now: datetime) -> None:
    from clip_har.serving.store import DriftScoreRecord, record_drift_scores

    run_id = uuid.uuid4().hex
    record_drift_scores(
        url,
        [
            DriftScoreRecord(
                run_id=run_id,
                created_at=now,
                metric=score.metric,
                value=score.value,
                threshold=score.threshold,
                drifted=score.drifted,
                reference_id=result.reference_id,
                samples=score.samples,
                since=start,
            )
            for score in result.scores
        ],
    )


def _as_json(result: DriftResult, summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "reference": result.reference_id,
        "window": summary,
        "drift": bool(result.drifted),
        "scores": [
            {
                "metric": s.metric,
                "value": s.value,
                "threshold": s.threshold,
                "drifted": s.drifted,
                "samples": s.samples,
                **s.detail,
            }
            for s in result.scores
        ],
        "skipped": result.skipped,
    }


def _print_drift(result: DriftResult, summary: dict[str, Any]) -> None:
    title = f"drift since {summary['since'] or 'the start'}: {summary['predictions']} predictions"
    table = Table(title=escape(title))
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("threshold", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for score in result.scores:
        verdict = "[bold red]drift[/bold red]" if score.drifted else "[green]ok[/green]"
        table.add_row(
            score.metric,
            f"{score.value:.4f}",
            f"{score.threshold:g}",
            verdict,
            escape(score.detail_text()),
        )
    for metric, why in result.skipped.items():
        table.add_row(metric, "", "", "[yellow]skipped[/yellow]", escape(why))
    console.print(table)
    if EMBEDDING_AUC in result.skipped:
        err_console.print(f"[yellow]note:[/yellow] {escape(result.skipped[EMBEDDING_AUC])}")
