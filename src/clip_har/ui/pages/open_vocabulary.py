"""Open vocabulary: score a photo against action labels you type, with an optional prompt
template (``POST /v1/classify``)."""

from __future__ import annotations

import re

import streamlit as st

from clip_har.client.models import PredictionResponse
from clip_har.ui.backend import Backend
from clip_har.ui.charts import ranked_bars
from clip_har.ui.page import IMAGE_TYPES, run_page

RESULT = "ov_result"
DEFAULT_LABELS = "cooking\ndancing\nplaying guitar\nreading a book\nrunning"


def parse_labels(text: str) -> list[str]:
    """Labels typed one per line or comma-separated: stripped, empty ones dropped, the first
    of labels equal but for case kept."""
    labels: list[str] = []
    seen: set[str] = set()
    for part in re.split(r"[\n,]", text):
        label = part.strip()
        if label and label.casefold() not in seen:
            seen.add(label.casefold())
            labels.append(label)
    return labels


def render(backend: Backend) -> None:
    st.title("Open vocabulary")
    st.write("Type your own action labels: the model scores the photo against each of them.")
    if not backend.client.model_info().open_vocabulary:
        st.warning(
            "The served model has no text encoder, so it scores its own classes only. "
            "Export one with `clip-har export BUNDLE --formats text-onnx`."
        )
    image = st.file_uploader("Image", type=IMAGE_TYPES, key="ov_upload")
    text = st.text_area(
        "Action labels (one per line, or comma-separated)", DEFAULT_LABELS, key="ov_labels"
    )
    template = st.text_input(
        "Prompt template (optional; {} marks the label)",
        placeholder="a photo of a person {}.",
        key="ov_template",
    )
    labels = parse_labels(text)
    if st.button("Compare labels", key="ov_submit", disabled=image is None or not labels):
        assert image is not None
        with st.spinner("Scoring…"):
            st.session_state[RESULT] = backend.client.classify(
                image.getvalue(),
                labels,
                templates=[template.strip()] if template.strip() else None,
                top_k=len(labels),
            )
    if image is None:
        st.info("Upload a photo to compare labels on.")
        return
    result: PredictionResponse | None = st.session_state.get(RESULT)
    left, right = st.columns([2, 3])
    left.image(image.getvalue(), caption=image.name, width="stretch")
    if result is None:
        right.info("Press **Compare labels**.")
        return
    with right:
        st.subheader(f"Best: {result.label} · {result.confidence:.1%}")
        st.plotly_chart(
            ranked_bars([(p.label, p.probability) for p in result.top_k], title="Label scores"),
            key="ov_chart",
        )
        st.caption(f"Server latency {result.latency_ms:.1f} ms")


if __name__ == "__main__":
    run_page(render)
