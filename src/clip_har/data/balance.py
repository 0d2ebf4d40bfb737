"""Class balance: loss weights, a weighted sampler, and resampling to a target count.

See docs/data.md#class-balance.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from clip_har.data.manifest import conform
from clip_har.errors import BalanceError
from clip_har.io import REPORT_CSS, esc, html_table, noun_form, plural, png_base64

if TYPE_CHECKING:  # torch is imported where it is used: the CLI and resample() stay light
    import torch
    from torch.utils.data import WeightedRandomSampler

__all__ = [
    "HTML_FILE",
    "JSON_FILE",
    "MAX_TARGET",
    "SCHEMES",
    "TARGETS",
    "BalanceResult",
    "class_counts",
    "class_weights",
    "parse_target",
    "render_html",
    "resample",
    "sample_weights",
    "weighted_sampler",
]

logger = logging.getLogger(__name__)

JSON_FILE = "balance_report.json"
HTML_FILE = "balance_report.html"
SCHEMES = ("inverse", "sqrt_inverse", "effective")
TARGETS = ("min", "max", "median")
DEFAULT_BETA = 0.999  # the "effective number" scheme's beta
MAX_TARGET = 100_000
"""The largest explicit target (rows per class): beyond it, rows repeat without bound."""


@dataclass
class BalanceResult:
    """The resampled manifest plus a report of the class counts before and after."""

    manifest: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)


def class_counts(labels: Iterable[Any]) -> dict[str, int]:
    """Examples per class, sorted by class name; missing labels (None/NA/NaN) are ignored."""
    counts = Counter(str(label) for label in labels if not pd.isna(label))
    return dict(sorted(counts.items()))


def class_weights(
    labels: Iterable[Any],
    classes: Sequence[str],
    *,
    scheme: str = "inverse",
    beta: float = DEFAULT_BETA,
) -> torch.Tensor:
    """Float32 loss weights in ``classes`` order, scaled so their count-weighted mean is 1.

    ``inverse`` is 1/n, ``sqrt_inverse`` 1/sqrt(n), ``effective`` (1-beta)/(1-beta^n)
    (Cui et al., 2019). The scaling keeps the expected loss of the data unchanged.
    """
    import torch

    weights = _weights(labels, classes, scheme=scheme, beta=beta)
    return torch.tensor(weights, dtype=torch.float32)


def _weights(
    labels: Iterable[Any], classes: Sequence[str], *, scheme: str, beta: float
) -> np.ndarray:
    """:func:`class_weights` as float64 numpy."""
    if scheme not in SCHEMES:
        raise BalanceError(f"unknown weight scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    if not 0.0 <= beta < 1.0:
        raise BalanceError(f"beta must be in [0, 1), got {beta}")
    if len(set(classes)) != len(classes):
        raise BalanceError("class names must be unique")
    counts = class_counts(labels)
    unknown = sorted(set(counts) - set(classes))
    if unknown:
        raise BalanceError(f"labels not among the classes: {', '.join(unknown)}")
    empty = [name for name in classes if counts.get(name, 0) == 0]
    if empty:
        raise BalanceError(
            f"no examples of the {noun_form(len(empty), 'class')} {', '.join(empty)}: cannot "
            "weight a class never seen"
        )
    n = np.array([counts[name] for name in classes], dtype=np.float64)
    if scheme == "inverse":
        raw = 1.0 / n
    elif scheme == "sqrt_inverse":
        raw = 1.0 / np.sqrt(n)
    else:
        raw = (1.0 - beta) / (1.0 - np.power(beta, n))
    weights: np.ndarray = raw * n.sum() / (n * raw).sum()
    return weights


def sample_weights(labels: Iterable[Any]) -> np.ndarray:
    """Per-row sampling weight ``1 / count(class of the row)``: every class equally likely."""
    values = list(labels)
    missing = sum(1 for label in values if pd.isna(label))
    if missing:
        raise BalanceError(
            f"{plural(missing, 'unlabelled row')}: every row needs a label to be weighted"
        )
    names = [str(label) for label in values]
    counts = Counter(names)
    return np.array([1.0 / counts[name] for name in names], dtype=np.float64)


def weighted_sampler(
    labels: Iterable[Any], *, num_samples: int | None = None, seed: int = 0
) -> WeightedRandomSampler:
    """A class-balanced sampler (with replacement) whose draws are fixed by ``seed``."""
    import torch
    from torch.utils.data import WeightedRandomSampler

    weights = sample_weights(labels)
    if len(weights) == 0:
        raise BalanceError("cannot build a sampler over no rows")
    draws = len(weights) if num_samples is None else num_samples
    if draws <= 0:
        raise BalanceError(f"num_samples must be positive, got {draws}")
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        weights.tolist(), num_samples=draws, replacement=True, generator=generator
    )


def parse_target(text: str) -> int | str:
    """``"min"``, ``"max"``, ``"median"`` or a positive integer count, from the command line."""
    value = text.strip().lower()
    if value in TARGETS:
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count <= 0:
        raise BalanceError(
            f"target must be a positive integer or one of {', '.join(TARGETS)} ({text!r})"
        )
    return count


def _resolve_target(target: int | str, counts: dict[str, int]) -> int:
    if isinstance(target, str):
        target = parse_target(target)
    if isinstance(target, str):
        values = np.array(list(counts.values()))
        if target == "min":
            return int(values.min())
        if target == "max":
            return int(values.max())
        return math.floor(float(np.median(values)) + 0.5)  # median, rounded half up
    if isinstance(target, bool) or target <= 0:
        raise BalanceError(f"target count must be a positive integer, got {target!r}")
    if target > MAX_TARGET:
        raise BalanceError(f"target {target} is above the limit of {MAX_TARGET} rows per class")
    return int(target)


def _ratio(counts: dict[str, int]) -> float:
    return round(max(counts.values()) / min(counts.values()), 4)


def resample(
    frame: pd.DataFrame,
    target: int | str,
    *,
    seed: int = 0,
    split: str = "train",
    scheme: str = "inverse",
) -> BalanceResult:
    """Under/oversample every class of ``split`` to ``target`` rows (an int, min, max, median).

    Larger classes keep a seeded random subset; smaller ones keep every row, repeated
    whole as often as fits, plus a seeded random subset of distinct rows for the rest.
    Rows of other splits pass through unchanged. When no row has a split, all rows are
    balanced (``report["split"]`` is then None). Copies sit next to their originals.
    ``rows_before``/``rows_after`` count the whole manifest; ``class_weights`` (by
    ``scheme``) come from the counts before resampling.
    """
    manifest = conform(frame)
    if manifest.empty:
        raise BalanceError("the manifest has no rows to balance")
    if manifest["split"].isna().all():
        logger.warning(
            "the manifest has no splits: balancing all of its %s", plural(len(manifest), "row")
        )
        chosen_split: str | None = None
        selected = np.ones(len(manifest), dtype=bool)
    else:
        chosen_split = split
        selected = (manifest["split"] == split).fillna(False).to_numpy(dtype=bool)
        if not selected.any():
            present = sorted(str(s) for s in manifest["split"].dropna().unique())
            raise BalanceError(f"no rows in split {split!r}; splits present: {', '.join(present)}")
    labels = manifest["label"].to_numpy(dtype=object, na_value=None)
    unlabelled = int(pd.isna(labels[selected]).sum())
    if unlabelled:
        where = f"split {chosen_split!r}" if chosen_split else "the manifest"
        raise BalanceError(
            f"{plural(unlabelled, 'unlabelled row')} in {where}: balancing needs labels"
        )

    before = class_counts(labels[selected])
    goal = _resolve_target(target, before)
    weights = _weights(labels[selected], list(before), scheme=scheme, beta=DEFAULT_BETA)
    rng = np.random.default_rng(seed)
    keep = [np.flatnonzero(~selected)]
    for name, count in before.items():
        rows = np.flatnonzero(selected & (labels == name))
        if count >= goal:
            keep.append(rng.choice(rows, goal, replace=False))
        else:
            copies, rest = divmod(goal, count)
            keep += [np.tile(rows, copies), rng.choice(rows, rest, replace=False)]
    order = np.sort(np.concatenate(keep), kind="stable")
    balanced = manifest.iloc[order].reset_index(drop=True)

    after = class_counts(labels[order][selected[order]])
    logger.info("balanced %s to %s per class", chosen_split or "all rows", plural(goal, "row"))
    report: dict[str, Any] = {
        "split": chosen_split,
        "target": goal,
        "target_requested": target,
        "seed": seed,
        "before": before,
        "after": after,
        "imbalance_ratio_before": _ratio(before),
        "imbalance_ratio_after": _ratio(after),
        "rows_before": len(manifest),
        "rows_after": len(balanced),
        "weight_scheme": scheme,
        "class_weights": {
            name: round(float(w), 6) for name, w in zip(before, weights.tolist(), strict=True)
        },
    }
    return BalanceResult(balanced, report)


def _plot(report: dict[str, Any]) -> str:
    """A base64 PNG: grouped horizontal bars, before and after, per class."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(report["before"])[::-1]
    figure = Figure(figsize=(7, max(2.0, 0.45 * len(names) + 1)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    before = [report["before"][n] for n in names]
    after = [report["after"].get(n, 0) for n in names]
    axes.barh(positions + 0.2, before, height=0.4, color="#c44e52", label="before")
    axes.barh(positions - 0.2, after, height=0.4, color="#4c72b0", label="after")
    axes.axvline(report["target"], color="#333", linestyle="--", linewidth=1, label="target")
    axes.set_yticks(positions, names)
    axes.set_xlabel("images")
    axes.set_title("Images per class, before and after balancing")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return png_base64(figure)


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page: summary cards, the before/after chart and the per-class table."""
    where = report["split"] or "all rows (no splits)"
    cards = [
        ("split", where),
        ("target per class", report["target"]),
        ("rows before", report["rows_before"]),
        ("rows after", report["rows_after"]),
        ("imbalance before", report["imbalance_ratio_before"]),
        ("imbalance after", report["imbalance_ratio_after"]),
    ]
    rows = [
        (
            esc(name),
            f"<span class='num'>{count}</span>",
            f"<span class='num'>{report['after'].get(name, 0)}</span>",
            f"<span class='num'>{report['class_weights'][name]:.4f}</span>",
        )
        for name, count in report["before"].items()
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Balance report</title><style>{REPORT_CSS}</style></head><body>",
        "<h1>Balance report</h1>",
        f"<p class='none'>target {esc(report['target_requested'])} · seed "
        f"{esc(report['seed'])} · other splits are unchanged</p>",
        "<div class='cards'>",
        *(f"<div class='card'><b>{esc(v)}</b>{esc(k)}</div>" for k, v in cards),
        "</div>",
        "<h2>Images per class</h2>",
        f"<img alt='class counts before and after' src='data:image/png;base64,{_plot(report)}'>",
        html_table(["class", "before", "after", f"weight ({esc(report['weight_scheme'])})"], rows),
        "</body></html>\n",
    ]
    return "\n".join(parts)
