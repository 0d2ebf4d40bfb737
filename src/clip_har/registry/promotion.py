"""The promotion gate and rollback: the only ways an alias (``@production``) moves.

A candidate passes the gate unless its primary metric (params ``registry.primary_metric``,
the model-version tag ``clip_har.metric.<name>``) is worse than the current holder's by
more than ``registry.tolerance`` (lower is worse, or higher when
``registry.greater_is_better`` is false), or the candidate lacks the metric: the gate never
passes on a metric it cannot read. A forced promotion overrides the gate and needs a
reason. Every decision but "unchanged" is recorded in the promotion history
(:mod:`clip_har.registry.history`), which rollback replays.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from clip_har.errors import ModelRegistryError, PromotionRefusedError, UsageError
from clip_har.registry.history import Event, history, new_event, record
from clip_har.registry.store import (
    TAG_METRIC,
    ModelRef,
    check_alias,
    check_name,
    get_model,
    get_version,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from clip_har.config import RegistrySettings

log = logging.getLogger(__name__)

DecisionAction = Literal["promote", "force", "unchanged", "rollback"]
_RESERVED_ALIAS = re.compile(r"^(latest|v[0-9]+)$", re.IGNORECASE)  # MLflow's own names


@dataclass(frozen=True)
class Decision:
    """What happened to ``alias`` of ``name``: ``version`` holds it now when ``promoted``;
    ``previous`` held it before. ``event`` is the history record (``None``: unchanged,
    nothing recorded)."""

    action: DecisionAction
    promoted: bool
    message: str
    name: str
    alias: str
    version: int
    previous: int | None
    event: Event | None

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "promoted": self.promoted,
            "message": self.message,
            "name": self.name,
            "alias": self.alias,
            "version": self.version,
            "previous": self.previous,
            "event": None if self.event is None else self.event.to_json() | {"tag": self.event.tag},
        }


def check_promotion_alias(alias: str) -> str:
    """``alias`` if an alias may be set to it (MLflow reserves ``latest`` and ``v<N>``)."""
    check_alias(alias)
    if _RESERVED_ALIAS.match(alias):
        raise UsageError(f"alias {alias!r} is reserved by MLflow: choose another name")
    return alias


def check_force(force: bool, reason: str | None) -> None:
    """A forced promotion needs a reason (a UsageError without one)."""
    if force and not (reason and reason.strip()):
        raise UsageError(
            "--force needs a --reason: say why the gate is overridden (the promotion history "
            "keeps it)"
        )


def version_number(version: int | str) -> int:
    """``version`` as a positive number, else a UsageError."""
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"invalid model version {version!r}: a positive number (1, 2, ...)")
    return int(text)


def metric_value(version: ModelVersion | None, metric: str) -> float | None:
    """The ``metric`` tag of ``version`` as a number; ``None`` when absent or unreadable."""
    if version is None:
        return None
    text = (version.tags or {}).get(f"{TAG_METRIC}{metric}")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        log.warning(
            "version %s has an unreadable %s tag %r: treated as missing",
            version.version,
            metric,
            text,
        )
        return None
    return value


def current_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points at, ``None`` when it is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise ModelRegistryError(f"cannot read @{alias} of '{name}': {exc.message}") from None


def _set_alias(client: MlflowClient, name: str, alias: str, version: int) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:
        raise ModelRegistryError(
            f"cannot point @{alias} of '{name}' at version {version}: {exc.message}"
        ) from None


def _score(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def available_metrics(version: ModelVersion) -> list[str]:
    """The metric names ``version`` is tagged with (``clip_har.metric.<name>``), sorted."""
    tags = version.tags or {}
    return sorted(k.removeprefix(TAG_METRIC) for k in tags if k.startswith(TAG_METRIC))


@dataclass(frozen=True)
class Gate:
    """The gate's settings: the metric, its direction and the tolerance."""

    metric: str
    greater_is_better: bool
    tolerance: float

    @property
    def direction(self) -> str:
        return "higher is better" if self.greater_is_better else "lower is better"

    def worse(self, candidate: float, holder: float) -> bool:
        """Whether ``candidate`` is worse than ``holder`` by more than the tolerance."""
        if self.greater_is_better:
            return candidate < holder - self.tolerance
        return candidate > holder + self.tolerance

    def bound(self, holder: float) -> str:
        """The score a candidate needs, in words."""
        if self.greater_is_better:
            return f"at least {_score(holder - self.tolerance)}"
        return f"at most {_score(holder + self.tolerance)}"


