"""The evaluation report in a real browser: headless Chromium opens ``report.html`` offline.

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install chromium``; ``.ci/run``
installs it in CI) and the ``playwright`` Python package (a dev extra). The full-page
screenshot is kept in ``tests/e2e/artifacts/report.png`` for people to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_photo
from PIL import Image, ImageStat

from clip_har.evaluation.metrics import EvalArrays, compute_metrics
from clip_har.evaluation.plots import write_plots
from clip_har.evaluation.report import write_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "report.png"
CLASSES = [
    "calling", "clapping", "cycling", "dancing", "drinking", "eating", "fighting", "hugging",
    "laughing", "listening_to_music", "running", "sitting", "sleeping", "texting", "using_laptop",
]  # fmt: skip

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install playwright)"
)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is absent (apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``report.html`` of a 15-class evaluation of generated photos (one class without images)."""
    folder = tmp_path_factory.mktemp("browser-report")
    rng = np.random.default_rng(1)
    rows = 90
    y_true = rng.integers(0, len(CLASSES) - 1, size=rows)  # the last class has no images
    logits = rng.normal(size=(rows, len(CLASSES)))
    logits[np.arange(rows), y_true] += rng.uniform(0.0, 4.0, size=rows)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    paths = [make_photo(folder / f"photo_{i}.jpg", (160, 120), seed=i) for i in range(rows)]
    metrics = compute_metrics(EvalArrays(y_true, probs, CLASSES), n_bootstrap=100)
    plots = write_plots(y_true, probs, paths, CLASSES, metrics, folder / "report")
    meta = {"bundle": "tiny-har", "data": str(folder), "split": "test", "images": rows}
    _, page = write_report(metrics, meta, plots, folder / "report")
    return page


def test_report_renders_offline_in_chromium(report_html: Path) -> None:
    requests: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report_html.as_uri(), wait_until="load")
            assert page.title() == "Evaluation report"
            for selector in ("#confusion-matrix", "#examples"):
                image = page.locator(selector)
                sync_api.expect(image).to_be_visible()
                width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
                assert width > 0, f"{selector} did not decode"
            heading = page.get_by_role("heading", name="Per class", exact=True)
            sync_api.expect(heading).to_be_visible()
            ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACT), full_page=True)
        finally:
            browser.close()
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []
    assert ARTIFACT.stat().st_size > 50_000
    with Image.open(ARTIFACT) as shot:
        assert shot.format == "PNG"
        assert shot.width >= 1280 and shot.height > 3000  # the whole page, not one viewport
        assert ImageStat.Stat(shot.convert("L")).stddev[0] > 20  # not a blank page
