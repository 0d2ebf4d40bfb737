"""Predict: upload a photo or take a webcam snapshot, see the top-k, tell the service
whether it was right."""

from __future__ import annotations

import streamlit as st

from clip_har.client.models import PredictionResponse
from clip_har.ui.backend import Backend
from clip_har.ui.charts import ranked_bars
from clip_har.ui.page import IMAGE_TYPES, digest, run_page

RESULT = "predict_result"  # session keys: the prediction shown, and its input's fingerprint
RESULT_OF = "predict_result_of"
WRONG = "predict_wrong"  # the prediction id the ✗ form is open for
SENT = "predict_feedback_sent"  # prediction id -> what was recorded

UPLOAD, CAMERA = "Upload a photo", "Take a snapshot"


def render(backend: Backend) -> None:
    st.title("Predict an action")
    source = st.radio("Image source", [UPLOAD, CAMERA], horizontal=True, key="predict_source")
    if source == UPLOAD:
        image = st.file_uploader("Upload an image", type=IMAGE_TYPES, key="predict_upload")
    else:
        image = st.camera_input("Take a photo", key="predict_camera")
    classes = len(backend.client.labels().labels)
    top_k = 1
    if classes > 1:
        top_k = st.slider(
            "Top-k", min_value=1, max_value=classes, value=min(5, classes), key="predict_top_k"
        )
    if image is None:
        st.info("Upload a photo (or take a snapshot) of a person doing something.")
        return
    data = image.getvalue()
    result = _prediction(backend, data, top_k)
    left, right = st.columns([2, 3])
    left.image(data, caption=image.name, width="stretch")
    with right:
        st.subheader(f"{result.label} · {result.confidence:.1%}")
        st.plotly_chart(
            ranked_bars([(p.label, p.probability) for p in result.top_k], title=f"Top {top_k}"),
            key="predict_chart",
        )
        st.caption(
            f"Server latency {result.latency_ms:.1f} ms · model {result.model.name} "
            f"{result.model.version} ({result.model.format}) · prediction {result.prediction_id}"
        )
    _feedback(backend, result)


def _prediction(backend: Backend, data: bytes, top_k: int) -> PredictionResponse:
    """The prediction for this image and top-k, asked once: reruns (the feedback buttons)
    keep its prediction id instead of logging a new prediction."""
    key = digest(data, str(top_k))
    if st.session_state.get(RESULT_OF) != key:
        st.session_state.pop(RESULT, None)
        with st.spinner("Predicting…"):
            st.session_state[RESULT] = backend.client.predict(data, top_k=top_k)
        st.session_state[RESULT_OF] = key
        st.session_state[WRONG] = None
    result: PredictionResponse = st.session_state[RESULT]
    return result


def _feedback(backend: Backend, result: PredictionResponse) -> None:
    """✓/✗ buttons; ✗ opens a form for the right label; both post to /v1/feedback."""
    sent: dict[str, str] = st.session_state.setdefault(SENT, {})
    pid = result.prediction_id
    if pid in sent:
        st.success(sent[pid])
        return
    st.write("Was this right?")
    yes, no, _ = st.columns([1, 1, 4])
    if yes.button("✓ Correct", key="feedback_correct"):
        stored = backend.client.feedback(pid, correct=True)
        sent[pid] = f"Thanks! Recorded as correct ({result.label}); feedback {stored.feedback_id}."
        st.rerun()
    if no.button("✗ Wrong", key="feedback_wrong"):
        st.session_state[WRONG] = pid
    if st.session_state.get(WRONG) != pid:
        return
    labels = [label for label in backend.client.labels().labels if label != result.label]
    with st.form("feedback_form"):
        label = st.selectbox("Correct label", labels, key="feedback_label")
        comment = st.text_input("Comment (optional)", key="feedback_comment", max_chars=1000)
        if st.form_submit_button("Send correction"):
            stored = backend.client.feedback(
                pid, correct=False, label=label, comment=comment.strip() or None
            )
            sent[pid] = (
                f"Thanks! Recorded the correct label {label}; feedback {stored.feedback_id}."
            )
            st.session_state[WRONG] = None
            st.rerun()


if __name__ == "__main__":
    run_page(render)