def _missing(candidate: ModelVersion, gate: Gate) -> str:
    """What ``candidate`` has instead of the gate's metric, with the setting to check."""
    found = available_metrics(candidate)
    has = f"it has {', '.join(found)}" if found else "it has no metric tags at all"
    return f"{has}; check params registry.primary_metric ({gate.metric!r})"


def _gate(
    name: str,
    version: ModelVersion,
    alias: str,
    previous: int | None,
    *,
    gate: Gate,
    candidate: float | None,
    holder: float | None,
) -> str | None:
    """Why the gate refuses ``version`` (``None``: it passes)."""
    number, metric, tag = int(version.version), gate.metric, f"{TAG_METRIC}{gate.metric}"
    if candidate is None:
        if previous is None:
            against = f"@{alias} has no holder yet"
        elif holder is None:
            against = f"neither has version {previous}, holding @{alias}"
        else:
            against = f"version {previous}, holding @{alias}, has {_score(holder)}"
        return (
            f"version {number} of '{name}' has no {metric} (model-version tag {tag}) and "
            f"{against}: the gate cannot pass a metric it cannot read ({_missing(version, gate)})"
        )
    if previous is None or holder is None:
        return None
    if gate.worse(candidate, holder):
        side, margin = ("below", "minus") if gate.greater_is_better else ("above", "plus")
        return (
            f"version {number} of '{name}' scores {metric} {_score(candidate)}, {side} "
            f"version {previous} holding @{alias} ({_score(holder)}) {margin} the tolerance "
            f"{gate.tolerance:g} ({gate.direction}: params registry.greater_is_better, "
            f"registry.tolerance): it needs {gate.bound(holder)}"
        )
    return None


def promote_version(
    client: MlflowClient,
    name: str,
    version: int | str,
    alias: str,
    *,
    settings: RegistrySettings,
    force: bool = False,
    reason: str | None = None,
    user: str | None = None,
) -> Decision:
    """Point ``alias`` of ``name`` at ``version`` if it passes the gate (or ``force``).

    A refusal is recorded, then raised as :class:`PromotionRefusedError`. ``force`` needs a
    ``reason`` (:class:`UsageError` otherwise) and is recorded as "force" when the gate
    would have refused. Promoting the version that already holds the alias changes and
    records nothing ("unchanged").
    """
    check_name(name)
    check_promotion_alias(alias)
    check_force(force, reason)
    number = version_number(version)
    candidate = get_version(client, ModelRef(name, number))
    holder = current_holder(client, name, alias)
    previous = None if holder is None else int(holder.version)
    if previous == number:
        return Decision(
            "unchanged",
            False,
            f"version {number} of '{name}' already holds @{alias}: nothing changed, nothing "
            "recorded",
            name,
            alias,
            number,
            previous,
            None,
        )
    gate = Gate(settings.primary_metric, settings.greater_is_better, settings.tolerance)
    metric, tolerance = gate.metric, gate.tolerance
    scores = {"candidate": metric_value(candidate, metric), "holder": metric_value(holder, metric)}
    refusal = _gate(name, candidate, alias, previous, gate=gate, **scores)

    def event(action: Literal["promote", "refuse", "force"]) -> Event:
        draft = new_event(
            action,
            alias=alias,
            from_version=previous,
            to_version=number,
            metric=metric,
            tolerance=tolerance,
            greater_is_better=gate.greater_is_better,
            reason=reason,
            user=user,
            **scores,
        )
        return record(client, name, draft)

    if refusal is not None and not force:
        event("refuse")
        raise PromotionRefusedError(
            f"promotion refused: {refusal}. To promote it anyway: clip-har registry promote "
            f"{name} {number} --alias {alias} --force --reason TEXT"
        )
    _set_alias(client, name, alias, number)
    action: Literal["promote", "force"] = "force" if refusal is not None else "promote"
    recorded = event(action)
    was = f"was version {previous}" if previous is not None else "it held no version"
    if refusal is not None:
        detail = f"forced over the gate: {refusal}"
    elif previous is None:
        detail = f"the first holder, {metric} {_score(scores['candidate'])}"
    elif scores["holder"] is None:
        detail = f"{metric} {_score(scores['candidate'])}; version {previous} had none to compare"
    else:
        detail = (
            f"{metric} {_score(scores['candidate'])} vs {_score(scores['holder'])}, "
            f"{gate.direction}, tolerance {tolerance:g}"
        )
    if force and refusal is None:
        detail += " (--force was not needed: the gate passed)"
    return Decision(
        action,
        True,
        f"version {number} of '{name}' now holds @{alias} ({was}); {detail}",
        name,
        alias,
        number,
        previous,
        recorded,
    )


