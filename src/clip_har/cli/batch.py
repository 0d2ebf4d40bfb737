"""``clip-har batch`` and ``clip-har batch-merge``: resumable batch inference over a folder,
glob or manifest, with a bundle or against the HTTP API, sharded across machines.

The engine-agnostic parts (inputs, shards, result files, merge checks, summary) are
:mod:`clip_har.inference.batch`; this module adds the two backends, the progress bar,
Ctrl-C handling and the summary table.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import (
    EXIT_INTERRUPTED,
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
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.config import PredictSettings
from clip_har.errors import ClipHarError, ImageProblem, UsageError
from clip_har.inference.batch import (
    OUTPUT_SUFFIXES,
    BatchInput,
    BatchRow,
    RowWriter,
    Shard,
    Summary,
    api_error_code,
    check_output_suffix,
    check_resumable,
    existing_rows,
    list_inputs,
    merge_outputs,
    open_writer,
    parts_folder,
    predict_rows,
    write_rows,
)
from clip_har.inference.engines import EngineOptions
from clip_har.inference.predictor import PredictOptions
from clip_har.io import file_sha256, plural

if TYPE_CHECKING:
    from clip_har.client import HARClient

logger = logging.getLogger(__name__)

SOURCE_METAVAR = "DIR|GLOB|MANIFEST"
SOURCE_HELP = (
    "A folder (searched recursively), a quoted glob pattern, or a manifest: a data manifest "
    "(a folder holding manifest.parquet, or the .parquet file) or a CSV with a filename column."
)
DEFAULT_WORKERS = 4  # concurrent requests with --url
SHORT_HASH = 12  # hex digits of manifest.json that version a bundle, as `clip-har serve` does


def batch(
    ctx: typer.Context,
    source: str = typer.Argument(..., metavar=SOURCE_METAVAR, help=SOURCE_HELP),
    output: Path = output_option(
        ...,
        kind="file",
        help="Result file: .csv, .jsonl or .parquet. Rows already in it are skipped (resume).",
    ),
    bundle: str | None = bundle_option(),
    url: str | None = typer.Option(
        None,
        "--url",
        help="Predict through a running `clip-har serve` at this URL instead of a bundle "
        "(API key: $CLIP_HAR_API_KEY).",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        max=64,
        help="Concurrent requests with --url (default 4). With --bundle, decoding already "
        "runs in the predictor's thread pool and the engine uses every core.",
    ),
    shard: str = typer.Option(
        "0/1",
        "--shard",
        metavar="I/N",
        help="Take shard I of N (0 <= I < N), a stable 1/N of the inputs by a hash of each "
        "input's key: e.g. $JOB_COMPLETION_INDEX/N in a Kubernetes Indexed Job.",
    ),
    top_k: int | None = typer.Option(None, "--top-k", "-k", min=1, help="Labels per image."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Images per engine call, or per request with --url."
    ),
    model_format: str = model_format_option(),
    precision: str = precision_option(),
    ignore_parity: bool = typer.Option(
        False, "--ignore-parity", help="Use an export even if it failed its parity gate."
    ),
    timeout: float = typer.Option(
        60.0, "--timeout", min=0.1, help="Seconds per request with --url."
    ),
    json_summary: bool = typer.Option(
        False, "--json", help="Print the summary as JSON on stdout instead of a table."
    ),
    force: bool = force_option(),
    skip_errors: bool = typer.Option(
        False, "--skip-errors", help="Exit 0 even when some images could not be predicted."
    ),
) -> None:
    """Predict every image of a folder, glob or manifest into a result file, resumably.

    One row per image: path (the key), label, confidence, top-k, model, format, error.
    Rows are written as they come; Ctrl-C stops cleanly (exit 130) and running the same
    command again resumes (--force starts over). Exit code 3 when some images failed.
    """
    if (bundle is None) == (url is None):
        raise UsageError("give either --bundle DIR|models:/… or --url URL")
    explicit_format = given(ctx, "model_format")
    if url is not None and (explicit_format or ignore_parity or given(ctx, "precision")):
        raise UsageError(
            "--format, --precision and --ignore-parity choose a bundle's engine: pass --bundle"
        )
    if bundle is not None and workers is not None:
        raise UsageError(
            "--workers sets concurrent requests with --url; with --bundle, decoding already "
            "runs in the predictor's thread pool and the engine uses every core"
        )
    chosen = Shard.parse(shard)
    check_output_suffix(output)
    prepare_output(output, suffixes=OUTPUT_SUFFIXES, inputs=[source, bundle], force=True)
    settings = settings_from(
        ctx, {"predict": drop_none({"top_k": top_k, "batch_size": batch_size})}
    )

    everything = list_inputs(source)
    mine = chosen.take(everything)
    done = [] if force else existing_rows(output)
    check_resumable(output, done, chosen)
    done_keys = {row.path for row in done}
    todo = [item for item in mine if item.key not in done_keys]
    _note_foreign_rows(output, done_keys, {item.key for item in mine}, chosen)
    err_console.print(
        (
            f"shard {chosen}: {plural(len(mine), 'input')} of {len(everything)}"
            if chosen.count > 1
            else plural(len(mine), "input")
        )
        + (f", {len(mine) - len(todo)} already in {output}" if done_keys else "")
    )
    summary = Summary().extend(done)
    if todo:
        if url is not None:
            rows = _url_rows(url, todo, settings.predict, workers or DEFAULT_WORKERS, timeout)
        else:
            assert bundle is not None
            options = PredictOptions.from_settings(settings)
            engine = EngineOptions(force=ignore_parity, precision=precision)
            rows = _bundle_rows(
                bundle, settings.cache_dir, (model_format, explicit_format), options, engine, todo
            )
        previous = {row.model for row in done if row.model}
        progress = (len(mine) - len(todo), len(mine))
        if not _write(rows, (output, chosen), force, summary, progress, previous):
            raise typer.Exit(EXIT_INTERRUPTED)
    else:  # an empty shard still leaves its (empty) output, so that merge finds it
        open_writer(output, restart=force).close()
        err_console.print("nothing to do: every input of this shard is in the output")
    _show_summary(summary, f"{output} — {plural(summary.total, 'row')}", json_summary)
    if summary.errors and not skip_errors:
        raise typer.Exit(EXIT_PARTIAL)


def _note_foreign_rows(output: Path, done: set[str], mine: set[str], shard: Shard) -> None:
    """Warn when the output holds rows of inputs outside this shard (another shard's output,
    or another source): they are kept, and counted in the summary."""
    foreign = len(done - mine)
    if foreign:
        logger.warning(
            "%s holds %s that shard %s of this source does not have (kept)",
            output,
            plural(foreign, "row"),
            shard,
        )


# --------------------------------------------------------------------------- backends


def _bundle_rows(
    bundle: str,
    cache_dir: Path,
    requested_format: tuple[str, bool],
    options: PredictOptions,
    engine: EngineOptions,
    todo: Sequence[BatchInput],
) -> Generator[BatchRow, None, None]:
    """Rows from a local bundle (a folder or models:/) in the format `predict` would run:
    ``requested_format`` is ``(--format, whether it was given)``."""
    from clip_har.inference.predictor import Predictor
    from clip_har.models.bundle import MANIFEST, open_bundle
    from clip_har.registry.resolve import resolve_registered
    from clip_har.registry.store import is_model_uri

    resolved = resolve_registered(bundle, cache_dir=cache_dir)
    model_format = chosen_format(resolved, bundle, *requested_format)
    with err_console.status("loading model…"):
        predictor = Predictor.from_bundle(resolved.path, model_format, options, engine)
    name = open_bundle(resolved.path).manifest.name
    version = (
        resolved.path.name  # the registry cache keeps a version in .../NAME/VERSION
        if is_model_uri(bundle)
        else file_sha256(resolved.path / MANIFEST)[:SHORT_HASH]
    )
    precision = "" if engine.precision == "fp32" else f" ({engine.precision})"
    return predict_rows(predictor, todo, f"{name}:{version}", model_format + precision)


def _url_rows(
    url: str,
    todo: Sequence[BatchInput],
    predict: PredictSettings,
    workers: int,
    timeout: float,
) -> Generator[BatchRow, None, None]:
    """Rows from the HTTP API: requests of ``predict.batch_size`` images, ``workers`` of
    them in flight, rows yielded in input order. An API or connection error that is not
    about one image (a wrong key, a server that stays unavailable) stops the run."""
    from clip_har.client import HARClient

    size = predict.batch_size
    chunks = (todo[start : start + size] for start in range(0, len(todo), size))
    client = HARClient(url, timeout=timeout)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch-request")
    pending: deque[Future[list[BatchRow]]] = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(_request, client, chunk, predict.top_k))
            if len(pending) >= workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        client.close()


def _request(client: HARClient, chunk: Sequence[BatchInput], top_k: int) -> list[BatchRow]:
    """The rows of one request; an image the server refuses gets an error row. A batch
    refused as a whole for its content (one huge image: 413) is sent image by image."""
    from clip_har.client import (
        BadRequestError,
        BatchFailure,
        PayloadTooLargeError,
        UnsupportedMediaTypeError,
    )

    rows: dict[str, BatchRow] = {}
    sent: list[tuple[BatchInput, bytes]] = []
    for item in chunk:
        try:
            sent.append((item, item.path.read_bytes()))
        except OSError as exc:
            code = ImageProblem.MISSING_FILE if isinstance(exc, FileNotFoundError) else None
            rows[item.key] = BatchRow(
                item.key,
                error=f"cannot read the file ({exc.strerror or exc})",
                error_code=(code or ImageProblem.UNREADABLE).value,
            )
    refused = (BadRequestError, PayloadTooLargeError, UnsupportedMediaTypeError)
    if sent:
        try:
            answer = client.predict_batch([data for _, data in sent], top_k=top_k)
        except refused as exc:
            if len(sent) == 1:
                item = sent[0][0]
                rows[item.key] = BatchRow(
                    item.key, error=exc.message, error_code=api_error_code(exc.code)
                )
            else:
                for item, _ in sent:
                    rows.update((row.path, row) for row in _request(client, [item], top_k))
        else:
            model = f"{answer.model.name}:{answer.model.version}"
            for (item, _), result in zip(sent, answer.predictions, strict=True):
                if isinstance(result, BatchFailure):
                    rows[item.key] = BatchRow(
                        item.key,
                        model=model,
                        format=answer.model.format,
                        error=result.error.message,
                        error_code=api_error_code(result.error.code),
                    )
                else:
                    rows[item.key] = BatchRow(
                        item.key,
                        label=result.label,
                        confidence=result.confidence,
                        top_k=tuple((p.label, p.probability) for p in result.top_k),
                        model=model,
                        format=answer.model.format,
                    )
    return [rows[item.key] for item in chunk]


# --------------------------------------------------------------------------- the run


class _Interrupt:
    """Ctrl-C asks the run to stop after the current row (the rows written stay); a second
    Ctrl-C stops at once. Outside the main thread (no signals there) it does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        err_console.print("stopping… (Ctrl-C again to stop at once)")

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]


