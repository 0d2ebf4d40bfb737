"""The app's plotly figures: ranked scores, counts, time series and a confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

_HEIGHT_PER_BAR = 28
_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}


def ranked_bars(
    scores: Sequence[tuple[str, float]], *, title: str, axis: str = "probability"
) -> go.Figure:
    """Horizontal bars of ``(label, score)`` pairs, best at the top, value printed."""
    ordered = sorted(scores, key=lambda pair: pair[1])  # plotly draws the last bar on top
    figure = go.Figure(
        go.Bar(
            x=[score for _, score in ordered],
            y=[label for label, _ in ordered],
            orientation="h",
            text=[f"{score:.1%}" for _, score in ordered],
            textposition="auto",
            hovertemplate="%{y}: %{x:.4f}<extra></extra>",
        )
    )
    figure.update_layout(
        title=title,
        xaxis={"title": axis, "range": [0, 1], "tickformat": ".0%"},
        height=120 + _HEIGHT_PER_BAR * len(ordered),
        margin=_MARGIN,
    )
    return figure


def count_bars(counts: Mapping[str, int], *, title: str, axis: str = "images") -> go.Figure:
    """Vertical bars of ``counts``, the biggest first."""
    ordered = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
    figure = go.Figure(
        go.Bar(
            x=[label for label, _ in ordered],
            y=[count for _, count in ordered],
            text=[str(count) for _, count in ordered],
            textposition="auto",
        )
    )
    figure.update_layout(title=title, yaxis={"title": axis}, margin=_MARGIN, height=360)
    return figure


def stacked_over_time(
    times: Sequence[str], series: Mapping[str, Sequence[int]], *, title: str, axis: str
) -> go.Figure:
    """Stacked bars: one trace per key of ``series`` (a class), one bar per time."""
    figure = go.Figure(
        [go.Bar(name=name, x=list(times), y=list(values)) for name, values in series.items()]
    )
    figure.update_layout(
        title=title, barmode="stack", yaxis={"title": axis}, margin=_MARGIN, height=400
    )
    return figure


def lines_over_time(
    times: Sequence[str], series: Mapping[str, Sequence[float | None]], *, title: str, axis: str
) -> go.Figure:
    """One line with markers per key of ``series``; ``None`` leaves a gap."""
    figure = go.Figure(
        [
            go.Scatter(name=name, x=list(times), y=list(values), mode="lines+markers")
            for name, values in series.items()
        ]
    )
    figure.update_layout(title=title, yaxis={"title": axis}, margin=_MARGIN, height=360)
    return figure


def confusion_heatmap(counts: Sequence[Sequence[int]], classes: Sequence[str]) -> go.Figure:
    """The confusion matrix of image ``counts`` (rows the true class), each row normalised
    to the share of its true class (a class without images stays 0); every cell shows its
    share, and the hover its count."""
    shares = []
    for row in counts:
        total = sum(row)
        shares.append([value / total if total else 0.0 for value in row])
    figure = go.Figure(
        go.Heatmap(
            z=shares,
            x=list(classes),
            y=list(classes),
            zmin=0,
            zmax=1,
            colorscale="Blues",
            customdata=[list(row) for row in counts],
            text=[[f"{share:.0%}" if share else "" for share in row] for row in shares],
            texttemplate="%{text}",
            hovertemplate="true %{y}, predicted %{x}: %{customdata} images "
            "(%{z:.1%} of %{y})<extra></extra>",
            colorbar={"title": "share of true class", "tickformat": ".0%"},
        )
    )
    figure.update_layout(
        title="Confusion matrix (normalised per true class)",
        xaxis={"title": "predicted"},
        yaxis={"title": "true", "autorange": "reversed"},
        margin=_MARGIN,
        height=200 + 30 * len(classes),
    )
    return figure
