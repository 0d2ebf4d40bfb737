"""The Streamlit app (``clip-har ui``) driven page by page with Streamlit's ``AppTest``,
on the tiny ONNX bundle served in-process: the real service, its SQLite store and the
real client, so a correction made on the Predict page is a row in the store."""

from __future__ import annotations

import io
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, make_photo

pytest.importorskip("streamlit")
pytest.importorskip("plotly")

from streamlit.testing.v1 import AppTest

import clip_har.ui
from clip_har.ui.backend import DATABASE_FILE, ENV_API_URL, ENV_BUNDLE, ENV_STATE_DIR

APP = Path(clip_har.ui.__file__).parent / "app.py"
TIMEOUT = 180  # the first run loads and warms the model, on a busy CI machine


@pytest.fixture(scope="module")
def state_dir(tiny_onnx_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The app's environment for bundle mode; at the end the in-process service is stopped
    (releasing the cached client drains it and closes its store)."""
    import streamlit as st

    folder = tmp_path_factory.mktemp("ui-state")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(ENV_API_URL, raising=False)
        patch.setenv(ENV_BUNDLE, str(tiny_onnx_bundle))
        patch.setenv(ENV_STATE_DIR, str(folder))
        for name in ("CLIP_HAR_SERVE_DATABASE_URL", "DATABASE_URL", "CLIP_HAR_SERVE_API_KEYS"):
            patch.delenv(name, raising=False)
        yield folder
    st.cache_resource.clear()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ui-photos")
    return [make_photo(folder / f"photo_{seed}.jpg", (160, 120), seed=seed) for seed in range(3)]


def _app(page: str | None = None) -> AppTest:
    """The app after its first run, on ``page`` (a path under ui/, default the first)."""
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    if page is not None:
        app.switch_page(page).run()
    _assert_clean(app)
    return app


def _assert_clean(app: AppTest) -> None:
    """No exception reached the page, and no error message either."""
    assert not app.exception, [item.value for item in app.exception]
    assert not app.error, [item.value for item in app.error]


def _upload(photo: Path) -> tuple[str, bytes, str]:
    return (photo.name, photo.read_bytes(), "image/jpeg")


def _button(app: AppTest, label: str) -> object:
    return next(button for button in app.button if button.label == label)


def test_sidebar_shows_the_served_model_and_health(state_dir: Path) -> None:
    app = _app()
    assert any("API ready" in item.value for item in app.sidebar.success)
    assert any("tiny-har" in item.value for item in app.sidebar.markdown)


def test_predict_upload_shows_chart_and_a_correction_lands_in_the_store(
    state_dir: Path, photos: list[Path]
) -> None:
    app = _app()
    app.file_uploader(key="predict_upload").set_value(_upload(photos[0]))
    app.run()
    _assert_clean(app)
    assert app.get("plotly_chart"), "the top-k chart is shown"
    predicted = app.subheader[0].value.split(" · ")[0]
    assert any("latency" in item.value for item in app.caption)

    app.button(key="feedback_wrong").click().run()
    _assert_clean(app)
    label = app.selectbox(key="feedback_label")
    assert predicted not in label.options  # the predicted label is not a correction
    correct = label.options[0]
    label.set_value(correct)
    app.text_input(key="feedback_comment").set_value("UI test")
    _button(app, "Send correction").click()  # type: ignore[attr-defined]
    app.run()
    _assert_clean(app)
    assert any(f"Recorded the correct label {correct}" in item.value for item in app.success)

    with sqlite3.connect(state_dir / DATABASE_FILE) as db:
        rows = db.execute("SELECT correct, label, comment FROM feedback").fetchall()
    assert (0, correct, "UI test") in rows
    # a rerun keeps the same prediction (no second prediction logged for one upload)
    app.run()
    with sqlite3.connect(state_dir / DATABASE_FILE) as db:
        logged = db.execute("SELECT count(*) FROM predictions WHERE route LIKE '%predict'")
        assert logged.fetchone()[0] >= 1
    assert any("Recorded the correct label" in item.value for item in app.success)


def test_open_vocabulary_scores_typed_labels(state_dir: Path, photos: list[Path]) -> None:
    app = _app("pages/open_vocabulary.py")
    app.file_uploader(key="ov_upload").set_value(_upload(photos[1]))
    app.text_area(key="ov_labels").set_value("juggling, knitting\nsurfing\nknitting")
    app.text_input(key="ov_template").set_value("a photo of someone {}.")
    app.run()
    app.button(key="ov_submit").click().run()
    _assert_clean(app)
    assert app.get("plotly_chart")
    best = app.subheader[0].value
    assert best.startswith("Best: ") and best.split(" ")[1] in {"juggling", "knitting", "surfing"}


def test_batch_runs_images_and_a_zip_safely_and_offers_downloads(
    state_dir: Path, photos: list[Path]
) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("inner/a.jpg", photos[2].read_bytes())
        zipped.writestr("../escape.png", photos[0].read_bytes())
        zipped.writestr("notes.txt", b"not an image")
        zipped.writestr("fake.jpg", b"<html>not an image</html>")
    app = _app("pages/batch.py")
    app.file_uploader(key="batch_upload").set_value(
        [_upload(photos[0]), _upload(photos[1]), ("set.zip", archive.getvalue(), "application/zip")]
    )
    app.run()
    app.button(key="batch_run").click().run()
    _assert_clean(app)
    results = app.dataframe[-1].value
    assert list(results["file"]) == [
        "photo_0.jpg",
        "photo_1.jpg",
        "set.zip/inner/a.jpg",
    ]
    assert results["label"].notna().all() and results["error"].isna().all()
    skipped = app.dataframe[0].value
    assert dict(zip(skipped["file"], skipped["reason"], strict=True)) == {
        "set.zip/../escape.png": "unsafe path in the archive",
        "set.zip/notes.txt": "not an image name",
        "set.zip/fake.jpg": "not an image",
    }
    assert app.get("plotly_chart"), "the per-class count chart is shown"
    downloads = {button.proto.label for button in app.get("download_button")}
    assert downloads == {"Download CSV", "Download JSON"}


def test_model_page_shows_identity_and_says_what_is_not_available(state_dir: Path) -> None:
    app = _app("pages/model.py")
    assert app.title[0].value == "Model tiny-har"
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Classes"] == "15" and metrics["Format"] == "onnx-int8"
    assert any("Confusion matrix: not available" in item.value for item in app.info)


def test_monitoring_page_charts_the_logged_predictions(state_dir: Path, photos: list[Path]) -> None:
    predict = _app()
    predict.file_uploader(key="predict_upload").set_value(_upload(photos[2]))
    predict.run()
    _assert_clean(predict)
    app = _app("pages/monitoring.py")
    metrics = {metric.label: metric.value for metric in app.metric}
    assert int(metrics["Predictions (window)"]) >= 1
    assert app.get("plotly_chart"), "predictions per class and latency are charted"
    assert any("No drift scores yet" in i.value for i in app.info)  # none recorded


def test_live_page_renders(state_dir: Path) -> None:
    app = _app("pages/live.py")
    assert app.title[0].value == "Live"
    assert app.number_input(key="live_every").value == 10
    # AppTest has no server session for WebRTC: the page says so instead of failing
    assert any("live stream cannot start" in item.value for item in app.warning)


def test_live_frame_labeller_predicts_every_kth_frame_and_draws_the_label(
    state_dir: Path, photos: list[Path]
) -> None:
    from PIL import Image, ImageChops

    from clip_har.ui.backend import current_backend
    from clip_har.ui.live import FrameLabeller

    labeller = FrameLabeller(current_backend().client, every=3)
    frame = Image.open(photos[0]).convert("RGB")
    with sqlite3.connect(state_dir / DATABASE_FILE) as db:
        before = db.execute("SELECT count(*) FROM predictions").fetchone()[0]
        labelled = [labeller(frame) for _ in range(7)]  # frames 0, 3 and 6 are predicted
        after = db.execute("SELECT count(*) FROM predictions").fetchone()[0]
    assert after - before == 3
    assert labeller.label is not None and labeller.error is None
    assert labelled[-1].size == frame.size
    changed = ImageChops.difference(labelled[-1], frame).getbbox()
    assert changed is not None and changed[:2] < (16, 16)  # the overlay, top left


def test_unreachable_api_is_a_friendly_message_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_BUNDLE, raising=False)
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(ENV_API_URL, url)
    app = AppTest.from_file(APP, default_timeout=TIMEOUT)
    app.run()
    assert not app.exception
    message = app.main.error[0].value
    assert f"Cannot reach the service at {url}" in message
    assert "Is the API running" in message
    assert any("API unavailable" in item.value for item in app.sidebar.error)


def test_model_page_shows_the_served_evaluation_heatmap_and_report(
    state_dir: Path,
    tiny_onnx_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bundle mode with CLIP_HAR_UI_EVALUATION: the Model page charts the confusion matrix
    (normalised per true class, counts in the hover), its metrics and the report."""
    import json

    from clip_har.data.manifest import write_manifest
    from clip_har.data.sources import import_source
    from clip_har.evaluation.run import evaluate
    from clip_har.ui.backend import ENV_EVALUATION

    for offset, label in enumerate(("running", "sitting")):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for index in range(2):
            make_photo(tmp_path / "photos" / label / f"{index}.jpg", seed=index + 10 * offset)
    write_manifest(import_source(str(tmp_path / "photos")), tmp_path / "manifest")
    evaluation = tmp_path / "eval"
    evaluate(str(tiny_onnx_bundle), tmp_path / "manifest", evaluation, format="onnx", n_bootstrap=5)
    monkeypatch.setenv(ENV_EVALUATION, str(evaluation))
    monkeypatch.setenv(ENV_STATE_DIR, str(tmp_path / "state"))

    app = _app("pages/model.py")
    assert not any("Confusion matrix: not available" in item.value for item in app.info)
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    heatmap = figure["data"][0]
    assert heatmap["type"] == "heatmap" and len(heatmap["z"]) == 15
    assert sum(map(sum, heatmap["customdata"])) == 4  # the counts, in the hover
    assert all(abs(sum(row) - 1) < 1e-6 for row in heatmap["z"] if any(row))  # per true class
    assert any(metric.label == "accuracy" for metric in app.metric)
    assert any(
        button.label == "Download the evaluation report" for button in app.get("download_button")
    )
