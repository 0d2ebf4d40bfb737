"""``clip-har bundle``: create and inspect bundles."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from clip_har.cli.common import console, err_console, settings_from

app = typer.Typer(help="Create and inspect model bundles.", no_args_is_help=True)


@app.command("create")
def create(
    ctx: typer.Context,
    output: Path = typer.Option(..., "--output", "-o", help="Bundle directory to write."),
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
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle."),
) -> None:
    """Build a zero-shot bundle from a backbone, a class list and a prompt set."""
    from clip_har.models.backbone import load_backbone
    from clip_har.models.bundle import save_bundle
    from clip_har.models.classifier import build_zero_shot_classifier
    from clip_har.models.prompts import load_prompt_set, resolve_class_names

    settings = settings_from(ctx)
    class_names = resolve_class_names(classes or settings.data.classes)
    prompt_set = load_prompt_set(prompts or settings.prompts.set)
    with err_console.status("loading model…"):
        backbone = load_backbone(
            model or settings.model.spec,
            revision=settings.model.revision if model is None else None,
            cache_dir=settings.cache_dir,
        )
    with err_console.status(f"encoding {len(class_names)} classes x prompts…"):
        classifier = build_zero_shot_classifier(backbone, class_names, prompt_set)
    bundle = save_bundle(
        output,
        classifier=classifier,
        backbone=backbone,
        prompts=prompt_set,
        name=name,
        include_backbone=include_backbone,
        overwrite=force,
    )
    if backbone.random_weights:
        err_console.print(
            f"[yellow]warning:[/yellow] '{backbone.spec}' has RANDOM WEIGHTS: "
            "its predictions are meaningless (use it to try the pipeline)"
        )
    console.print(
        f"bundle [bold]{bundle.manifest.name}[/bold] → {bundle.directory}: "
        f"{len(class_names)} classes, {len(prompt_set.templates)} templates, "
        f"backbone {backbone.label}"
    )


@app.command("show")
def show(
    directory: Path = typer.Argument(..., help="Bundle directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Validate a bundle and summarise its manifest."""
    from clip_har.models.bundle import open_bundle

    manifest = open_bundle(directory).manifest
    if as_json:
        typer.echo(manifest.model_dump_json(indent=2))
        return
    backbone = manifest.backbone
    table = Table(title=f"bundle {manifest.name}", show_header=False)
    rows = {
        "classes": f"{len(manifest.class_names)}: {', '.join(manifest.class_names)}",
        "head": manifest.head.type,
        "prompts": f"{manifest.prompts.name} ({len(manifest.prompts.templates)} templates)",
        "backbone": backbone.spec
        + (" [red](RANDOM WEIGHTS)[/red]" if backbone.random_weights else ""),
        "fingerprint": backbone.fingerprint,
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
