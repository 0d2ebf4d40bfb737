"""Temporal smoothing of per-frame class probabilities (webcam and video).

Two smoothers, both over the probability vectors a :class:`~clip_har.inference.predictor.
Predictor` returns:

- ``ema``: an exponential moving average, ``s = alpha * p + (1 - alpha) * s``; the label is
  the arg-max of ``s`` and its confidence ``s[label]``;
- ``vote``: a majority vote of the top-1 labels of the last ``window`` predictions; ties go
  to the label with the highest mean probability in the window (then the lowest class
  index), and the confidence is that label's mean probability in the window.

``none`` keeps each prediction as it is. :func:`make_smoother` gives a causal smoother (it
sees only the past: live video); :func:`smooth_sequence` smooths a whole recorded sequence
without lag (forward-backward EMA, centred vote window).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from clip_har.errors import ConfigError

SMOOTHING_KINDS = ("none", "ema", "vote")
DEFAULT_ALPHA = 0.5
DEFAULT_WINDOW = 5


@dataclass(frozen=True)
class Smoothed:
    """A smoothed decision: the class index and its confidence (0..1)."""

    index: int
    confidence: float


class Smoother(Protocol):
    """Turns a stream of probability vectors into smoothed decisions, one per update."""

    def update(self, probabilities: np.ndarray) -> Smoothed: ...


class NoSmoothing:
    """Each prediction as it is: the arg-max and its probability."""

    def update(self, probabilities: np.ndarray) -> Smoothed:
        index = int(np.argmax(probabilities))
        return Smoothed(index, float(probabilities[index]))


class EmaSmoother:
    """Exponential moving average of the probabilities (``alpha`` weighs the newest)."""

    def __init__(self, alpha: float = DEFAULT_ALPHA) -> None:
        _check(alpha=alpha)
        self.alpha = alpha
        self.state: np.ndarray | None = None

    def update(self, probabilities: np.ndarray) -> Smoothed:
        probs = np.asarray(probabilities, dtype=np.float64)
        if self.state is None:
            self.state = probs.copy()
        else:
            self.state = self.alpha * probs + (1.0 - self.alpha) * self.state
        index = int(np.argmax(self.state))
        return Smoothed(index, float(self.state[index]))


class VoteSmoother:
    """Majority vote of the top-1 labels of the last ``window`` predictions."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        _check(window=window)
        self.recent: deque[np.ndarray] = deque(maxlen=window)

    def update(self, probabilities: np.ndarray) -> Smoothed:
        self.recent.append(np.asarray(probabilities, dtype=np.float64))
        return vote(np.stack(self.recent))


def vote(window: np.ndarray) -> Smoothed:
    """The majority top-1 label of the rows of ``window`` ``[N, C]`` (ties: the highest mean
    probability, then the lowest index) and its mean probability over the rows."""
    counts = np.bincount(window.argmax(axis=1), minlength=window.shape[1])
    means = window.mean(axis=0)
    tied = np.flatnonzero(counts == counts.max())
    index = int(tied[np.argmax(means[tied])])  # argmax keeps the first (lowest) on a tie
    return Smoothed(index, float(means[index]))


def make_smoother(
    kind: str, *, alpha: float = DEFAULT_ALPHA, window: int = DEFAULT_WINDOW
) -> Smoother:
    """A causal smoother: ``none``, ``ema`` (``alpha``) or ``vote`` (``window``)."""
    if kind == "ema":
        return EmaSmoother(alpha)
    if kind == "vote":
        return VoteSmoother(window)
    if kind == "none":
        return NoSmoothing()
    raise ConfigError(f"unknown smoothing '{kind}': use one of {', '.join(SMOOTHING_KINDS)}")


def smooth_sequence(
    probabilities: np.ndarray,
    kind: str,
    *,
    alpha: float = DEFAULT_ALPHA,
    window: int = DEFAULT_WINDOW,
) -> list[Smoothed]:
    """Smooth a whole recorded sequence ``[N, C]`` without lag: ``ema`` averages a forward
    and a backward pass, ``vote`` centres its window on each sample."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if kind == "ema":
        _check(alpha=alpha)
        forward = _ema_pass(probs, alpha)
        backward = _ema_pass(probs[::-1], alpha)[::-1]
        smoothed = (forward + backward) / 2.0
        return [Smoothed(int(row.argmax()), float(row.max())) for row in smoothed]
    if kind == "vote":
        _check(window=window)
        before, after = (window - 1) // 2, window // 2
        return [vote(probs[max(0, i - before) : i + after + 1]) for i in range(len(probs))]
    smoother = make_smoother(kind)
    return [smoother.update(row) for row in probs]


def _ema_pass(probs: np.ndarray, alpha: float) -> np.ndarray:
    out = np.empty_like(probs)
    state: np.ndarray | None = None
    for i, row in enumerate(probs):
        state = row.copy() if state is None else alpha * row + (1.0 - alpha) * state
        out[i] = state
    return out


def _check(*, alpha: float | None = None, window: int | None = None) -> None:
    if alpha is not None and not 0.0 < alpha <= 1.0:
        raise ConfigError(f"EMA alpha must be in (0, 1], not {alpha}")
    if window is not None and window < 1:
        raise ConfigError(f"vote window must be at least 1, not {window}")
