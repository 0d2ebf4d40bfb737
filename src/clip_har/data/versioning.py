"""Dataset versions with DVC: track data, configure remotes, push, pull, read versions.

Everything goes through ``python -m dvc``, DVC's command line. See docs/data.md#versioning-with-dvc.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clip_har.errors import DataVersionError
from clip_har.io import file_digest

logger = logging.getLogger(__name__)

DEFAULT_TRACKED_MANIFEST = Path("data/split/manifest.parquet")
"""The manifest the pipeline's last data stage writes (see ``dvc.yaml``)."""


def find_dvc_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` that holds a ``.dvc`` directory."""
    start = start.absolute()
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def _git_root(start: Path) -> Path | None:
    start = start.absolute()
    return next((f for f in (start, *start.parents) if (f / ".git").exists()), None)


def run_dvc(args: Sequence[str], cwd: Path) -> str:
    """Run ``dvc ARGS`` in ``cwd`` and return its stdout; a failure raises with DVC's words."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    command = [sys.executable, "-m", "dvc", *args]
    logger.info("running dvc %s (in %s)", " ".join(args), cwd)
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    except OSError as exc:
        raise DataVersionError(f"cannot run dvc: {exc}") from None
    if done.returncode != 0:
        if "No module named dvc" in done.stderr:
            raise DataVersionError("dvc is not installed: pip install dvc")
        message = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise DataVersionError(f"dvc {args[0]} failed: " + " ".join(message[-5:]))
    return done.stdout


def ensure_dvc_repo(start: Path) -> Path:
    """The DVC repository around ``start``; ``dvc init`` at the git root if there is none."""
    root = find_dvc_root(start)
    if root is not None:
        return root
    git_root = _git_root(start)
    if git_root is None:
        raise DataVersionError(
            f"{start} is not inside a git repository: run `git init` first (DVC versions data "
            "alongside git commits)"
        )
    run_dvc(["init", "--quiet"], git_root)
    run_dvc(["config", "core.analytics", "false"], git_root)
    logger.warning("initialised DVC in %s (commit .dvc/ and .dvcignore)", git_root)
    return git_root


def track(path: Path) -> str:
    """``dvc add PATH`` (initialising DVC if needed); returns the new version (md5)."""
    if not path.exists():
        raise DataVersionError(f"cannot track {path}: it does not exist")
    root = ensure_dvc_repo(path if path.is_dir() else path.parent)
    run_dvc(["add", str(path.absolute().relative_to(root))], root)
    return version(path)


def add_remote(
    name: str, url: str, *, cwd: Path, default: bool = True, force: bool = False
) -> Path:
    """``dvc remote add [-d] [-f] NAME URL``; a local folder URL is made absolute.

    Returns the root of the DVC repository configured.
    """
    root = ensure_dvc_repo(cwd)
    if "://" not in url:
        folder = Path(url).expanduser().absolute()
        if folder.exists() and not folder.is_dir():
            raise DataVersionError(f"remote {url} exists and is not a folder")
        url = str(folder)
    flags = [*(["--default"] if default else []), *(["--force"] if force else [])]
    run_dvc(["remote", "add", *flags, name, url], root)
    return root


def transfer(direction: str, *, cwd: Path, remote: str | None = None) -> str:
    """``dvc push`` or ``dvc pull`` (to/from ``remote`` or the default one); DVC's summary."""
    if direction not in ("push", "pull"):
        raise ValueError(f"direction must be push or pull, not {direction!r}")
    root = find_dvc_root(cwd)
    if root is None:
        raise DataVersionError(f"{cwd} is not inside a DVC repository")
    return run_dvc([direction, *(["--remote", remote] if remote else [])], root).strip()


def version(path: Path = DEFAULT_TRACKED_MANIFEST) -> str:
    """The md5 DVC recorded for ``path`` (a tracked file or folder): the data version.

    Raises :class:`DataVersionError` when ``path`` is not a DVC output. Warns when the
    file in the workspace no longer matches what DVC recorded.
    """
    root = find_dvc_root(path.parent)
    if root is None:
        raise DataVersionError(f"{path} is not inside a DVC repository")
    relative = path.absolute().relative_to(root)
    try:
        listing = json.loads(run_dvc(["ls", ".", str(relative.parent), "--json"], root))
    except DataVersionError as exc:
        raise DataVersionError(f"{path}: no data version ({exc})") from None
    entry: dict[str, Any] = next((e for e in listing if e.get("path") == relative.name), {})
    md5 = entry.get("md5") if entry.get("isout") else None
    if not md5:
        raise DataVersionError(
            f"{path} is not tracked by DVC: run `dvc repro` or `clip-har data track {path}`"
        )
    if path.is_file() and file_digest(path, "md5") != md5:
        logger.warning("%s changed since DVC recorded version %s", path, md5)
    return str(md5)
