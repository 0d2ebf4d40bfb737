"""The live page's frame labeller: predict every k-th frame through the client and draw
the latest label, its confidence and the frame rate on every frame."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from PIL import Image, ImageDraw

from clip_har.client import HARClient
from clip_har.errors import ClipHarError

logger = logging.getLogger(__name__)

_FPS_WINDOW = 30  # frames the shown frame rate averages over


class FrameLabeller:
    """Call it with each frame (it is thread-safe: WebRTC calls it from its own thread);
    it returns the frame with the overlay. ``label``/``confidence`` hold the latest answer,
    ``error`` the latest failure (shown on the frame instead of raising)."""

    def __init__(self, client: HARClient, *, every: int = 5) -> None:
        self.client = client
        self.every = max(1, every)
        self.label: str | None = None
        self.confidence = 0.0
        self.error: str | None = None
        self.frames = 0
        self._times: deque[float] = deque(maxlen=_FPS_WINDOW)
        self._lock = threading.Lock()

    @property
    def fps(self) -> float:
        with self._lock:
            if len(self._times) < 2:
                return 0.0
            return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)

    def __call__(self, frame: Image.Image) -> Image.Image:
        with self._lock:
            index = self.frames
            self.frames += 1
            self._times.append(time.monotonic())
        if index % self.every == 0:
            self._predict(frame)
        return self.overlay(frame)

    def _predict(self, frame: Image.Image) -> None:
        try:
            answer = self.client.predict(frame.convert("RGB"), top_k=1)
        except ClipHarError as exc:  # shown on the frame; the stream goes on
            logger.info("live prediction failed: %s", exc)
            with self._lock:
                self.error = str(exc)
            return
        with self._lock:
            self.label, self.confidence, self.error = answer.label, answer.confidence, None

    def overlay(self, frame: Image.Image) -> Image.Image:
        """A copy of ``frame`` with the latest label, confidence and FPS in its top left."""
        with self._lock:
            label, confidence, error = self.label, self.confidence, self.error
        if error is not None:
            text = f"error: {error[:60]}"
        elif label is None:
            text = "waiting for the first prediction…"
        else:
            text = f"{label} {confidence:.0%}"
        text += f"  ·  {self.fps:.1f} fps"
        image = frame.convert("RGB")  # a copy for RGB input too
        draw = ImageDraw.Draw(image)
        box = draw.textbbox((8, 8), text)
        draw.rectangle((box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4), fill=(0, 0, 0))
        draw.text((8, 8), text, fill=(255, 255, 255))
        return image
