"""Stratified, group-aware train/val/test splits: a duplicate group never spans two splits.

See docs/data.md#splits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from clip_har.config import DEFAULT_NEAR_DISTANCE, DEFAULT_SPLIT_RATIOS
from clip_har.data.duplicates import duplicate_group_ids
from clip_har.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_UNLABELLED = "<unlabelled>"


@dataclass
class SplitResult:
    """The manifest with its ``split`` column filled in, plus a report."""

    manifest: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)


def targets(count: int, ratios: Sequence[float]) -> list[int]:
    """Integer counts per split summing to ``count`` (largest remainder method)."""
    raw = [count * r for r in ratios]
    base = [int(np.floor(v)) for v in raw]
    order = sorted(range(3), key=lambda i: (raw[i] - base[i], -i), reverse=True)
    for i in order[: count - sum(base)]:
        base[i] += 1
    return base


def split_manifest(
    frame: pd.DataFrame,
    ratios: Sequence[float] = DEFAULT_SPLIT_RATIOS,
    *,
    seed: int = 0,
    near_distance: int = DEFAULT_NEAR_DISTANCE,
) -> SplitResult:
    """Assign ``split`` to every row; duplicates share a split; report counts and leakage.

    An empty manifest is a :class:`DataError`; a split left empty despite a positive
    ratio (too few rows) is logged as a warning.
    """
    if frame.empty:
        raise DataError("the manifest has no rows to split")
    manifest = frame.reset_index(drop=True).copy()
    groups = duplicate_group_ids(manifest, max_distance=near_distance).to_numpy()
    labels = manifest["label"].fillna(_UNLABELLED).astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(manifest), dtype=object)
    goals: dict[str, list[int]] = {}
    for label in sorted(set(labels)):
        rows = np.flatnonzero(labels == label)
        goal = goals[label] = targets(len(rows), ratios)
        got = [0, 0, 0]
        members: dict[int, list[int]] = {}
        for row in rows:
            members.setdefault(int(groups[row]), []).append(int(row))
        keys = list(members)
        rng.shuffle(keys)
        keys.sort(key=lambda k: -len(members[k]))  # stable: big groups first, seeded ties
        for key in keys:
            split = max(range(3), key=lambda i: (goal[i] - got[i], ratios[i], -i))
            for member in members[key]:
                assignment[member] = SPLITS[split]
            got[split] += len(members[key])
    _keep_groups_together(assignment, groups)
    per_class = {
        label: {
            "target": dict(zip(SPLITS, goal, strict=True)),
            "actual": {s: int(((labels == label) & (assignment == s)).sum()) for s in SPLITS},
        }
        for label, goal in goals.items()
    }
    manifest["split"] = pd.array(assignment, dtype="string")
    counts = {s: int((assignment == s).sum()) for s in SPLITS}
    report = {
        "ratios": dict(zip(SPLITS, ratios, strict=True)),
        "seed": seed,
        "near_distance": near_distance,
        "counts": counts,
        "per_class": per_class,
        "max_deviation_from_target": max(
            (abs(c["actual"][s] - c["target"][s]) for c in per_class.values() for s in SPLITS),
            default=0,
        ),
        "cross_split_leakage": leakage(manifest, groups),
    }
    for name, ratio in zip(SPLITS, ratios, strict=True):
        if ratio > 0 and not counts[name]:
            logger.warning(
                "the %s split is empty: %s too few for ratio %s",
                name,
                "1 row is" if len(manifest) == 1 else f"{len(manifest)} rows are",
                ratio,
            )
    return SplitResult(manifest, report)


def _keep_groups_together(assignment: np.ndarray, groups: np.ndarray) -> None:
    """A group whose rows carry conflicting labels was dealt per class; unify it."""
    first: dict[int, str] = {}
    for row, group in enumerate(groups):
        assignment[row] = first.setdefault(int(group), assignment[row])


def leakage(manifest: pd.DataFrame, groups: np.ndarray) -> int:
    """Number of duplicate groups (exact or near) whose rows span more than one split."""
    spans = pd.DataFrame({"group": groups, "split": manifest["split"].to_numpy()})
    return int((spans.groupby("group")["split"].nunique() > 1).sum())
