"""Fan one run out to several backends, isolating their failures; build trackers by name."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from clip_har.config import split_commas
from clip_har.errors import ConfigError, TrackingError
from clip_har.io import noun_form
from clip_har.tracking.base import NullTracker, Status, Tracker
from clip_har.tracking.mlflow_backend import MLflowTracker
from clip_har.tracking.wandb_backend import WandbTracker

log = logging.getLogger(__name__)

BACKENDS = ("mlflow", "wandb", "none")


class FanOutTracker(Tracker):
    """Sends every call to each backend; a failing backend is dropped, with one warning.

    With ``strict`` a backend failure raises :class:`TrackingError` instead, so a run
    that must be tracked stops rather than going on untracked.
    """

    name = "fan-out"

    def __init__(self, trackers: Sequence[Tracker], *, strict: bool = False) -> None:
        self.trackers = list(trackers)
        self.strict = strict
        self._active = list(trackers)

    @property
    def active(self) -> list[Tracker]:
        """The backends still tracking (not dropped after a failure)."""
        return list(self._active)

    @property
    def run_id(self) -> str | None:
        """The first live backend's run id."""
        return next((t.run_id for t in self._active if t.run_id is not None), None)

    def _each(self, action: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self._active):
            try:
                call(tracker)
            except Exception as exc:
                self._active.remove(tracker)
                message = f"{tracker.name} tracking failed to {action}: {exc}"
                if self.strict:
                    if isinstance(exc, TrackingError):
                        raise
                    raise TrackingError(message) from exc
                log.warning("%s; training goes on without %s tracking", message, tracker.name)

    def start(self, run_name: str, *, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        self._each("start", lambda t: t.start(run_name, params=params, tags=tags))

    def log_metrics(
        self, metrics: Mapping[str, float], *, step: int, epoch: int | None = None
    ) -> None:
        self._each("log metrics", lambda t: t.log_metrics(metrics, step=step, epoch=epoch))

    def log_artifact(self, path: Path, *, name: str | None = None) -> None:
        self._each(f"log artifact {path}", lambda t: t.log_artifact(path, name=name))

    def finish(self, status: Status = "success") -> None:
        self._each("finish", lambda t: t.finish(status))


def parse_backends(names: str | Sequence[str]) -> list[str]:
    """Backend names from ``train.tracking`` (a list) or a ``--tracking mlflow,wandb`` option."""
    return (
        split_commas(names) if isinstance(names, str) else [n.strip() for n in names if n.strip()]
    )


def create_tracker(
    backends: Sequence[str], *, experiment: str, strict: bool = False, root: Path = Path()
) -> Tracker:
    """A tracker for ``backends`` (``mlflow``, ``wandb``; ``none`` or nothing: no tracking).

    ``experiment`` names the MLflow experiment and the W&B project; ``root`` holds the
    default local stores (``mlruns.db``, ``mlartifacts/``, ``wandb/``).
    """
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ConfigError(
            f"unknown tracking {noun_form(len(unknown), 'backend')} {', '.join(unknown)}: "
            f"choose from {', '.join(BACKENDS)}"
        )
    trackers: list[Tracker] = []
    for backend in dict.fromkeys(backends):
        if backend == "mlflow":
            trackers.append(MLflowTracker(experiment, root=root))
        elif backend == "wandb":
            trackers.append(WandbTracker(experiment, root=root))
    return FanOutTracker(trackers, strict=strict) if trackers else NullTracker()
