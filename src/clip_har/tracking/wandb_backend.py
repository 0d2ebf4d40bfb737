"""Weights & Biases tracking: offline unless W&B is configured to go online."""

from __future__ import annotations

import logging
import netrc
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from clip_har.errors import TrackingError
from clip_har.tracking.base import Status, Tracker, with_epoch
from clip_har.tracking.lineage import run_params

if TYPE_CHECKING:
    from wandb import Run

log = logging.getLogger(__name__)

Mode = Literal["online", "offline", "disabled", "shared"]


def _has_credentials() -> bool:
    """An API key in the environment, or a ``wandb login`` entry in the netrc file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: Mode | None) -> Mode | None:
    """``mode`` if given; ``None`` (W&B reads it) when ``WANDB_MODE`` is set; else
    ``online`` with credentials and ``offline`` without."""
    if mode is not None or os.environ.get("WANDB_MODE"):
        return mode
    return "online" if _has_credentials() else "offline"


def artifact_name(text: str) -> str:
    """A W&B artifact name: letters, digits, ``-``, ``_`` and ``.`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "artifact"


class WandbTracker(Tracker):
    """One W&B run in ``project``; run files go to ``WANDB_DIR`` or ``root``.

    Tags become config entries ``tag.KEY`` (W&B tags are bare labels, not key/values).
    ``finish`` also stops W&B's service process so nothing lingers after the run.
    """

    name = "wandb"

    def __init__(self, project: str, *, mode: Mode | None = None, root: Path = Path()) -> None:
        self.project = project
        self.mode = resolve_mode(mode)
        self.directory = Path(os.environ.get("WANDB_DIR") or root)
        self._run: Run | None = None
        self._run_id: str | None = None
        self._run_dir: Path | None = None

    @property
    def run_id(self) -> str | None:
        """The W&B run id; kept after ``finish`` for lineage."""
        return self._run_id

    @property
    def run_dir(self) -> Path | None:
        """The run's local directory (``.../wandb/offline-run-*`` offline), once started."""
        return self._run_dir

    def start(self, run_name: str, *, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        config = {**run_params(params), **{f"tag.{k}": v for k, v in tags.items()}}
        self._run = wandb.init(
            project=self.project,
            name=run_name,
            config=config,
            dir=self.directory,
            mode=self.mode,
            reinit="create_new",
        )
        self._run_id = self._run.id
        self._run_dir = Path(self._run.settings.sync_dir)
        mode = self._run.settings.mode
        log.info("W&B run %s (%s, %s) in %s", run_name, self._run_id, mode, self._run_dir)

    def _open(self) -> Run:
        if self._run is None:
            raise TrackingError("the W&B run is not started")
        return self._run

    def log_metrics(
        self, metrics: Mapping[str, float], *, step: int, epoch: int | None = None
    ) -> None:
        self._open().log(with_epoch(metrics, epoch), step=step)

    def log_artifact(self, path: Path, *, name: str | None = None) -> None:
        import wandb

        run = self._open()
        if path.is_dir():
            artifact = wandb.Artifact(artifact_name(name or path.name), type="directory")
            artifact.add_dir(str(path))
        elif path.is_file():
            artifact = wandb.Artifact(artifact_name(name or path.stem), type="file")
            artifact.add_file(str(path))
        else:
            raise TrackingError(f"cannot log artifact {path}: it does not exist")
        run.log_artifact(artifact)

    def finish(self, status: Status = "success") -> None:
        import wandb

        if self._run is None:
            return
        run, self._run = self._run, None
        try:
            run.finish(exit_code=0 if status == "success" else 1)
        finally:
            wandb.teardown()
