"""``clip-har predict-video`` and ``clip-har webcam`` on a test-made MP4 with three segments
of different synthetic content (acceptance 5 of issue 16)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from clip_har.inference.predictor import Predictor
from clip_har.inference.timeline import read_timeline_csv

cv2 = pytest.importorskip("cv2")

pytestmark = pytest.mark.integration

FPS = 10
SEGMENT_FRAMES = 30  # 3 s each
SIZE = 320  # frame side in pixels
EVERY = 5  # predict-video samples every 5th frame: a 0.5 s step
MIN_MARGIN = 0.005  # top-1 minus top-2 probability each chosen pattern must keep


def _candidate(seed: int) -> np.ndarray:
    """A synthetic RGB frame: a checkerboard, a gradient, stripes of two colours or one
    flat colour, drawn at 160 px and doubled (large features survive MP4 compression)."""
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, 256, (2, 3))
    side = SIZE // 2
    kind = seed % 4
    if kind == 0:
        cell = int(rng.integers(2, 40))
        yy, xx = np.mgrid[0:side, 0:side]
        mask = ((yy // cell + xx // cell) % 2).astype(bool)
        pattern = np.where(mask[..., None], first, second)
    elif kind == 1:
        t = np.linspace(0, 1, side)[:, None]
        pattern = np.repeat((first * (1 - t) + second * t)[:, None], side, axis=1)
    elif kind == 2:
        width = int(rng.integers(2, 30))
        mask = (np.arange(side) // width) % 2 == 0
        pattern = np.repeat(np.where(mask[None, :, None], first, second), side, axis=0)
    else:
        pattern = np.broadcast_to(first, (side, side, 3))
    return np.repeat(np.repeat(pattern.astype(np.uint8), 2, axis=0), 2, axis=1)


def _margin(probabilities: np.ndarray) -> float:
    top = np.sort(probabilities)[::-1]
    return float(top[0] - top[1])


@dataclass(frozen=True)
class ThreeSegments:
    video: Path
    labels: list[str]  # the expected label of each segment, in order
    boundaries: list[float]  # where segments 2 and 3 start, in seconds


@pytest.fixture(scope="module")
def three_segments(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> ThreeSegments:
    """An MP4 of three 3 s segments whose patterns the tiny bundle ranks with three
    different top labels, each by a clear margin: picked from a fixed candidate list (the
    clearest pattern of each label; the three clearest labels), then checked again on the
    frames decoded from the MP4, so a near-tie fails here, loudly, instead of flaking."""
    predictor = Predictor.from_bundle(tiny_bundle)
    patterns = [_candidate(seed) for seed in range(400)]
    best: dict[str, tuple[float, int]] = {}
    predictions = predictor.predict_images([Image.fromarray(p) for p in patterns])
    for seed, prediction in enumerate(predictions):
        margin = _margin(prediction.probabilities)
        if margin > best.get(prediction.label, (-1.0, 0))[0]:
            best[prediction.label] = (margin, seed)
    chosen = sorted(best.values(), reverse=True)[:3]
    assert len(chosen) == 3, f"the candidates give fewer than three top labels: {best}"

    video = tmp_path_factory.mktemp("video") / "three.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (SIZE, SIZE))
    for _, seed in chosen:
        bgr = np.ascontiguousarray(patterns[seed][..., ::-1])
        for _ in range(SEGMENT_FRAMES):
            writer.write(bgr)
    writer.release()

    capture = cv2.VideoCapture(str(video))
    decoded = []
    for index in range(3 * SEGMENT_FRAMES):
        ok, frame = capture.read()
        assert ok, f"frame {index} of the test video cannot be read"
        if index % SEGMENT_FRAMES == SEGMENT_FRAMES // 2:
            decoded.append(Image.fromarray(np.ascontiguousarray(frame[..., ::-1])))
    capture.release()
    labels = []
    for prediction in predictor.predict_images(decoded):
        margin = _margin(prediction.probabilities)
        assert margin >= MIN_MARGIN, f"{prediction.label} wins by only {margin:.4f} after MP4"
        labels.append(prediction.label)
    assert len(set(labels)) == 3, f"decoded segments are not three labels: {labels}"
    seconds = SEGMENT_FRAMES / FPS
    return ThreeSegments(video, labels, [seconds, 2 * seconds])


def test_predict_video_finds_three_segments_at_the_right_boundaries(
    three_segments: ThreeSegments, tiny_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "timeline"
    done = run_cli(
        "predict-video", str(three_segments.video), "-o", str(out), "-b", str(tiny_bundle),
        "--every", str(EVERY),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    segments = read_timeline_csv(out / "timeline.csv")
    assert [s.label for s in segments] == three_segments.labels
    step = EVERY / FPS
    for segment, boundary in zip(segments[1:], three_segments.boundaries, strict=True):
        assert abs(segment.start_s - boundary) <= step + 1e-6, segments
    assert segments[0].start_s == 0.0
    assert segments[-1].end_s == pytest.approx(3 * SEGMENT_FRAMES / FPS)
    assert all(0.0 < s.confidence <= 1.0 for s in segments)
    with Image.open(out / "timeline.png") as picture:
        picture.verify()
        assert picture.format == "PNG"
    lines = (out / "frames.jsonl").read_text().splitlines()
    assert len(lines) == 3 * SEGMENT_FRAMES // EVERY
    assert [json.loads(line)["frame"] for line in lines[:3]] == [0, EVERY, 2 * EVERY]


def _frame_count(video: Path) -> int:
    capture = cv2.VideoCapture(str(video))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def _records(log: Path) -> Iterator[dict[str, object]]:
    for line in log.read_text().splitlines():
        yield json.loads(line)


def test_webcam_on_a_file_runs_headless_to_the_end_and_reports_fps(
    three_segments: ThreeSegments, tiny_bundle: Path, tmp_path: Path
) -> None:
    annotated, log = tmp_path / "annotated.mp4", tmp_path / "frames.jsonl"
    done = run_cli(
        "webcam", "--source", str(three_segments.video), "-b", str(tiny_bundle),
        "--every", "3", "--smoothing", "vote", "--window", "3",
        "-o", str(annotated), "--log", str(log),
        env={"DISPLAY": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    frames = 3 * SEGMENT_FRAMES
    summary = re.search(r"(\d+) frames, (\d+) predicted, [\d.]+ s, ([\d.]+) FPS", done.stderr)
    assert summary, done.stderr
    assert (int(summary[1]), int(summary[2])) == (frames, frames // 3)
    assert float(summary[3]) > 0
    records = list(_records(log))
    assert [r["frame"] for r in records] == list(range(frames))
    assert [r["predicted"] for r in records[:4]] == [True, False, False, True]
    assert {r["label"] for r in records} == set(three_segments.labels)
    assert _frame_count(annotated) == frames


@pytest.mark.parametrize("name", ["notes.txt", "broken.mp4"])
def test_a_source_that_is_not_a_video_is_one_line_without_opencv_noise(
    tmp_path: Path, name: str
) -> None:
    source = tmp_path / name  # text named .mp4: FFmpeg's mov demuxer would log "moov atom"
    source.write_text("this is not a video\n")
    for command in (
        ["webcam", "--source", str(source), "-b", str(tmp_path / "bundle")],
        ["predict-video", str(source), "-o", str(tmp_path / "out"), "-b", str(tmp_path / "b")],
    ):
        done = run_cli(*command)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [
            f"error: cannot open video source {source}: not a video OpenCV can read"
        ], done.stderr
