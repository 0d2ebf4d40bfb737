"""Model: what is served (name, version, registry alias, format, source), its metrics and
parity, the confusion matrix and the evaluation report when the model carries them, and
the manifest."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st
import streamlit.components.v1 as components

from clip_har.client import HARClient
from clip_har.client.models import ModelResponse
from clip_har.ui.backend import Backend
from clip_har.ui.charts import confusion_heatmap
from clip_har.ui.page import run_page

HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "top_k_accuracy_5", "n_evaluated")
REPORT_HEIGHT = 800  # px of the embedded report (it scrolls inside)


def render(backend: Backend) -> None:
    info = backend.client.model_info()
    st.title(f"Model {info.name}")
    columns = st.columns(4)
    columns[0].metric("Version", info.version)
    columns[1].metric("Alias", info.alias or "—")
    columns[2].metric("Format", info.format)
    columns[3].metric("Classes", len(info.classes))
    st.caption(
        f"Source {info.source} · loaded {info.loaded_at} · image size "
        f"{'x'.join(map(str, info.image_size))} · open vocabulary "
        f"{'yes' if info.open_vocabulary else 'no'} · {'ready' if info.ready else 'not ready'}"
    )
    if info.registry is not None:
        st.write(
            f"Registered as **{info.registry.name}** version **{info.registry.version}**"
            + (f", alias **{info.registry.alias}**" if info.registry.alias else "")
            + f" ({info.registry.uri})."
        )
    else:
        st.write("Served from a bundle folder, not from the model registry.")

    st.subheader("Metrics")
    if info.metrics:
        st.dataframe(
            pd.DataFrame(sorted(info.metrics.items()), columns=["metric", "value"]),
            hide_index=True,
        )
    else:
        st.info("No metrics recorded in the manifest (evaluate the model to add some).")

    st.subheader("Export parity")
    _parity(info.parity)

    st.subheader("Evaluation")
    _evaluation(backend, info)

    with st.expander("Classes"):
        st.write(", ".join(info.classes))
    with st.expander("Manifest"):
        st.json(info.manifest, expanded=False)


def _parity(parity: dict[str, Any]) -> None:
    rows = [
        {"format": name, **(record if isinstance(record, dict) else {"checked": False})}
        for name, record in sorted(parity.items())
    ]
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    else:
        st.info("No exports recorded: the model is served by its reference (torch) engine.")


@st.cache_data(ttl=600, show_spinner="Fetching the evaluation report…", max_entries=4)
def _report(_client: HARClient, name: str, version: str, loaded_at: str) -> str:
    """The served model's evaluation report (one fetch per loaded model)."""
    return _client.model_report()


def _evaluation(backend: Backend, info: ModelResponse) -> None:
    evaluation = info.evaluation
    if evaluation is None:
        st.info(
            "Confusion matrix: not available. The service has no evaluation of this model "
            "(serve it with `--evaluation DIR`, a `clip-har evaluate` output of it, or "
            "register it with one)."
        )
        st.caption("Evaluation report: not available for this model.")
        return
    where = f" on {evaluation.data}" if evaluation.data else ""
    split = f" ({'every row' if evaluation.split is None else 'split ' + evaluation.split})"
    st.caption(
        f"{evaluation.n_images} images{where}{split if evaluation.data else ''}"
        f"{' · format ' + evaluation.format if evaluation.format else ''} · from "
        f"{evaluation.origin}"
    )
    headline = [name for name in HEADLINE_METRICS if name in evaluation.metrics]
    for column, name in zip(st.columns(max(1, len(headline))), headline, strict=False):
        value = evaluation.metrics[name]
        column.metric(name, f"{value:.0f}" if name.startswith("n_") else f"{value:.1%}")
    with st.expander("All evaluation metrics"):
        rows = sorted(evaluation.metrics.items())
        st.dataframe(pd.DataFrame(rows, columns=["metric", "value"]), hide_index=True)
    st.plotly_chart(
        confusion_heatmap(evaluation.confusion_matrix, evaluation.class_names),
        key="model_confusion",
    )
    if not evaluation.has_report:
        st.caption("Evaluation report: not available (the evaluation folder has no report).")
        return
    report = _report(backend.client, info.name, info.version, info.loaded_at)
    st.download_button(
        "Download the evaluation report",
        report,
        file_name=f"{info.name}-{info.version}-evaluation.html",
        mime="text/html",
    )
    with st.expander("Evaluation report", expanded=False):
        components.html(report, height=REPORT_HEIGHT, scrolling=True)


if __name__ == "__main__":
    run_page(render)
