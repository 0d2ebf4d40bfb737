"""The script ``streamlit run`` executes (``clip-har ui`` starts it): the sidebar with the
served model and the API's health, and the navigation between the page scripts."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from clip_har.ui.backend import Backend, current_backend, parse_config
from clip_har.ui.errors import explain

PAGES_DIR = Path(__file__).resolve().parent / "pages"
PAGES = [
    ("predict.py", "Predict", ":material/photo_camera:"),
    ("open_vocabulary.py", "Open vocabulary", ":material/label:"),
    ("batch.py", "Batch", ":material/collections:"),
    ("model.py", "Model", ":material/model_training:"),
    ("monitoring.py", "Monitoring", ":material/monitoring:"),
    ("live.py", "Live", ":material/videocam:"),
]


def sidebar() -> None:
    """The service in use, its model and its health; an unreachable service is said so
    here, and each page shows the full message."""
    config = parse_config()
    st.sidebar.caption(f"Service: {config.where}")
    try:
        backend: Backend = current_backend()
        health = backend.client.health()
    except Exception as exc:  # shown as a message, never a traceback
        st.sidebar.error(f"API unavailable: {explain(exc, config.where).message}")
        return
    if not health.ready:
        st.sidebar.warning(f"API live, not ready: {health.status}")
        return
    st.sidebar.success("API ready")
    st.sidebar.markdown(f"**Model** {health.model or '?'}  \n**Version** {health.version or '?'}")


def main() -> None:
    st.set_page_config(page_title="clip-har", page_icon=":material/directions_run:", layout="wide")
    pages = [
        st.Page(PAGES_DIR / name, title=title, icon=icon, default=index == 0)
        for index, (name, title, icon) in enumerate(PAGES)
    ]
    page = st.navigation(pages)
    sidebar()
    page.run()


if __name__ == "__main__":
    main()
