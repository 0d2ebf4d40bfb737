"""Video and webcam prediction with OpenCV: capture, per-frame labels, overlay, outputs.

OpenCV (``cv2``) comes with the ``[video]`` extra and is imported only when a video is
opened, so the rest of the package works without it. A source is a camera index
(``0``), a video file, or a stream URL (``rtsp://…``, ``http://…``).

:class:`FrameLabeler` predicts every ``every``-th frame with a
:class:`~clip_har.inference.predictor.Predictor`, smooths over time
(:mod:`clip_har.inference.smoothing`) and carries the last decision over the frames in
between. :func:`run_stream` is the live loop behind ``clip-har webcam``;
:func:`sample_video` reads a file for ``clip-har predict-video``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from clip_har.errors import ClipHarError, VideoError
from clip_har.inference.predictor import Predictor
from clip_har.inference.smoothing import Smoother
from clip_har.io import atomic_write

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'clip-har[video]'"
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")
VIDEO_SUFFIXES = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v", ".mov": "mp4v"}


QUIET_OPENCV = {"OPENCV_LOG_LEVEL": "SILENT", "OPENCV_FFMPEG_LOGLEVEL": "-8"}
"""OpenCV's and FFmpeg's own logging, off (-8: FFmpeg's AV_LOG_QUIET): a source that cannot
be opened is our one error message, not ``[mov,mp4,… @ 0x…] moov atom not found`` or
``[ WARN:0…]`` lines. A value already in the environment (to debug a source) is kept."""


def require_cv2() -> ModuleType:
    """The ``cv2`` module, with its own logging quiet (:data:`QUIET_OPENCV`), or an error
    that says which extra installs it."""
    chosen = "OPENCV_LOG_LEVEL" in os.environ
    for name, value in QUIET_OPENCV.items():
        os.environ.setdefault(name, value)  # read when OpenCV and its FFmpeg backend start
    try:
        import cv2
    except ModuleNotFoundError as exc:
        raise VideoError(
            f"OpenCV is not installed ({exc.name}); video needs the [video] extra: {INSTALL_HINT}"
        ) from None
    if not chosen:  # in case cv2 was imported (and its level read) before
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


def parse_source(text: str) -> int | str:
    """A camera index for a number (``"0"``), else the path or URL as given."""
    stripped = text.strip()
    return int(stripped) if stripped.isdigit() else text


def is_live(source: int | str) -> bool:
    """A camera or a network stream (no known length, times from the clock)."""
    return isinstance(source, int) or source.lower().startswith(STREAM_SCHEMES)


@dataclass(frozen=True)
class Frame:
    """A decoded frame: its index from 0, its time in seconds and its BGR pixels."""

    index: int
    time_s: float
    image: np.ndarray = field(repr=False)


class VideoSource:
    """An opened OpenCV capture. Use it as a context manager.

    File frames are timed ``index / fps``; live frames by the clock since opening."""

    def __init__(self, source: int | str) -> None:
        cv2 = require_cv2()
        self.source = source
        self.live = is_live(source)
        if not self.live and not Path(str(source)).is_file():
            what = "is a folder" if Path(str(source)).is_dir() else "does not exist"
            raise VideoError(f"video source {source} {what}")
        self._capture = cv2.VideoCapture(source)
        if not self._capture.isOpened():
            self._capture.release()
            reason = (
                "no camera with this index"
                if isinstance(source, int)
                else (
                    "the stream cannot be reached" if self.live else "not a video OpenCV can read"
                )
            )
            raise VideoError(f"cannot open video source {source}: {reason}")
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if np.isfinite(fps) and 0 < fps < 1000 else 0.0
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count: int | None = None if self.live or count <= 0 else count
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.frames_read = 0
        self._started = time.monotonic()

    def frames(self, every: int = 1) -> Iterator[Frame]:
        """Decode every ``every``-th frame (the others are skipped without decoding)."""
        cv2 = require_cv2()
        index = 0
        while True:
            wanted = index % every == 0
            ok = self._capture.grab()
            if not ok:
                return
            self.frames_read = index + 1
            if wanted:
                ok, image = self._capture.retrieve()
                if not ok or image is None:
                    return
                yield Frame(index, self._time(index, cv2), image)
            index += 1

    def duration_s(self) -> float:
        """The length of what was read so far (for a file read to the end: its length)."""
        if self.fps > 0 and not self.live:
            return self.frames_read / self.fps
        return time.monotonic() - self._started

    def _time(self, index: int, cv2: ModuleType) -> float:
        if self.live:
            return time.monotonic() - self._started
        if self.fps > 0:
            return index / self.fps
        return float(self._capture.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0

    def close(self) -> None:
        self._capture.release()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def to_pil(image_bgr: np.ndarray) -> Image.Image:
    """An OpenCV BGR frame as an RGB PIL image."""
    return Image.fromarray(np.ascontiguousarray(image_bgr[..., ::-1]))


@dataclass(frozen=True)
class FrameRecord:
    """What one frame got: the raw top label of the latest prediction, the smoothed label,
    and whether this frame was predicted or carried the last decision over."""

    frame: int
    time_s: float
    predicted: bool
    raw_label: str
    raw_confidence: float
    label: str
    confidence: float

    def to_json(self) -> str:
        values = asdict(self)
        for key in ("time_s", "raw_confidence", "confidence"):
            values[key] = round(values[key], 6)
        return json.dumps(values)


class FrameLabeler:
    """Predicts every ``every``-th frame, smooths, and carries decisions in between."""

    def __init__(self, predictor: Predictor, smoother: Smoother, *, every: int = 1) -> None:
        if every < 1:
            raise ClipHarError(f"every must be at least 1, not {every}")
        self.predictor = predictor
        self.smoother = smoother
        self.every = every
        self.predicted = 0
        self._last: tuple[str, float, str, float] | None = None

    def label(self, frame: Frame) -> FrameRecord:
        predict = self._last is None or frame.index % self.every == 0
        if predict:
            (prediction,) = self.predictor.predict_images([to_pil(frame.image)])
            smoothed = self.smoother.update(prediction.probabilities)
            name = self.predictor.class_names[smoothed.index]
            self._last = (prediction.label, prediction.score, name, smoothed.confidence)
            self.predicted += 1
        assert self._last is not None
        raw_label, raw_confidence, label, confidence = self._last
        return FrameRecord(
            frame.index, frame.time_s, predict, raw_label, raw_confidence, label, confidence
        )


class FpsMeter:
    """Frames per second over the last ``span`` frames (for the overlay)."""

    def __init__(self, span: int = 30) -> None:
        self.times: deque[float] = deque(maxlen=span)

    def tick(self) -> float:
        self.times.append(time.monotonic())
        if len(self.times) < 2:
            return 0.0
        elapsed = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / elapsed if elapsed > 0 else 0.0


def draw_overlay(image_bgr: np.ndarray, lines: list[str]) -> np.ndarray:
    """A copy of the frame with ``lines`` in white on a dark box at the top left; the
    frame keeps its size."""
    cv2 = require_cv2()
    out = image_bgr.copy()
    height, width = out.shape[:2]
    scale = max(0.4, min(width, height) / 600)
    thickness = max(1, round(scale * 2))
    sizes = [cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness) for line in lines]
    line_height = max((h + base for (_, h), base in sizes), default=0) + 6
    box_w = max((w for (w, _), _ in sizes), default=0) + 12
    box_h = line_height * len(lines) + 6
    region = out[: min(box_h, height), : min(box_w, width)]
    region[:] = (region * 0.35).astype(out.dtype)  # darken under the text
    for row, line in enumerate(lines):
        y = 6 + line_height * (row + 1) - 6
        cv2.putText(
            out,
            line,
            (6, y),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    return out


def overlay_lines(record: FrameRecord, fps: float) -> list[str]:
    """The overlay text of a frame: smoothed label and confidence, raw label, FPS."""
    return [
        f"{record.label} {record.confidence:.0%}",
        f"raw: {record.raw_label} {record.raw_confidence:.0%}",
        f"{fps:.1f} FPS",
    ]


@dataclass
class StreamSummary:
    """What a :func:`run_stream` run did."""

    frames: int = 0
    predicted: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def fps(self) -> float:
        """Processing speed: frames handled per second of wall time."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        ending = " (interrupted)" if self.interrupted else ""
        return (
            f"{self.frames} frames, {self.predicted} predicted, {self.seconds:.1f} s, "
            f"{self.fps:.1f} FPS{ending}"
        )


class StreamOutputs(ExitStack):
    """The optional annotated video and per-frame JSONL log of a stream, written through
    staging files that become the outputs when the stream is closed (after a Ctrl-C too)."""

    def __init__(
        self, video: Path | None, log_path: Path | None, fps: float, size: tuple[int, int]
    ):
        super().__init__()
        self._writer: Any = None
        self._log: Any = None
        if video is not None:
            cv2 = require_cv2()
            codec = VIDEO_SUFFIXES.get(video.suffix.lower(), "mp4v")
            staging = self.enter_context(atomic_write(video))
            writer = cv2.VideoWriter(
                str(staging), cv2.VideoWriter.fourcc(*codec), fps or 30.0, size
            )
            if not writer.isOpened():
                self.close()
                raise VideoError(f"cannot write video {video}: OpenCV has no {codec} encoder")
            self._writer = writer
            self.callback(writer.release)  # released before the rename
        if log_path is not None:
            staging = self.enter_context(atomic_write(log_path))
            self._log = self.enter_context(staging.open("w", encoding="utf-8"))

    def write(self, record: FrameRecord, annotated: np.ndarray) -> None:
        if self._writer is not None:
            self._writer.write(annotated)
        if self._log is not None:
            self._log.write(record.to_json() + "\n")


class Window:
    """An OpenCV window, when this OpenCV build and the session can show one."""

    NAME = "clip-har"

    def __init__(self, wanted: bool, *, explicit: bool) -> None:
        self.open = False
        if not wanted:
            return
        cv2 = require_cv2()
        try:
            cv2.namedWindow(self.NAME, cv2.WINDOW_NORMAL)
        except cv2.error:
            say = log.warning if explicit else log.debug
            say(
                "this OpenCV build cannot open windows (opencv-python-headless): "
                "continuing without a window"
            )
            return
        self.open = True

    def show(self, image: np.ndarray) -> bool:
        """Show ``image``; ``False`` when the user pressed q or Esc."""
        if not self.open:
            return True
        cv2 = require_cv2()
        cv2.imshow(self.NAME, image)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        if self.open:
            require_cv2().destroyWindow(self.NAME)
            self.open = False


def default_show(source: int | str) -> bool:
    """Show a window by default only for a camera, and only when a display exists."""
    return isinstance(source, int) and bool(os.environ.get("DISPLAY"))


def run_stream(
    source: VideoSource,
    labeler: FrameLabeler,
    outputs: StreamOutputs,
    *,
    window: Window | None = None,
    max_frames: int | None = None,
) -> StreamSummary:
    """Label, annotate and record every frame of ``source`` until it ends, ``max_frames``
    are done, the window is closed with q/Esc, or Ctrl-C (``summary.interrupted``)."""
    summary = StreamSummary()
    meter = FpsMeter()
    started = time.monotonic()
    try:
        for frame in source.frames():
            record = labeler.label(frame)
            annotated = draw_overlay(frame.image, overlay_lines(record, meter.tick()))
            outputs.write(record, annotated)
            summary.frames += 1
            if window is not None and not window.show(annotated):
                break
            if max_frames is not None and summary.frames >= max_frames:
                break
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.predicted = labeler.predicted
    summary.seconds = time.monotonic() - started
    return summary


@dataclass(frozen=True)
class SampledVideo:
    """The sampled frames of a video: indices, times, probabilities ``[N, C]``, the raw
    top-1 of each, and the video's length."""

    frames: list[int]
    times: list[float]
    probabilities: np.ndarray
    duration_s: float


def sample_video(
    source: VideoSource,
    predictor: Predictor,
    every: int,
    progress: Callable[[int, int], None] | None = None,
) -> SampledVideo:
    """Predict every ``every``-th frame of a file, in batches of the predictor's size."""
    frames: list[int] = []
    times: list[float] = []
    rows: list[np.ndarray] = []
    pending: list[Frame] = []
    total = -(-source.frame_count // every) if source.frame_count else 0

    def flush() -> None:
        predictions = predictor.predict_images([to_pil(f.image) for f in pending])
        rows.extend(p.probabilities for p in predictions)
        frames.extend(f.index for f in pending)
        times.extend(f.time_s for f in pending)
        pending.clear()
        if progress is not None:
            progress(len(rows), max(total, len(rows)))

    for frame in source.frames(every):
        pending.append(frame)
        if len(pending) >= predictor.options.batch_size:
            flush()
    if pending:
        flush()
    if not rows:
        raise VideoError(f"{source.source}: no frame could be decoded")
    probabilities = np.stack(rows).astype(np.float32)
    return SampledVideo(frames, times, probabilities, source.duration_s())
