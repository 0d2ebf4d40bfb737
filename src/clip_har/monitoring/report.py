"""The drift report: one self-contained HTML page with the scores and three plots (class
shares reference vs window, confidence histograms, the domain classifier's ROC curve)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from clip_har.io import REPORT_CSS, esc, html_table, png_base64
from clip_har.monitoring.drift import DriftResult
from clip_har.monitoring.profile import ReferenceProfile

REFERENCE_COLOUR = "#4c72b0"
CURRENT_COLOUR = "#c44e52"
MAX_CLASSES_PLOTTED = 40


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _plain(text: str) -> str:
    """``text`` with dollar signs escaped, so matplotlib never reads it as mathtext."""
    return text.replace("$", r"\$")


def _class_plot(profile: ReferenceProfile, result: DriftResult) -> str:
    reference, current = profile.class_counts, result.class_counts
    names = sorted(set(reference) | set(current), key=lambda n: -(reference.get(n, 0)))
    names = names[:MAX_CLASSES_PLOTTED][::-1]
    ref_total, cur_total = max(sum(reference.values()), 1), max(sum(current.values()), 1)
    figure = _figure(7, max(2.5, 0.32 * len(names) + 1))
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    axes.barh(positions + 0.2, [reference.get(n, 0) / ref_total for n in names], height=0.4,
              color=REFERENCE_COLOUR, label="reference")  # fmt: skip
    axes.barh(positions - 0.2, [current.get(n, 0) / cur_total for n in names], height=0.4,
              color=CURRENT_COLOUR, label="window")  # fmt: skip
    axes.set_yticks(positions, [_plain(n) for n in names])
    axes.set_xlabel("share of predictions")
    axes.set_title("Predicted classes")
    axes.legend(loc="lower right", frameon=False)
    return png_base64(figure)


def _confidence_plot(profile: ReferenceProfile, result: DriftResult) -> str:
    edges = np.asarray(profile.info["confidence_histogram"]["edges"], dtype=np.float64)
    figure = _figure(7, 3)
    axes = figure.add_subplot()
    for values, colour, name in (
        (profile.confidences, REFERENCE_COLOUR, "reference"),
        (result.confidences, CURRENT_COLOUR, "window"),
    ):
        axes.hist(values, bins=edges, density=True, histtype="step", linewidth=2,
                  color=colour, label=name)  # fmt: skip
    axes.set_xlabel("top-1 confidence")
    axes.set_ylabel("density")
    axes.set_title("Confidence")
    axes.legend(frameon=False)
    return png_base64(figure)


def _roc_plot(result: DriftResult) -> str | None:
    if result.domain is None:
        return None
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(result.domain.labels, result.domain.scores)
    figure = _figure(4, 4)
    axes = figure.add_subplot()
    axes.plot(fpr, tpr, color=CURRENT_COLOUR, linewidth=2,
              label=f"AUC {result.domain.auc:.3f}")  # fmt: skip
    axes.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="no drift")
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("Domain classifier (reference vs window)")
    axes.legend(loc="lower right", frameon=False)
    return png_base64(figure)


def _image(alt: str, data: str) -> str:
    return f"<img alt='{esc(alt)}' src='data:image/png;base64,{data}'>"


def render_html(
    profile: ReferenceProfile,
    result: DriftResult,
    *,
    window: dict[str, Any],
    created_at: datetime,
) -> str:
    """The report page; ``window`` describes the predictions read (since, until, database)."""
    verdict = "DRIFT" if result.drifted else "no drift"
    cards = [(score.metric, f"{score.value:.3f}", score.drifted) for score in result.scores]
    rows = [
        (
            esc(score.metric),
            f"<span class='num'>{score.value:.4f}</span>",
            f"<span class='num'>{score.threshold:g}</span>",
            "<b>drift</b>" if score.drifted else "ok",
            f"<span class='num'>{score.samples}</span>",
            esc(score.detail_text()),
        )
        for score in result.scores
    ]
    rows += [
        (esc(metric), "", "", "skipped", "", esc(why)) for metric, why in result.skipped.items()
    ]
    roc = _roc_plot(result)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Drift report</title><style>{REPORT_CSS}</style></head><body>",
        f"<h1>Drift report: {esc(verdict)}</h1>",
        f"<p class='none'>{esc(created_at.isoformat(timespec='seconds'))} · reference "
        f"{esc(profile.id)} ({esc(profile.info['bundle'].get('name'))}, "
        f"{esc(profile.info.get('images'))} images) · window {esc(window.get('since') or 'all')}"
        f" to {esc(window.get('until'))} · {esc(window.get('predictions'))} predictions</p>",
        "<div class='cards'>",
        *(
            f"<div class='card{' bad' if bad else ''}'><b>{esc(value)}</b>{esc(name)}</div>"
            for name, value, bad in cards
        ),
        "</div>",
        "<h2>Scores</h2>",
        html_table(["metric", "value", "threshold", "verdict", "samples", "detail"], rows),
        "<h2>Predicted classes</h2>",
        _image("class shares, reference and window", _class_plot(profile, result)),
        "<h2>Confidence</h2>",
        _image("confidence histograms, reference and window", _confidence_plot(profile, result)),
        "<h2>Embeddings</h2>",
        _image("ROC curve of the domain classifier", roc)
        if roc is not None
        else f"<p class='none'>Skipped: {esc(result.skipped.get('embedding_auc', ''))}</p>",
        "<h2>Reference</h2>",
        html_table(
            ["field", "value"],
            [
                (esc(k), esc(v))
                for k, v in (
                    ("id", profile.id),
                    ("created", profile.info.get("created_at")),
                    ("bundle", profile.info["bundle"].get("path")),
                    ("data", (profile.info.get("data") or {}).get("path")),
                    ("split", (profile.info.get("data") or {}).get("split") or "all rows"),
                    ("images", profile.info.get("images")),
                )
            ],
        ),
        "</body></html>\n",
    ]
    return "\n".join(parts)
