"""The Streamlit UI end to end: a real ``clip-har serve`` (uvicorn) and a real ``clip-har ui``
(``streamlit run``) on 127.0.0.1, driven by headless Chromium through Playwright.

A user uploads a real photo, sees the prediction and its chart, marks it wrong with the
right label (the row lands in the service's feedback store), then runs a small batch and
downloads its CSV. Needs Debian's Chromium at /usr/bin/chromium, the ``playwright`` package
and the shared photos (``../shared/data/har/sample``). A screenshot after each step is kept
in ``tests/e2e/artifacts/ui-*.png`` (git-ignored) for people to look at.
"""

from __future__ import annotations

import csv
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CLI, free_port, stop_process_group
from feedback_server import ServeProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
UI_STARTUP_S = 120  # streamlit imports pandas, plotly and pyarrow: slow on a loaded machine
STEP_MS = 60_000  # the longest one UI step (a rerun with a model call) may take
BATCH_SIZE = 3

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install playwright)"
)
pytest.importorskip(
    "streamlit", reason="the [ui] extra is not installed (pip install clip-har[ui])"
)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is absent (apt-get install chromium chromium-driver)",
    ),
]


@dataclass
class Stack:
    """The running service and UI, and the service's SQLite store."""

    api_url: str
    ui_url: str
    database: Path
    classes: list[str]


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Wait (bounded) until ``url`` answers 200; fail with the log if the process dies."""
    deadline = time.monotonic() + UI_STARTUP_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"clip-har ui exited ({process.returncode}):\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"clip-har ui not healthy in {UI_STARTUP_S}s:\n{_tail(log)}")
        time.sleep(0.5)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


@pytest.fixture(scope="module")
def stack(tiny_onnx_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``clip-har serve`` on the tiny ONNX bundle with a fresh SQLite store, and
    ``clip-har ui --api-url`` on it; both stopped (their whole process groups) afterwards."""
    folder = tmp_path_factory.mktemp("ui-stack")
    database = folder / "store.db"
    server = ServeProcess(
        tiny_onnx_bundle,
        free_port(),
        folder / "serve.log",
        {"DATABASE_URL": f"sqlite:///{database}"},
    )
    ui_log = folder / "ui.log"
    ui_port = free_port()
    ui_process: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        classes = httpx.get(f"{server.url}/v1/labels", timeout=10).json()["labels"]
        with ui_log.open("ab") as log:
            ui_process = subprocess.Popen(
                [CLI, "ui", "--api-url", server.url, "--host", "127.0.0.1", "--port", str(ui_port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"},
                start_new_session=True,
            )
        ui_url = f"http://127.0.0.1:{ui_port}"
        _wait_healthy(ui_process, f"{ui_url}/_stcore/health", ui_log)
        yield Stack(server.url, ui_url, database, classes)
    finally:
        if ui_process is not None:
            stop_process_group(ui_process)
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, launched the same way as the report test."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    """A fresh browser context (so a fresh Streamlit session) on the UI, the API ready."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(STEP_MS)
    try:
        tab = context.new_page()
        tab.goto(stack.ui_url, wait_until="domcontentloaded")
        sidebar = tab.get_by_test_id("stSidebar")
        sync_api.expect(sidebar.get_by_text("API ready")).to_be_visible()
        yield tab
    finally:
        context.close()


def _shot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"ui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _sample_photos(sample: Path) -> list[tuple[Path, str]]:
    """The sample photos with their true labels, in file-name order (deterministic)."""
    with (sample / "labels.csv").open(newline="") as handle:
        labels = {row["filename"]: row["label"] for row in csv.DictReader(handle)}
    photos = sorted(path for path in (sample / "images").iterdir() if path.name in labels)
    return [(path, labels[path.name]) for path in photos]


def _query(database: Path, sql: str, *params: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as connection:
        return connection.execute(sql, params).fetchall()


def _sidebar_link(page: Any, title: str) -> Any:
    """The navigation link of a page (its text is the icon's ligature, then the title)."""
    links = page.get_by_test_id("stSidebarNav").get_by_role("link")
    return links.filter(has_text=re.compile(rf"{re.escape(title)}$"))


def test_predict_shows_chart_and_a_correction_lands_in_the_feedback_store(
    page: Any, stack: Stack, har_sample_dir: Path
) -> None:
    photo, truth = _sample_photos(har_sample_dir)[0]
    expect = sync_api.expect
    _shot(page, "predict-1-ready")

    page.get_by_test_id("stFileUploader").filter(has_text="Upload an image").locator(
        'input[type="file"]'
    ).set_input_files(str(photo))
    latency = page.get_by_text(re.compile(r"Server latency [0-9.]+ ms"))
    expect(latency).to_be_visible()
    expect(page.get_by_test_id("stPlotlyChart").locator(".js-plotly-plot")).to_be_visible()
    expect(page.get_by_test_id("stImage").first).to_be_visible()
    _shot(page, "predict-2-prediction")

    match = re.search(r"prediction (\w+)$", latency.inner_text().strip())
    assert match, latency.inner_text()
    prediction_id = match.group(1)
    [(predicted,)] = _query(
        stack.database, "SELECT label FROM predictions WHERE id = ?", prediction_id
    )
    assert predicted in stack.classes
    expect(
        page.get_by_role("heading", name=re.compile(rf"^{re.escape(predicted)} · "))
    ).to_be_visible()
    chosen = (
        truth
        if truth in stack.classes and truth != predicted
        else next(label for label in stack.classes if label != predicted)
    )

    page.get_by_role("button", name="✗ Wrong").click()
    selectbox = page.get_by_test_id("stSelectbox").filter(has_text="Correct label")
    expect(selectbox).to_be_visible()
    selectbox.get_by_role("combobox").click()
    page.keyboard.type(chosen)
    page.get_by_role("option", name=chosen, exact=True).click()
    expect(selectbox.get_by_role("combobox")).to_have_value(chosen)
    page.get_by_label("Comment (optional)").fill("end-to-end test")
    _shot(page, "predict-3-correction")
    page.get_by_role("button", name="Send correction").click()
    expect(page.get_by_text(f"Thanks! Recorded the correct label {chosen}")).to_be_visible()
    _shot(page, "predict-4-sent")

    rows = _query(
        stack.database,
        "SELECT f.correct, f.label, f.comment, p.label FROM feedback f "
        "JOIN predictions p ON p.id = f.prediction_id WHERE f.prediction_id = ?",
        prediction_id,
    )
    assert rows == [(0, chosen, "end-to-end test", predicted)]


def test_batch_of_sample_photos_downloads_one_csv_row_per_photo(
    page: Any, stack: Stack, har_sample_dir: Path, tmp_path: Path
) -> None:
    photos = [path for path, _ in _sample_photos(har_sample_dir)[:BATCH_SIZE]]
    expect = sync_api.expect
    _sidebar_link(page, "Batch").click()
    uploader = page.get_by_test_id("stFileUploader").filter(has_text="Images or a .zip of images")
    expect(uploader).to_be_visible()
    run = page.get_by_role("button", name="Run batch")
    expect(run).to_be_disabled()

    uploader.locator('input[type="file"]').set_input_files([str(path) for path in photos])
    for path in photos:
        expect(uploader.get_by_text(path.name)).to_be_visible()
    expect(run).to_be_enabled()
    _shot(page, "batch-1-uploaded")
    run.click()
    expect(page.get_by_text(f"{BATCH_SIZE} of {BATCH_SIZE} images predicted")).to_be_visible()
    expect(page.get_by_test_id("stPlotlyChart").locator(".js-plotly-plot")).to_be_visible()
    _shot(page, "batch-2-results")

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename == "clip-har-batch.csv"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with saved.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["file"] for row in rows) == sorted(path.name for path in photos)
    assert all(row["label"] in stack.classes for row in rows), rows
    assert all(not row["error"] for row in rows), rows
    for row in rows:  # each row is the service's logged batch prediction
        logged = _query(
            stack.database,
            "SELECT route, label FROM predictions WHERE id = ?",
            row["prediction_id"],
        )
        assert logged == [("v1/predict/batch", row["label"])]
