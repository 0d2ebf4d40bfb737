"""MLflow tracking: a local SQLite store by default, any server through ``MLFLOW_TRACKING_URI``."""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_har.errors import TrackingError
from clip_har.tracking.base import Status, Tracker, with_epoch
from clip_har.tracking.lineage import run_params

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_DB = "mlruns.db"
DEFAULT_ARTIFACTS = "mlartifacts"
PROBE_TIMEOUT_S = 5.0
"""How long a tracking server may take to answer before the run goes on without it."""

_MAX_PARAM_CHARS = 6000  # MLflow rejects longer parameter values
_BATCH = 100  # MLflow's limit on params/tags per log_batch call


def default_tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store ``ROOT/mlruns.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / DEFAULT_DB).absolute()}"


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`TrackingError` unless the HTTP tracking server at ``uri`` answers.

    Any HTTP answer counts (even 401/404): only a refused, unresolvable or silent server
    fails, within ``timeout`` seconds rather than after MLflow's minutes of retries.
    """
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}): start it, or unset "
            "MLFLOW_TRACKING_URI to track into a local SQLite store"
        ) from None


class MLflowTracker(Tracker):
    """One MLflow run in ``experiment``.

    ``tracking_uri`` defaults to :func:`default_tracking_uri`; with the default SQLite
    store a new experiment keeps its artifacts in ``ROOT/mlartifacts``.
    """

    name = "mlflow"

    def __init__(
        self, experiment: str, *, tracking_uri: str | None = None, root: Path = Path()
    ) -> None:
        self.experiment = experiment
        self.tracking_uri = tracking_uri or default_tracking_uri(root)
        self.root = root
        self._client: MlflowClient | None = None
        self._run_id: str | None = None

    @property
    def run_id(self) -> str | None:
        """The MLflow run id; kept after ``finish`` for lineage."""
        return self._run_id

    def _experiment_id(self, client: MlflowClient) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            location = None
            if self.tracking_uri.startswith("sqlite:"):
                folder = self.root / DEFAULT_ARTIFACTS
                folder.mkdir(parents=True, exist_ok=True)
                location = folder.absolute().as_uri()
            return client.create_experiment(self.experiment, artifact_location=location)
        if found.lifecycle_stage != "active":
            raise TrackingError(
                f"MLflow experiment '{self.experiment}' is deleted in {self.tracking_uri}: "
                "restore it (`mlflow experiments restore`) or track into another experiment"
            )
        return str(found.experiment_id)

    def start(self, run_name: str, *, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        if self.tracking_uri.startswith(("http://", "https://")):
            probe_server(self.tracking_uri)
        elif self.tracking_uri.startswith("sqlite:"):
            self.root.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        run_tags = dict(tags)
        if "git_commit" in run_tags:
            run_tags["mlflow.source.git.commit"] = run_tags["git_commit"]
        run = client.create_run(self._experiment_id(client), run_name=run_name, tags=run_tags)
        self._client, self._run_id = client, run.info.run_id
        flat = [Param(k, str(v)[:_MAX_PARAM_CHARS]) for k, v in run_params(params).items()]
        for first in range(0, len(flat), _BATCH):
            client.log_batch(self._run_id, params=flat[first : first + _BATCH])
        log.info("MLflow run %s (%s) in %s", run_name, self._run_id, self.tracking_uri)

    def _open(self) -> tuple[MlflowClient, str]:
        if self._client is None or self._run_id is None:
            raise TrackingError("the MLflow run is not started")
        return self._client, self._run_id

    def log_metrics(
        self, metrics: Mapping[str, float], *, step: int, epoch: int | None = None
    ) -> None:
        from mlflow.entities import Metric

        client, run_id = self._open()
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in with_epoch(metrics, epoch).items()]
        client.log_batch(run_id, metrics=batch)

    def log_artifact(self, path: Path, *, name: str | None = None) -> None:
        client, run_id = self._open()
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=name or path.name)
        elif path.is_file():
            client.log_artifact(run_id, str(path), artifact_path=name)
        else:
            raise TrackingError(f"cannot log artifact {path}: it does not exist")

    def finish(self, status: Status = "success") -> None:
        if self._client is None or self._run_id is None:
            return
        client, self._client = self._client, None
        client.set_terminated(self._run_id, status="FINISHED" if status == "success" else "FAILED")
