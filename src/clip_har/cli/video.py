"""``clip-har webcam`` and ``clip-har predict-video``: live and recorded video (the
``[video]`` extra: OpenCV)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import (
    EXIT_INTERRUPTED,
    ProgressBar,
    bundle_option,
    choice_metavar,
    chosen_format,
    console,
    err_console,
    given,
    model_format_option,
    one_of,
    settings_from,
)
from clip_har.cli.outputs import (
    check_outputs_apart,
    force_option,
    output_option,
    prepare_output,
)
from clip_har.errors import UsageError
from clip_har.inference.engines import EngineOptions
from clip_har.inference.predictor import PredictOptions, Predictor
from clip_har.inference.smoothing import (
    DEFAULT_ALPHA,
    DEFAULT_WINDOW,
    SMOOTHING_KINDS,
    make_smoother,
    smooth_sequence,
)
from clip_har.inference.timeline import (
    Sample,
    Segment,
    build_segments,
    timeline_csv,
    write_timeline_png,
)
from clip_har.inference.video import (
    VIDEO_SUFFIXES,
    FrameLabeler,
    FrameRecord,
    StreamOutputs,
    VideoSource,
    Window,
    default_show,
    is_live,
    parse_source,
    run_stream,
    sample_video,
)
from clip_har.io import publish_directory, write_text_atomic
from clip_har.registry.resolve import resolve_registered

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_FPS = 2.0  # predict-video: samples per second when neither --every nor --fps


def _smoothing_option(default: str) -> Any:
    return typer.Option(
        default,
        "--smoothing",
        parser=one_of(SMOOTHING_KINDS),
        metavar=choice_metavar(SMOOTHING_KINDS),
        help="Temporal smoothing: EMA of the probabilities, a majority vote of the last "
        "--window top labels, or none.",
    )


def _alpha_option() -> Any:
    return typer.Option(
        DEFAULT_ALPHA,
        "--alpha",
        min=0.01,
        max=1.0,
        help="EMA weight of the newest prediction (--smoothing ema only).",
    )


def _window_option() -> Any:
    return typer.Option(
        DEFAULT_WINDOW,
        "--window",
        min=1,
        help="Vote window, in predictions (--smoothing vote only).",
    )


def _check_smoothing_options(ctx: typer.Context, smoothing: str) -> None:
    """``--alpha`` tunes only ``ema`` and ``--window`` only ``vote``: given with another
    smoothing, they would be silently ignored, so they are a usage error."""
    for option, name, kind in (("--alpha", "alpha", "ema"), ("--window", "window", "vote")):
        if given(ctx, name) and smoothing != kind:
            raise UsageError(
                f"{option} tunes --smoothing {kind}; it has no effect with --smoothing {smoothing}"
            )


def _require_bundle(bundle: str | None) -> str:
    """``--bundle``, checked before a video is opened."""
    if bundle is None:
        raise UsageError("pass --bundle DIR or --bundle models:/NAME@ALIAS")
    return bundle


def webcam(
    ctx: typer.Context,
    source: str = typer.Option(
        "0", "--source", "-s", help="Camera index (0), video file, or stream URL (rtsp://…)."
    ),
    bundle: str | None = bundle_option(),
    model_format: str = model_format_option(),
    every: int = typer.Option(1, "--every", "-k", min=1, help="Predict every k-th frame."),
    smoothing: str = _smoothing_option("ema"),
    alpha: float = _alpha_option(),
    window: int = _window_option(),
    output: Path | None = output_option(
        None, kind="file", help=f"Write the annotated video ({', '.join(VIDEO_SUFFIXES)})."
    ),
    log_file: Path | None = output_option(
        None, "--log", kind="file", help="Write a per-frame JSONL log (.jsonl)."
    ),
    show: bool | None = typer.Option(
        None,
        "--show/--no-show",
        help="Show a window (q or Esc stops). Default: only for a camera with a display.",
    ),
    max_frames: int | None = typer.Option(
        None, "--max-frames", min=1, help="Stop after this many frames."
    ),
    force: bool = force_option(),
) -> None:
    """Label a camera, video file or stream live: predict every k-th frame, smooth over
    time, overlay label, confidence and FPS; Ctrl-C stops (exit 130, outputs kept)."""
    model = _require_bundle(bundle)
    _check_smoothing_options(ctx, smoothing)
    parsed = parse_source(source)
    file_input = None if is_live(parsed) else source
    check_outputs_apart({"--output": output, "--log": log_file})
    prepare_output(output, suffixes=tuple(VIDEO_SUFFIXES), inputs=[file_input, bundle], force=force)
    prepare_output(
        log_file, suffixes=(".jsonl",), inputs=[file_input, bundle], force=force, option="--log"
    )
    smoother = make_smoother(smoothing, alpha=alpha, window=window)
    with VideoSource(parsed) as capture:  # a source that cannot be opened fails first
        labeler = FrameLabeler(_load_predictor(ctx, model, model_format), smoother, every=every)
        wanted = default_show(parsed) if show is None else show
        shown = Window(wanted, explicit=show is True)
        try:
            size = (capture.width, capture.height)
            with StreamOutputs(output, log_file, capture.fps, size) as outputs:
                summary = run_stream(capture, labeler, outputs, window=shown, max_frames=max_frames)
        finally:
            shown.close()
    log.info("webcam: %s", summary.line())
    err_console.print(escape(f"{source}: {summary.line()}"))
    for path in (output, log_file):
        if path is not None:
            err_console.print(escape(f"wrote {path}"))
    if summary.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)


def predict_video(
    ctx: typer.Context,
    video: Path = typer.Argument(..., metavar="VIDEO", help="The video file."),
    output: Path = output_option(
        ..., kind="dir", help="Folder for timeline.csv, timeline.png and frames.jsonl."
    ),
    bundle: str | None = bundle_option(),
    model_format: str = model_format_option(),
    every: int | None = typer.Option(None, "--every", "-k", min=1, help="Sample every k-th frame."),
    fps: float | None = typer.Option(
        None, "--fps", min=0.01, help=f"Samples per second (default {DEFAULT_SAMPLE_FPS:g})."
    ),
    smoothing: str = _smoothing_option("vote"),
    alpha: float = _alpha_option(),
    window: int = _window_option(),
    min_segment: float = typer.Option(
        1.0, "--min-segment", min=0.0, help="Merge segments shorter than this (seconds)."
    ),
    force: bool = force_option(),
) -> None:
    """An action timeline of a video: sample frames, predict, smooth (without lag: the whole
    video is known) and cut into segments. A boundary is exact to one sampling step."""
    if every is not None and fps is not None:
        raise UsageError("use either --every or --fps, not both")
    model = _require_bundle(bundle)
    _check_smoothing_options(ctx, smoothing)
    prepare_output(output, kind="dir", inputs=[video, bundle], force=force)
    with VideoSource(str(video)) as capture:
        if capture.live:
            raise UsageError(f"{video}: predict-video reads a file; use webcam for a stream")
        step = every or max(1, round((capture.fps or 25.0) / (fps or DEFAULT_SAMPLE_FPS)))
        predictor = _load_predictor(ctx, model, model_format)
        with ProgressBar("predicting frames") as bar:
            sampled = sample_video(capture, predictor, step, bar)
    decisions = smooth_sequence(sampled.probabilities, smoothing, alpha=alpha, window=window)
    names = predictor.class_names
    records = []
    for frame, time_s, probs, decision in zip(
        sampled.frames, sampled.times, sampled.probabilities, decisions, strict=True
    ):
        raw = int(probs.argmax())
        label = names[decision.index]
        records.append(
            FrameRecord(
                frame, time_s, True, names[raw], float(probs[raw]), label, decision.confidence
            )
        )
    samples = [Sample(r.time_s, r.label, r.confidence) for r in records]
    segments = build_segments(samples, sampled.duration_s, min_segment=min_segment)
    step_s = step / capture.fps if capture.fps else 0.0
    with publish_directory(output) as staging:
        write_text_atomic(staging / "timeline.csv", timeline_csv(segments))
        write_timeline_png(
            staging / "timeline.png",
            segments,
            sampled.duration_s,
            title=f"{video.name}: {predictor.model_label}",
        )
        write_text_atomic(staging / "frames.jsonl", "".join(r.to_json() + "\n" for r in records))
    console.print(_segment_table(segments, video.name))
    err_console.print(
        escape(
            f"{len(records)} samples (every {step} frames, ±{step_s:.2f} s), "
            f"{len(segments)} segments; wrote {output}"
        )
    )


def _segment_table(segments: list[Segment], name: str) -> Table:
    table = Table(title=escape(f"{name}: {len(segments)} segments"))
    for column in ("start (s)", "end (s)", "label", "confidence"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for s in segments:
        table.add_row(f"{s.start_s:.2f}", f"{s.end_s:.2f}", escape(s.label), f"{s.confidence:.1%}")
    return table


def _load_predictor(ctx: typer.Context, bundle: str, model_format: str) -> Predictor:
    """The bundle's predictor; a ``models:/`` version runs the format it serves unless
    ``--format`` says otherwise (as ``predict`` does)."""
    settings = settings_from(ctx)
    resolved = resolve_registered(bundle, cache_dir=settings.cache_dir)
    chosen = chosen_format(resolved, bundle, model_format, given(ctx, "model_format"))
    options = PredictOptions.from_settings(settings)
    with err_console.status("loading model…"):
        return Predictor.from_bundle(resolved.path, chosen, options, EngineOptions())
