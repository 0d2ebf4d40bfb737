"""``clip-har bundle``: create and inspect bundles."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from clip_har.cli.common import console, err_console, settings_from
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.cli.tables import PathCell
from clip_har.errors import BundleError
from clip_har.io import plural

if TYPE_CHECKING:
    from clip_har.models.bundle import FileVerdict

app = typer.Typer(help="Create and inspect model bundles.", no_args_is_help=True)


@app.command("create")
def create(
    ctx: typer.Context,
    output: Path = output_option(kind="dir", help="Bundle directory to write."),
    model: str | None = typer.Option(None, "--model", "-m", help="Hub id, directory or preset."),
    classes: str | None = typer.Option(
        None,
        "--classes",
        "-c",
        help="Class list name (har15), a text file with one name per line, or a,b,c "
        "(default: params data.classes).",
    ),
    prompts: str | None = typer.Option(None, "--prompts", "-p", help="Prompt set name or YAML."),
    name: str | None = typer.Option(None, "--name", help="Bundle name (default: folder name)."),
    include_backbone: bool = typer.Option(
        False, "--include-backbone", help="Copy the backbone into the bundle (self-contained)."
    ),
    force: bool = force_option(),
) -> None:
    """Build a zero-shot bundle from a backbone, a class list and a prompt set."""
    from clip_har.models.backbone import load_backbone
    from clip_har.models.bundle import save_bundle
    from clip_har.models.classifier import build_zero_shot_classifier
    from clip_har.models.prompts import load_prompt_set, resolve_class_names

    settings = settings_from(ctx)
    prepare_output(output, kind="dir", inputs=[model, classes, prompts], force=force)
    class_names = resolve_class_names(classes or settings.data.classes)
    prompt_set = load_prompt_set(prompts or settings.prompts.set)
    with err_console.status("loading model…"):
        backbone = load_backbone(
            model or settings.model.spec,
            revision=settings.model.revision if model is None else None,
            cache_dir=settings.cache_dir,
        )
    with err_console.status(f"encoding {plural(len(class_names), 'class')} x prompts…"):
        classifier = build_zero_shot_classifier(backbone, class_names, prompt_set)
    bundle = save_bundle(
        output,
        classifier=classifier,
        backbone=backbone,
        prompts=prompt_set,
        name=name,
        include_backbone=include_backbone,
        overwrite=True,  # prepare_output has refused an existing bundle without --force
    )
    if backbone.random_weights:
        err_console.print(
            f"[yellow]warning:[/yellow] '{backbone.spec}' has RANDOM WEIGHTS: "
            "its predictions are meaningless (use it to try the pipeline)"
        )
    named = "" if bundle.manifest.name == bundle.directory.name else f" '{bundle.manifest.name}'"
    console.print(
        escape(
            f"wrote bundle{named} to {bundle.directory}: {plural(len(class_names), 'class')}, "
            f"{plural(len(prompt_set.templates), 'template')}, backbone {backbone.label}"
        )
    )


@app.command("show")
def show(
    directory: Path = typer.Argument(..., metavar="BUNDLE", help="Bundle directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Summarise a bundle's manifest. It checks the manifest and that the files it names
    exist, not their content: `clip-har bundle verify` checks hashes and loads the head."""
    from clip_har.models.bundle import open_bundle

    manifest = open_bundle(directory).manifest
    if as_json:
        typer.echo(manifest.model_dump_json(indent=2))
        return
    backbone = manifest.backbone
    table = Table(title=escape(f"bundle {directory}"), show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows = {
        "name": escape(manifest.name),
        "classes": escape(f"{len(manifest.class_names)}: {', '.join(manifest.class_names)}"),
        "head": manifest.head.type,
        "prompts": escape(
            f"{manifest.prompts.name} ({plural(len(manifest.prompts.templates), 'template')})"
        ),
        "backbone": escape(backbone.spec)
        + (" [red](RANDOM WEIGHTS)[/red]" if backbone.random_weights else ""),
        "fingerprint": escape(backbone.fingerprint),
        "embedded backbone": "yes" if backbone.embedded else "no",
        "input": f"{manifest.preprocessing.output_size} {manifest.preprocessing.resample}",
        "created": f"{manifest.lineage.created_at:%Y-%m-%d %H:%M:%S %Z}",
        "git commit": manifest.lineage.git_commit or "-",
        "metrics": ", ".join(f"{k}={v:.4g}" for k, v in manifest.metrics.items()) or "-",
        "exports": ", ".join(manifest.exports) or "-",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)
    err_console.print(
        f"[dim]file contents not verified: run `clip-har bundle verify {escape(str(directory))}`"
        "[/dim]"
    )


@app.command("verify")
def verify(
    directory: Path = typer.Argument(..., metavar="BUNDLE", help="Bundle directory."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the verdicts as JSON (file, role, ok, problem, note)."
    ),
) -> None:
    """Check every file of a bundle: the manifest, the head (loaded and checked against the
    classes), the encoder, an embedded backbone, and each export and its companion files
    against the sha256 the manifest records. Prints a table of the files; exits 1 if any
    is missing or damaged."""
    from clip_har.models.bundle import verify_bundle  # imported late: keeps --help fast

    verdicts = verify_bundle(directory)
    if as_json:
        typer.echo(json.dumps([asdict(v) | {"ok": v.ok} for v in verdicts], indent=2))
    else:
        console.print(_verdict_table(directory, verdicts))
    failed = [str(directory / verdict.file) for verdict in verdicts if not verdict.ok]
    if failed:
        raise BundleError(
            f"{directory}: {plural(len(failed), 'file')} failed verification: {', '.join(failed)}"
        )
    err_console.print(escape(f"{directory}: {plural(len(verdicts), 'file')} verified"))


def _verdict_table(directory: Path, verdicts: list[FileVerdict]) -> Table:
    """One row per file: its path with the detail below it (so that on 80 columns the path,
    the role and the status all stay whole), the role, the status."""
    table = Table(title=escape(f"verification of {directory}"))
    table.add_column("file / detail")
    table.add_column("role", overflow="fold")  # wraps between words: "export" / the format
    table.add_column("status", no_wrap=True)
    for verdict in verdicts:
        detail = Text(verdict.problem or verdict.note, style="dim" if verdict.ok else "red")
        table.add_row(
            Group(PathCell(verdict.file, style="bold"), detail),
            escape(verdict.role),
            "[green]ok[/green]" if verdict.ok else "[red]FAILED[/red]",
        )
    return table
