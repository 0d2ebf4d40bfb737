"""``clip-har hub``: export a bundle for the Hugging Face Hub, push it, pull it back."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from clip_har.cli.common import console, err_console, settings_from
from clip_har.cli.outputs import force_option, output_option, prepare_output
from clip_har.errors import HubError, UsageError
from clip_har.io import plural

app = typer.Typer(
    help="The Hugging Face Hub: export a bundle with a model card, push it, pull it back.",
    no_args_is_help=True,
)

_REPO_ID_HELP = "Model repository: NAMESPACE/NAME (or NAME, in your own namespace)."


def _check_repo_id(repo_id: str, option: str = "--repo-id") -> str:
    """``repo_id`` when it can name a Hub model repository, else a UsageError naming the
    ``option`` (or argument) that gave it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"{option} {repo_id!r}: {exc}") from None
    return repo_id


@app.command("export")
def export(
    ctx: typer.Context,
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="Bundle directory."),
    output: Path = typer.Argument(..., metavar="OUT", help="Hub-ready folder to write."),
    evaluation: Path | None = typer.Option(
        None,
        "--evaluation",
        "-e",
        metavar="DIR",
        help="A `clip-har evaluate` output folder: its metrics go into the card's model-index.",
    ),
    license: str = typer.Option("apache-2.0", "--license", help="Licence id for the card."),
    dataset: str | None = typer.Option(
        None, "--dataset", help="The dataset (a Hub dataset id or a name) for the card."
    ),
    repo_id: str | None = typer.Option(
        None, "--repo-id", help="Repository the card's usage lines name (default: a placeholder)."
    ),
    force: bool = force_option(),
) -> None:
    """Write a Hub-ready folder: the bundle (verified first), a model card (README.md) and,
    when the encoder was fine-tuned, transformers weights in transformers/."""
    from clip_har.evaluation.record import read_evaluation
    from clip_har.registry.hub import export_for_hub

    settings = settings_from(ctx)
    if not license.strip():
        raise UsageError("--license must not be empty (an SPDX-like id such as apache-2.0)")
    if repo_id is not None:
        _check_repo_id(repo_id)
    prepare_output(output, kind="dir", inputs=[bundle, evaluation], force=force, option="OUT")
    record = read_evaluation(evaluation) if evaluation is not None else None
    with err_console.status("exporting…"):
        done = export_for_hub(
            bundle,
            output,
            evaluation=record,
            license=license.strip(),
            dataset=dataset,
            repo_id=repo_id,
            cache_dir=settings.cache_dir,
        )
    for warning in done.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    extra = ", transformers weights" if done.transformers else ""
    console.print(
        escape(
            f"wrote Hub export to {done.directory}: {plural(done.files, 'file')} "
            f"(bundle, model card{extra}); push it with "
            f"`clip-har hub push {done.directory} --repo-id NAMESPACE/NAME`"
        ),
        soft_wrap=True,
    )


@app.command("push")
def push(
    folder: Path = typer.Argument(..., metavar="OUT", help="A `clip-har hub export` folder."),
    repo_id: str = typer.Option(..., "--repo-id", help=_REPO_ID_HELP),
    private: bool = typer.Option(False, "--private", help="Create the repository private."),
    revision: str | None = typer.Option(
        None, "--revision", help="Branch to push to (created if absent; default: main)."
    ),
    message: str | None = typer.Option(None, "--message", "-m", help="Commit message."),
) -> None:
    """Upload a Hub export to a model repository (created if it does not exist). The token
    comes from HF_TOKEN or the Hugging Face login cache."""
    from clip_har.registry.hub import push_to_hub

    _check_repo_id(repo_id)
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise HubError(f"{folder}: {what}; give the folder `clip-har hub export` wrote")
    with err_console.status(f"pushing to {repo_id}…"):
        done = push_to_hub(folder, repo_id, private=private, revision=revision, message=message)
    console.print(escape(f"pushed {folder} to {done.repo_url}"), soft_wrap=True)
    console.print(escape(f"commit {done.commit}: {done.commit_url}"), soft_wrap=True)


@app.command("pull")
def pull(
    repo_id: str = typer.Argument(..., metavar="ID", help=_REPO_ID_HELP),
    output: Path | None = output_option(
        None, kind="dir", help="Bundle folder to write (default: ./NAME)."
    ),
    revision: str | None = typer.Option(
        None, "--revision", help="Branch, tag or commit (default: main)."
    ),
    force: bool = force_option(),
) -> None:
    """Download a pushed repository and turn it back into a bundle (verified before it is
    published)."""
    from clip_har.registry.hub import default_pull_folder, pull_from_hub

    _check_repo_id(repo_id, "ID")
    target = output if output is not None else default_pull_folder(repo_id)
    prepare_output(target, kind="dir", force=force)
    with err_console.status(f"pulling {repo_id}…"):
        bundle = pull_from_hub(repo_id, target, revision=revision)
    console.print(
        escape(
            f"pulled {repo_id} into {bundle.directory}: bundle '{bundle.manifest.name}', "
            f"{plural(len(bundle.class_names), 'class')}; verified"
        ),
        soft_wrap=True,
    )