def _write(
    rows: Generator[BatchRow, None, None],
    target: tuple[Path, Shard],
    restart: bool,
    summary: Summary,
    progress: tuple[int, int],
    previous_models: set[str],
) -> bool:
    """Append ``rows`` to the output of ``target`` (the file, and the shard each row records)
    with a progress bar (``progress``: inputs of the shard already done, and all of them);
    ``False`` when Ctrl-C stopped it (the message says how far it got and that rerunning
    resumes)."""
    output, shard = target
    already, total = progress
    written = 0
    interrupted = False
    writer: RowWriter | None = None  # opened on the first row: a run that fails before
    try:  # writing any leaves the output as it was (--force deletes it only then)
        with _Interrupt() as interrupt, ProgressBar("predicting") as bar, closing(rows):
            bar(already, total)
            for row in rows:
                writer = writer or open_writer(output, restart=restart)
                if row.model and previous_models and row.model not in previous_models:
                    logger.warning(
                        "%s has rows of %s; this run uses %s",
                        output,
                        ", ".join(sorted(previous_models)),
                        row.model,
                    )
                    previous_models = set()  # said once
                writer.append(replace(row, shard=str(shard)))
                summary.add(row)
                written += 1
                bar(already + written, total)
                if interrupt.requested:
                    interrupted = True
                    break
    except KeyboardInterrupt:
        interrupted = True
    except Exception:
        err_console.print(
            f"stopped after {plural(written, 'new row')}; they are kept in {output}, and "
            "running the same command again resumes"
            if written
            else "stopped before writing any row"
        )
        raise
    finally:
        if writer is not None:
            writer.close()
    if interrupted:
        err_console.print(
            f"interrupted: {already + written} of {plural(total, 'input')}"
            + (f" of shard {shard}" if shard.count > 1 else "")
            + f" are in {output} ({written} this run); run the same command again to resume"
        )
    return not interrupted


