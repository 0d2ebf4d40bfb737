"""``clip-har client``: call a running ``clip-har serve`` from the command line.

The server is ``--url`` (default ``$CLIP_HAR_URL``, else http://127.0.0.1:8000); the API key
comes only from ``$CLIP_HAR_API_KEY``, never from an option (other users of the machine can
read a process's arguments).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import EXIT_FAILURE, EXIT_PARTIAL, console, err_console
from clip_har.cli.tables import PathCell
from clip_har.client import HARClient, LabelProbability
from clip_har.errors import ClipHarError, UsageError
from clip_har.io import plural

URL_ENV = "CLIP_HAR_URL"
DEFAULT_URL = "http://127.0.0.1:8000"

app = typer.Typer(
    help="Call a running clip-har server (API key from $CLIP_HAR_API_KEY).", no_args_is_help=True
)


def _url_option() -> Any:
    return typer.Option(
        DEFAULT_URL,
        "--url",
        envvar=URL_ENV,
        metavar="URL",
        help=f"The server (default: ${URL_ENV}, else {DEFAULT_URL}).",
    )


def _json_option() -> Any:
    return typer.Option(False, "--json", help="Print the answer as JSON.")


def _timeout_option() -> Any:
    return typer.Option(30.0, "--timeout", min=0.1, metavar="SECONDS", help="Per request.")


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def _runners_up(top_k: Sequence[LabelProbability]) -> str:
    return ", ".join(f"{item.label} {item.probability:.2f}" for item in top_k[1:])


@app.command("predict")
def predict(
    images: list[Path] = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, metavar="IMAGE...", help="Image files."
    ),
    url: str = _url_option(),
    top_k: int | None = typer.Option(
        None, "--top-k", "-k", min=1, help="Labels per image (default: the server's)."
    ),
    as_json: bool = _json_option(),
    timeout: float = _timeout_option(),
) -> None:
    """Predict the action in each image (several images go in batched requests, split
    further where the server's limits ask)."""
    rows: list[dict[str, Any]] = []
    with HARClient(url, timeout=timeout) as client, err_console.status("predicting") as status:

        def progress(done: int, total: int) -> None:
            status.update(f"predicting: {done} of {plural(total, 'image')} answered")

        answer = client.predict_batch(images, top_k=top_k, progress=progress)
    for item in answer.predictions:
        row: dict[str, Any] = {"path": str(images[item.index])}
        row.update(item.model_dump(mode="json", exclude={"index", "filename"}))
        rows.append(row)
    failed = sum(1 for row in rows if "error" in row)
    if as_json:
        _echo_json(rows)
    else:
        _print_predictions(rows)
    if failed:
        err_console.print(f"[yellow]warning:[/yellow] {plural(failed, 'image')} not predicted")
        raise typer.Exit(EXIT_FAILURE if failed == len(rows) else EXIT_PARTIAL)


def _print_predictions(rows: Sequence[dict[str, Any]]) -> None:
    table = Table(title=plural(len(rows), "image"))
    table.add_column("image")
    table.add_column("label", style="bold green", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("runners-up", style="dim", overflow="fold")
    table.add_column("prediction id", style="dim", no_wrap=True)
    for row in rows:
        if "error" in row:
            reason = escape(f"{row['error']['code']}: {row['error']['message']}")
            table.add_row(PathCell(row["path"]), "[red]error[/red]", "", f"[red]{reason}[/red]", "")
            continue
        top_k = [LabelProbability.model_validate(item) for item in row["top_k"]]
        table.add_row(
            PathCell(row["path"]),
            escape(row["label"]),
            f"{row['confidence']:.3f}",
            escape(_runners_up(top_k)),
            row["prediction_id"],
        )
    console.print(table)


@app.command("classify")
def classify(
    image: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, metavar="IMAGE", help="An image file."
    ),
    labels: str = typer.Option(
        ..., "--labels", "-l", help='Your candidate labels, comma-separated: "cooking,dancing".'
    ),
    templates: list[str] | None = typer.Option(
        None,
        "--template",
        "-t",
        metavar="TEMPLATE",
        help="A prompt template with one {} (repeat the option).",
    ),
    url: str = _url_option(),
    top_k: int | None = typer.Option(None, "--top-k", "-k", min=1, help="Labels to show."),
    as_json: bool = _json_option(),
    timeout: float = _timeout_option(),
) -> None:
    """Open vocabulary: score one image against your own action labels."""
    names = [name.strip() for name in labels.split(",") if name.strip()]
    if not names:
        raise UsageError("--labels: give at least one label, comma-separated")
    with HARClient(url, timeout=timeout) as client, err_console.status("classifying"):
        answer = client.classify(image, names, templates=templates or None, top_k=top_k)
    if as_json:
        _echo_json(_dump(answer))
        return
    table = Table(title=escape(f"{image.name}: {answer.label}"))
    table.add_column("label", no_wrap=True)
    table.add_column("probability", justify="right", no_wrap=True)
    table.add_column("", style="green")
    for item in answer.top_k:
        bar = "█" * round(item.probability * 30)
        table.add_row(escape(item.label), f"{item.probability:.3f}", bar)
    console.print(table)
    err_console.print(f"prediction id {answer.prediction_id}")


@app.command("feedback")
def feedback(
    prediction_id: str = typer.Argument(
        ..., metavar="PREDICTION_ID", help="The prediction id an answer gave."
    ),
    correct: bool = typer.Option(
        ..., "--correct/--wrong", help="Whether the predicted label was right."
    ),
    label: str | None = typer.Option(
        None, "--label", help="The right label (needed with --wrong)."
    ),
    comment: str | None = typer.Option(None, "--comment", help="Free text."),
    url: str = _url_option(),
    as_json: bool = _json_option(),
    timeout: float = _timeout_option(),
) -> None:
    """Say whether a prediction was right; with --wrong, give the right --label."""
    if not correct and label is None:
        raise UsageError("--wrong needs the right label: --label LABEL")
    with HARClient(url, timeout=timeout) as client:
        stored = client.feedback(prediction_id, correct=correct, label=label, comment=comment)
    if as_json:
        _echo_json(_dump(stored))
        return
    verdict = "right" if stored.correct else f"wrong, should be {stored.label!r}"
    err_console.print(
        escape(f"feedback {stored.feedback_id} stored: prediction {stored.prediction_id} {verdict}")
    )


@app.command("model")
def model(
    url: str = _url_option(), as_json: bool = _json_option(), timeout: float = _timeout_option()
) -> None:
    """The served model: name, version, format, source, classes and metrics."""
    with HARClient(url, timeout=timeout) as client:
        info = client.model_info()
    if as_json:
        _echo_json(_dump(info))
        return
    table = Table(title=escape(f"{info.name} {info.version}"), show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    fields: dict[str, Any] = {
        "format": info.format,
        "alias": info.alias or "-",
        "source": info.source,
        "registry": info.registry.uri if info.registry else "-",
        "ready": "yes" if info.ready else "no",
        "open vocabulary": "yes" if info.open_vocabulary else "no",
        "image size": "x".join(str(side) for side in info.image_size),
        "classes": f"{len(info.classes)}: {', '.join(info.classes)}",
        "loaded at": info.loaded_at,
    }
    fields.update({f"metric {name}": f"{value:.4g}" for name, value in info.metrics.items()})
    for name, value in fields.items():
        table.add_row(escape(name), escape(str(value)))
    console.print(table)


@app.command("health")
def health(
    url: str = _url_option(), as_json: bool = _json_option(), timeout: float = _timeout_option()
) -> None:
    """Whether the server is live and ready; exits 1 when it is not ready."""
    with HARClient(url, timeout=timeout, retries=0) as client:
        status = client.health()
    if as_json:
        _echo_json(_dump(status))
    else:
        model_text = f" ({status.model} {status.version})" if status.model else ""
        console.print(escape(f"{client.url}: live, {status.status}{model_text}"))
    if not status.ready:
        raise ClipHarError(f"{client.url} is live but not ready: {status.status}")
