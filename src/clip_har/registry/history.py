"""The promotion history: one registered-model tag per decision, since MLflow aliases keep none.

Each promote, refusal, forced promote and rollback is a tag
``clip_har.history.<UTC epoch ms, zero-padded>-<4 hex>`` on the registered model, holding
compact JSON (time, user, action, alias, from, to, metric, candidate, holder, tolerance,
greater_is_better, reason, host). Tags live in the registry itself, so the record travels
with the store: a local SQLite file and an ``mlflow server`` alike.
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import os
import re
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from clip_har.registry.store import TAG_PREFIX, get_model

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import RegisteredModel

log = logging.getLogger(__name__)

HISTORY_TAG_PREFIX = f"{TAG_PREFIX}history."
_HISTORY_KEY = re.compile(rf"^{re.escape(HISTORY_TAG_PREFIX)}(?P<ms>[0-9]+)-[0-9a-f]{{4}}$")
_MS_DIGITS = 15  # zero padding: keys sort by time as text too

Action = Literal["promote", "refuse", "force", "rollback"]
ACTIONS: tuple[str, ...] = get_args(Action)

USER_ENV = "CLIP_HAR_USER"
MAX_REASON_CHARS = 2000
"""Longer reasons are cut (ending in :data:`TRUNCATED`): a history line stays readable."""
MAX_EVENT_CHARS = 5000
"""The whole JSON record stays within this: MLflow's SQL stores keep registered-model tag
values in a 5000-character column (SQLite does not enforce it, PostgreSQL and MySQL do)."""
TRUNCATED = "… (truncated)"


@dataclass(frozen=True)
class Event:
    """One decision about an alias: ``from_version`` held it before (``None``: nobody),
    ``to_version`` is the candidate (refused, promoted) or the version restored (rollback)."""

    time: str  # ISO 8601, UTC, milliseconds
    user: str
    action: Action
    alias: str
    from_version: int | None
    to_version: int
    metric: str
    candidate: float | None  # the metric of to_version
    holder: float | None  # the metric of from_version
    tolerance: float | None  # None for a rollback: it does not pass through the gate
    reason: str | None
    host: str
    greater_is_better: bool | None = None  # the gate's direction; None for a rollback
    tag: str = ""  # the registered-model tag holding it (empty until recorded)

    def to_json(self) -> dict[str, Any]:
        """The record as stored: ``from`` and ``to`` rather than the field names."""
        record = asdict(self)
        record["from"] = record.pop("from_version")
        record["to"] = record.pop("to_version")
        record.pop("tag")
        return record

    @classmethod
    def from_json(cls, record: Any, tag: str = "") -> Event:
        """An event from its stored record; ``ValueError`` when the record is not one."""
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        action = record.get("action")
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        if datetime.fromisoformat(_text(record, "time")).tzinfo is None:  # raises if garbled
            raise ValueError("'time' has no time zone")
        return cls(
            time=_text(record, "time"),
            user=_text(record, "user"),
            action=cast(Action, action),
            alias=_text(record, "alias"),
            from_version=_version(record.get("from"), optional=True),
            to_version=cast(int, _version(record.get("to"), optional=False)),
            metric=_text(record, "metric"),
            candidate=_number(record.get("candidate")),
            holder=_number(record.get("holder")),
            tolerance=_number(record.get("tolerance")),
            reason=None if record.get("reason") is None else str(record["reason"]),
            host=str(record.get("host") or ""),
            greater_is_better=_flag(record.get("greater_is_better")),
            tag=tag,
        )

    @property
    def when(self) -> datetime:
        return datetime.fromisoformat(self.time)


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' is missing or not text")
    return value


def _version(value: Any, *, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"version {value!r} is not a number")
    number = int(value)
    if number < 1:
        raise ValueError(f"version {value!r} is not a positive number")
    return number


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _flag(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ValueError(f"{value!r} is not true or false")


def current_user(user: str | None = None) -> str:
    """``user``, else ``$CLIP_HAR_USER``, else the login name (``unknown`` without one)."""
    if user and user.strip():
        return user.strip()
    named = os.environ.get(USER_ENV, "").strip()
    if named:
        return named
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry or $USER
        return "unknown"


def cut_reason(reason: str | None, limit: int = MAX_REASON_CHARS) -> str | None:
    """``reason`` stripped (``None`` when empty), cut to ``limit`` characters."""
    if reason is None or not reason.strip():
        return None
    reason = reason.strip()
    if len(reason) <= limit:
        return reason
    log.warning("the reason has %d characters: the history keeps the first %d", len(reason), limit)
    return reason[: max(limit - len(TRUNCATED), 0)] + TRUNCATED


def new_event(
    action: Action,
    *,
    alias: str,
    from_version: int | None,
    to_version: int,
    metric: str,
    candidate: float | None,
    holder: float | None,
    tolerance: float | None,
    reason: str | None,
    user: str | None,
    greater_is_better: bool | None = None,
) -> Event:
    """An event not yet recorded (its time is set when it is: :func:`record`)."""
    return Event(
        time="",
        user=current_user(user),
        action=action,
        alias=alias,
        from_version=from_version,
        to_version=to_version,
        metric=metric,
        candidate=_finite(candidate),
        holder=_finite(holder),
        tolerance=tolerance,
        reason=cut_reason(reason),
        host=socket.gethostname(),
        greater_is_better=greater_is_better,
    )


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _encode(event: Event) -> str:
    """Compact JSON within :data:`MAX_EVENT_CHARS`, cutting the reason further if needed
    (escaped characters take more room in JSON than in the reason)."""
    record = event.to_json()

    def encoded(reason: str | None) -> str:
        return json.dumps(record | {"reason": reason}, separators=(",", ":"), ensure_ascii=False)

    text = encoded(event.reason)
    if len(text) <= MAX_EVENT_CHARS or not event.reason:
        return text
    whole = event.reason.removesuffix(TRUNCATED)
    low, high = 0, len(whole)  # the longest start of the reason that fits: binary search
    while low < high:
        middle = (low + high + 1) // 2
        if len(encoded(whole[:middle] + TRUNCATED)) <= MAX_EVENT_CHARS:
            low = middle
        else:
            high = middle - 1
    return encoded(whole[:low] + TRUNCATED if low else None)


def _history_tags(model: RegisteredModel) -> dict[str, str]:
    return {k: v for k, v in (model.tags or {}).items() if k.startswith(HISTORY_TAG_PREFIX)}


def record(client: MlflowClient, name: str, event: Event) -> Event:
    """Store ``event`` as a new history tag of ``name``, timed now; the stored event.

    Keys are strictly increasing within a store (one millisecond past the newest event at
    least), so events recorded in quick succession keep their order.
    """
    newest = max(
        (
            int(m["ms"])
            for k in _history_tags(get_model(client, name))
            if (m := _HISTORY_KEY.match(k))
        ),
        default=0,
    )
    ms = max(time.time_ns() // 1_000_000, newest + 1)
    stamp = datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
    tag = f"{HISTORY_TAG_PREFIX}{ms:0{_MS_DIGITS}d}-{secrets.token_hex(2)}"
    stored = Event(**{**asdict(event), "time": stamp, "tag": tag})
    client.set_registered_model_tag(name, tag, _encode(stored))
    log.info("recorded %s of %s@%s in %s", stored.action, name, stored.alias, tag)
    return stored


def history(client: MlflowClient, name: str, alias: str | None = None) -> list[Event]:
    """Every recorded event of ``name`` (of ``alias`` only, when given), oldest first.

    A tag that is not a readable event is skipped with a warning: the history of a store
    someone edited by hand still reads.
    """
    events = []
    for tag, value in _history_tags(get_model(client, name)).items():
        try:
            event = Event.from_json(json.loads(value), tag)
        except (ValueError, TypeError) as exc:
            log.warning(
                "ignoring history tag %s of '%s': not a readable event (%s)", tag, name, exc
            )
            continue
        if alias is None or event.alias == alias:
            events.append(event)
    return sorted(events, key=lambda e: (e.when, e.tag))