def summary_table(summary: Summary, title: str) -> Table:
    """Class, count, share and mean confidence, most frequent first; then the errors."""
    table = Table(title=escape(title))
    table.add_column("class", style="bold")
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("share", justify="right", no_wrap=True)
    table.add_column("mean confidence", justify="right", no_wrap=True)
    for entry in summary.classes():
        table.add_row(
            escape(entry["class"]),
            str(entry["count"]),
            f"{entry['share']:.1%}",
            f"{entry['mean_confidence']:.3f}",
        )
    if summary.errors:
        table.add_row("[red]errors[/red]", f"[red]{summary.errors}[/red]", "", "")
    return table


def _show_summary(summary: Summary, title: str, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary.as_json(), indent=2))
    else:
        console.print(summary_table(summary, title))


# --------------------------------------------------------------------------- merge


def merge(
    shards: list[Path] = typer.Argument(
        ..., metavar="SHARD_OUTPUTS...", help="Result files of `clip-har batch --shard I/N`."
    ),
    output: Path = output_option(
        ..., kind="file", help="The merged result file: .csv, .jsonl or .parquet."
    ),
    expect: str | None = typer.Option(
        None,
        "--expect",
        metavar=SOURCE_METAVAR,
        help="The source the shards were made from: fail when an input of it is missing or a "
        "row is not one of its inputs (needed for outputs of a clip-har batch too old to "
        "record their shard).",
    ),
    json_summary: bool = typer.Option(
        False, "--json", help="Print the summary as JSON on stdout instead of a table."
    ),
    force: bool = force_option(),
) -> None:
    """Merge the outputs of `clip-har batch --shard I/N` into one file, sorted by path.

    Every row records the shard that wrote it: fails (exit 1, nothing written) when a file
    is given twice, a shard of 0/N … N-1/N is missing or given twice, an input is in two
    rows, or, with --expect, when an input is missing or a row is not one of its inputs.
    """
    check_output_suffix(output)
    for shard in shards:
        check_output_suffix(shard, option="shard output")
        if not shard.is_file() and not parts_folder(shard).is_dir():
            raise ClipHarError(f"{shard}: no such shard output")
    prepare_output(output, suffixes=OUTPUT_SUFFIXES, inputs=[*shards, expect], force=force)
    expected = list_inputs(expect) if expect is not None else None
    rows = merge_outputs(shards, expected)
    write_rows(output, rows)
    err_console.print(f"merged {plural(len(rows), 'row')} from {len(shards)} shard outputs")
    err_console.print(f"wrote {output}")
    _show_summary(Summary().extend(rows), f"{output} — {plural(len(rows), 'row')}", json_summary)
