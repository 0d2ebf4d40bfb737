"""Live: the webcam in the browser through WebRTC (``streamlit-webrtc``), every k-th frame
predicted and the label drawn on the video."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import streamlit as st

from clip_har.ui.backend import Backend
from clip_har.ui.live import FrameLabeller
from clip_har.ui.page import run_page

LABELLER = "live_labeller"

logger = logging.getLogger(__name__)


def render(backend: Backend) -> None:
    st.title("Live")
    if (
        importlib.util.find_spec("streamlit_webrtc") is None
        or importlib.util.find_spec("av") is None
    ):
        st.warning(
            "The live page needs streamlit-webrtc (and PyAV): `pip install 'clip-har[ui]'`. "
            "The Predict page can take a webcam snapshot meanwhile."
        )
        return
    from streamlit_webrtc import WebRtcMode, webrtc_streamer

    every = st.number_input(
        "Predict every k-th frame", min_value=1, max_value=120, value=10, key="live_every"
    )
    labeller: FrameLabeller | None = st.session_state.get(LABELLER)
    if labeller is None or labeller.client is not backend.client:
        labeller = FrameLabeller(backend.client, every=int(every))
        st.session_state[LABELLER] = labeller
    labeller.every = int(every)

    def on_frame(frame: Any) -> Any:
        import av

        labelled = labeller(frame.to_image())
        return av.VideoFrame.from_image(labelled)  # type: ignore[no-untyped-call]

    st.caption(
        "Allow the camera when the browser asks. Over plain HTTP only localhost may use it; "
        "behind a firewall WebRTC may need a TURN server."
    )
    st.info(
        "Every predicted frame is an ordinary prediction of the service: it is logged in its "
        f"store and counted on the Monitoring page (k = {int(every)} at 30 fps is about "
        f"{30 / int(every):.3g} predictions a second). Raise k, or keep live sessions short, "
        "on a service whose monitoring matters."
    )
    try:
        webrtc_streamer(
            key="live_stream",
            mode=WebRtcMode.SENDRECV,
            video_frame_callback=on_frame,
            media_stream_constraints={"video": True, "audio": False},
            async_processing=True,
        )
    except Exception as exc:  # WebRTC needs a real `streamlit run` server session
        logger.info("the live stream cannot start: %s", exc, exc_info=True)
        st.warning(
            "The live stream cannot start in this Streamlit session "
            f"({type(exc).__name__}: {exc}); it needs `clip-har ui` in a browser."
        )
        return
    if labeller.label is not None:
        st.metric("Latest prediction", f"{labeller.label} · {labeller.confidence:.0%}")


if __name__ == "__main__":
    run_page(render)
