"""Monitoring: feedback accuracy, predictions per class over time, latency percentiles, and
the latest drift scores (recorded by `clip-har monitor drift`, served in /v1/stats/predictions)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from clip_har.client.models import FeedbackStatsResponse, PredictionStatsResponse
from clip_har.ui.backend import Backend
from clip_har.ui.charts import lines_over_time, stacked_over_time
from clip_har.ui.page import run_page

WINDOWS = {"1 hour": (1, 5), "6 hours": (6, 15), "24 hours": (24, 60), "7 days": (168, 360)}
"""Window name -> (hours, bucket minutes)."""


def render(backend: Backend) -> None:
    st.title("Monitoring")
    window = st.selectbox("Window", list(WINDOWS), index=2, key="monitoring_window")
    hours, bucket_minutes = WINDOWS[window]
    stats = backend.client.prediction_stats(hours=hours, bucket_minutes=bucket_minutes)
    feedback = backend.client.feedback_stats()
    _summary(stats, feedback)
    _over_time(stats)
    _feedback_by_label(feedback)
    _drift(stats)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _summary(stats: PredictionStatsResponse, feedback: FeedbackStatsResponse) -> None:
    columns = st.columns(5)
    columns[0].metric("Predictions (window)", stats.total)
    columns[1].metric("Feedback accuracy (all time)", _percent(feedback.accuracy))
    columns[2].metric("Reviewed (all time)", feedback.total)
    p50, p95 = stats.latency_ms.p50, stats.latency_ms.p95
    columns[3].metric("Latency p50", "—" if p50 is None else f"{p50:.1f} ms")
    columns[4].metric("Latency p95", "—" if p95 is None else f"{p95:.1f} ms")


def _over_time(stats: PredictionStatsResponse) -> None:
    if not stats.total:
        st.info("No predictions in this window yet: make some on the Predict or Batch page.")
        return
    times = [bucket.start.isoformat(timespec="minutes") for bucket in stats.buckets]
    labels = sorted(stats.by_label, key=lambda label: -stats.by_label[label])
    per_class = {
        label: [bucket.by_label.get(label, 0) for bucket in stats.buckets] for label in labels
    }
    st.plotly_chart(
        stacked_over_time(times, per_class, title="Predictions per class", axis="predictions"),
        key="monitoring_classes_chart",
    )
    latency = {
        "p50": [bucket.latency_ms_p50 for bucket in stats.buckets],
        "p95": [bucket.latency_ms_p95 for bucket in stats.buckets],
    }
    st.plotly_chart(
        lines_over_time(times, latency, title="Latency", axis="ms"),
        key="monitoring_latency_chart",
    )


def _drift(stats: PredictionStatsResponse) -> None:
    st.subheader("Drift")
    if not stats.drift:
        st.info(
            "No drift scores yet: run `clip-har monitor drift --reference REF` against this "
            "service's database (e.g. the drift CronJob)."
        )
        return
    columns = st.columns(len(stats.drift))
    for column, (metric, score) in zip(columns, sorted(stats.drift.items()), strict=True):
        verdict = "over" if score.drifted else "under"
        column.metric(
            metric,
            f"{score.value:.3f}",
            f"{verdict} threshold {score.threshold:g}",
            delta_color="inverse" if score.drifted else "off",
        )
    latest = max(score.created_at for score in stats.drift.values())
    drifted = [metric for metric, score in stats.drift.items() if score.drifted]
    when = latest.isoformat(timespec="minutes")
    if drifted:
        st.error(f"Drift in {', '.join(sorted(drifted))} (latest run {when} UTC).")
    else:
        st.caption(f"No drift in the latest run ({when} UTC).")


def _feedback_by_label(feedback: FeedbackStatsResponse) -> None:
    st.subheader("Feedback by predicted label")
    if not feedback.by_label:
        st.info("No feedback yet: use ✓ / ✗ on the Predict page.")
        return
    rows = [
        {"label": label, **counts.model_dump()}
        for label, counts in sorted(feedback.by_label.items())
    ]
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={
            "accuracy": st.column_config.ProgressColumn(
                "accuracy", min_value=0.0, max_value=1.0, format="percent"
            )
        },
    )


if __name__ == "__main__":
    run_page(render)