def restore_stack(events: list[Event]) -> list[int | None]:
    """The holders rollback may restore, the next one last, replaying ``events`` of one
    alias in order: a promotion pushes the version it replaced (``None``: none), a rollback
    pops up to and including the version it restored (one entry when that is not there)."""
    stack: list[int | None] = []
    for event in events:
        if event.action in ("promote", "force"):
            stack.append(event.from_version)
        elif event.action == "rollback" and stack:
            if event.to_version in stack:
                del stack[len(stack) - 1 - stack[::-1].index(event.to_version) :]
            else:
                stack.pop()
    return stack


def rollback(
    client: MlflowClient,
    name: str,
    alias: str,
    *,
    reason: str | None = None,
    user: str | None = None,
) -> Decision:
    """Point ``alias`` back at the version that held it before (the promotion history says
    which; consecutive rollbacks walk further back). Versions deleted since are skipped.
    It does not pass through the gate: the version restored held the alias before."""
    from mlflow.exceptions import MlflowException

    check_name(name)
    check_promotion_alias(alias)
    get_model(client, name)
    events = history(client, name, alias)
    holder = current_holder(client, name, alias)
    current = None if holder is None else int(holder.version)
    stack = restore_stack(events)
    notes: list[str] = []
    restored: ModelVersion | None = None
    while stack and restored is None:
        target = stack.pop()
        if target is None:
            break  # before that promotion the alias pointed nowhere
        if target == current:
            notes.append(f"version {target} already holds @{alias}")
            continue
        try:
            restored = client.get_model_version(name, str(target))
        except MlflowException:
            notes.append(f"version {target} was deleted")
    skipped = f" ({'; '.join(notes)}: skipped)" if notes else ""
    if restored is None:
        raise ModelRegistryError(
            f"@{alias} of '{name}' has no previous holder to restore{skipped}: "
            f"`clip-har registry history {name} --alias {alias}` shows its record"
        )
    number = int(restored.version)
    metric = events[-1].metric  # the stack is not empty: there are events
    _set_alias(client, name, alias, number)
    recorded = record(
        client,
        name,
        new_event(
            "rollback",
            alias=alias,
            from_version=current,
            to_version=number,
            metric=metric,
            candidate=metric_value(restored, metric),
            holder=metric_value(holder, metric),
            tolerance=None,
            reason=reason,
            user=user,
        ),
    )
    was = f"was version {current}" if current is not None else "it held no version"
    return Decision(
        "rollback",
        True,
        f"version {number} of '{name}' holds @{alias} again ({was}){skipped}",
        name,
        alias,
        number,
        current,
        recorded,
    )
