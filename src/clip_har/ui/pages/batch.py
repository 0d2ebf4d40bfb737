"""Batch: several photos or a zip of them → a progress bar → a results table with
thumbnails, a per-class count chart, and CSV / JSON downloads."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from typing import Any

import pandas as pd
import streamlit as st
from PIL import Image

from clip_har.client.errors import HARAPIError
from clip_har.client.models import BatchFailure
from clip_har.io import plural
from clip_har.ui.backend import Backend
from clip_har.ui.charts import count_bars
from clip_har.ui.page import IMAGE_TYPES, run_page
from clip_har.ui.uploads import Collected, collect

ROWS = "batch_rows"
SKIPPED = "batch_skipped"
THUMBNAIL = (64, 64)
COLUMNS = ["file", "label", "confidence", "top_k", "prediction_id", "error"]


def render(backend: Backend) -> None:
    st.title("Batch")
    uploads = st.file_uploader(
        "Images or a .zip of images",
        type=[*IMAGE_TYPES, "zip"],
        accept_multiple_files=True,
        key="batch_upload",
    )
    top_k = st.number_input("Top-k", min_value=1, max_value=20, value=3, key="batch_top_k")
    if st.button("Run batch", key="batch_run", disabled=not uploads, type="primary"):
        collected = collect((upload.name, upload.getvalue()) for upload in uploads or [])
        st.session_state[SKIPPED] = collected.skipped
        st.session_state[ROWS] = _run(backend, collected, int(top_k))
    rows: list[dict[str, Any]] | None = st.session_state.get(ROWS)
    skipped: list[tuple[str, str]] = st.session_state.get(SKIPPED, [])
    if skipped:
        with st.expander(f"{plural(len(skipped), 'file')} skipped"):
            st.dataframe(pd.DataFrame(skipped, columns=["file", "reason"]), hide_index=True)
    if rows is None:
        st.info("Add photos (or a zip of them) and press **Run batch**.")
        return
    if not rows:
        st.warning("No images to predict among the uploads.")
        return
    _show(rows)


def _run(backend: Backend, collected: Collected, top_k: int) -> list[dict[str, Any]]:
    """Predict every collected image, advancing the progress bar as the client's requests
    are answered (the client sizes them to the service's limits); an image the service
    cannot use gets its error, and a batch the service refuses marks every row."""
    images = collected.images
    if not images:
        return []
    bar = st.progress(0.0, text=f"Predicting {plural(len(images), 'image')}…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Predicted {done} of {plural(total, 'image')}")

    try:
        answer = backend.client.predict_batch(
            [data for _, data in images], top_k=top_k, progress=progress
        )
    except HARAPIError as exc:
        bar.empty()
        return [_row(name, data, error=f"{exc.code}: {exc.message}") for name, data in images]
    rows: list[dict[str, Any]] = []
    for item in answer.predictions:
        name, data = images[item.index]
        if isinstance(item, BatchFailure):
            rows.append(_row(name, data, error=f"{item.error.code}: {item.error.message}"))
        else:
            top = ", ".join(f"{p.label} {p.probability:.2f}" for p in item.top_k)
            rows.append(
                _row(
                    name,
                    data,
                    label=item.label,
                    confidence=item.confidence,
                    top_k=top,
                    prediction_id=item.prediction_id,
                )
            )
    bar.empty()
    return rows


def _row(name: str, data: bytes, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(fields, file=name, thumbnail=_thumbnail(data))
    return row


def _thumbnail(data: bytes) -> str | None:
    """A small PNG of the image as a data URI, for the table (None if it does not decode)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail(THUMBNAIL)
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="PNG")
    except Exception:  # any undecodable image just has no thumbnail
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _show(rows: list[dict[str, Any]]) -> None:
    table = pd.DataFrame(rows, columns=["thumbnail", *COLUMNS])
    failed = int(table["error"].notna().sum())
    st.success(
        f"{len(rows) - failed} of {len(rows)} images predicted"
        + (f"; {failed} failed (see the error column)" if failed else "")
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "thumbnail": st.column_config.ImageColumn("preview"),
            "confidence": st.column_config.ProgressColumn(
                "confidence", min_value=0.0, max_value=1.0, format="percent"
            ),
        },
    )
    counts = Counter(str(label) for label in table["label"].dropna())
    if counts:
        st.plotly_chart(
            count_bars(dict(counts), title="Images per predicted class"), key="batch_counts_chart"
        )
    export = table.drop(columns=["thumbnail"])
    csv_column, json_column, _ = st.columns([1, 1, 3])
    csv_column.download_button(
        "Download CSV",
        export.to_csv(index=False),
        file_name="clip-har-batch.csv",
        mime="text/csv",
        key="batch_csv",
    )
    json_column.download_button(
        "Download JSON",
        json.dumps(export.astype(object).where(export.notna(), None).to_dict("records"), indent=2),
        file_name="clip-har-batch.json",
        mime="application/json",
        key="batch_json",
    )


if __name__ == "__main__":
    run_page(render)
