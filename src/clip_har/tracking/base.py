"""The ``Tracker`` protocol every experiment-tracking backend follows, and its helpers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

Status = Literal["success", "failed"]
ParamValue = str | int | float | bool


class Tracker(Protocol):
    """One experiment run in one (or several) tracking backends.

    Call order: ``start`` once, then any number of ``log_metrics``/``log_artifact``,
    then ``finish``. Used as a context manager, a tracker finishes itself: ``success``
    on a clean exit, ``failed`` when an exception escapes. ``finish`` is idempotent.
    """

    name: str

    @property
    def run_id(self) -> str | None:
        """The backend's id for the current run (``None`` before ``start``)."""
        ...

    def start(self, run_name: str, *, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        """Open a run and record ``params`` (nested mappings are flattened) and ``tags``."""
        ...

    def log_metrics(
        self, metrics: Mapping[str, float], *, step: int, epoch: int | None = None
    ) -> None:
        """Record ``metrics`` at global ``step`` (never decreasing); ``epoch`` is logged too."""
        ...

    def log_artifact(self, path: Path, *, name: str | None = None) -> None:
        """Store a file or directory with the run (under ``name``, if given)."""
        ...

    def finish(self, status: Status = "success") -> None:
        """Close the run with ``status``; a no-op when no run is open."""
        ...

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish("failed" if exc_type is not None else "success")


class NullTracker(Tracker):
    """Tracks nothing: the backend list ``none``, or every backend disabled."""

    name = "none"

    @property
    def run_id(self) -> str | None:
        return None

    def start(self, run_name: str, *, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        """Do nothing."""

    def log_metrics(
        self, metrics: Mapping[str, float], *, step: int, epoch: int | None = None
    ) -> None:
        """Do nothing."""

    def log_artifact(self, path: Path, *, name: str | None = None) -> None:
        """Do nothing."""

    def finish(self, status: Status = "success") -> None:
        """Do nothing."""


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, ParamValue]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become JSON, other objects ``str``."""
    flat: dict[str, ParamValue] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, str | int | float | bool):
            flat[name] = value
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = str(value)
    return flat


def with_epoch(metrics: Mapping[str, float], epoch: int | None) -> dict[str, float]:
    """``metrics`` plus an ``epoch`` entry when ``epoch`` is given."""
    return {**metrics, **({"epoch": float(epoch)} if epoch is not None else {})}
