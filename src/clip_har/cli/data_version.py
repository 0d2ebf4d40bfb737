"""``clip-har data track|remote|push|pull|version``: dataset versions with DVC."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from clip_har.cli.common import console, err_console
from clip_har.data import versioning

remote_app = typer.Typer(help="Configure DVC remotes (where data versions are stored).")


def track_command(
    path: Path = typer.Argument(
        ..., metavar="PATH", help="File or folder to version (runs `dvc add`)."
    ),
) -> None:
    """Version PATH with DVC (initialising DVC in the git repository if needed)."""
    md5 = versioning.track(path)
    console.print(md5)
    err_console.print(
        f"tracked {escape(str(path))}: commit {escape(str(path))}.dvc and .gitignore with git, "
        "then `clip-har data push`"
    )


@remote_app.command("add")
def remote_add(
    name: str = typer.Argument(..., metavar="NAME", help="Remote name."),
    url: str = typer.Argument(
        ..., metavar="URL", help="A local folder, or a URL such as s3://bucket/path."
    ),
    default: bool = typer.Option(True, "--default/--no-default", help="Make it the default."),
    force: bool = typer.Option(False, "--force", help="Replace a remote of that name."),
) -> None:
    """Add a DVC remote (a local folder works with no extra package)."""
    root = versioning.add_remote(name, url, cwd=Path.cwd(), default=default, force=force)
    err_console.print(f"remote {escape(name)} added to {escape(str(root))}/.dvc/config")


def push_command(
    remote: str | None = typer.Option(None, "--remote", "-r", help="Remote (default: default)."),
) -> None:
    """Upload tracked data and pipeline outputs to the remote (`dvc push`)."""
    console.print(escape(versioning.transfer("push", cwd=Path.cwd(), remote=remote)))


def pull_command(
    remote: str | None = typer.Option(None, "--remote", "-r", help="Remote (default: default)."),
) -> None:
    """Download tracked data and pipeline outputs from the remote (`dvc pull`)."""
    console.print(escape(versioning.transfer("pull", cwd=Path.cwd(), remote=remote)))


def version_command(
    path: Path = typer.Argument(
        versioning.DEFAULT_TRACKED_MANIFEST, metavar="PATH", help="A DVC-tracked file or folder."
    ),
) -> None:
    """Print the data version: the md5 DVC recorded for PATH (the split manifest by default)."""
    console.print(versioning.version(path))
