"""Action timelines: per-sample labels of a video as segments, a CSV and a PNG plot.

A segment starts at the first sample that carries its label and ends where the next one
starts (the last one at the end of the video), so a boundary is exact to within one
sampling step: the change happened somewhere between the sample before and the one that
shows it. Segments shorter than ``min_segment`` seconds are merged into a neighbour.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from clip_har.io import atomic_write

TIMELINE_COLUMNS = ("start_s", "end_s", "label", "confidence", "samples")

# a qualitative palette (Tableau 20 order): one colour per label, in order of appearance
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
)


@dataclass(frozen=True)
class Sample:
    """One sampled frame's (smoothed) decision."""

    time_s: float
    label: str
    confidence: float


@dataclass(frozen=True)
class Segment:
    """A stretch of video with one label: ``[start_s, end_s)``, the mean confidence of its
    samples, and how many samples it covers."""

    start_s: float
    end_s: float
    label: str
    confidence: float
    samples: int

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def build_segments(
    samples: Sequence[Sample], end_s: float, *, min_segment: float = 0.0
) -> list[Segment]:
    """Runs of equal labels in ``samples`` (in time order) as segments ending at ``end_s``,
    with segments shorter than ``min_segment`` seconds merged into a neighbour."""
    segments: list[Segment] = []
    for index, sample in enumerate(samples):
        following = samples[index + 1].time_s if index + 1 < len(samples) else end_s
        piece = Segment(
            sample.time_s, max(following, sample.time_s), sample.label, sample.confidence, 1
        )
        if segments and segments[-1].label == sample.label:
            segments[-1] = _join(segments[-1], piece, sample.label)
        else:
            segments.append(piece)
    return merge_short(segments, min_segment)


def merge_short(segments: Sequence[Segment], min_segment: float) -> list[Segment]:
    """Merge each segment shorter than ``min_segment`` (shortest first, earliest on a tie)
    into its longer neighbour (the earlier one on a tie), then join neighbours that now
    share a label, until none is short or one segment is left. A merged segment takes the
    neighbour's label and the sample-weighted mean confidence of both."""
    merged = list(segments)
    while len(merged) > 1:
        short = [i for i, s in enumerate(merged) if s.duration_s < min_segment]
        if not short:
            break
        i = min(short, key=lambda j: (merged[j].duration_s, j))
        if i == 0:
            into = 1
        elif i == len(merged) - 1:
            into = i - 1
        else:
            into = i + 1 if merged[i + 1].duration_s > merged[i - 1].duration_s else i - 1
        first, second = sorted((i, into))
        merged[first : second + 1] = [_join(merged[first], merged[second], merged[into].label)]
        merged = _coalesce(merged)
    return merged


def _join(a: Segment, b: Segment, label: str) -> Segment:
    samples = a.samples + b.samples
    confidence = (a.confidence * a.samples + b.confidence * b.samples) / samples
    return Segment(a.start_s, b.end_s, label, confidence, samples)


def _coalesce(segments: list[Segment]) -> list[Segment]:
    out: list[Segment] = []
    for segment in segments:
        if out and out[-1].label == segment.label:
            out[-1] = _join(out[-1], segment, segment.label)
        else:
            out.append(segment)
    return out


def timeline_csv(segments: Sequence[Segment]) -> str:
    """The segments as CSV (:data:`TIMELINE_COLUMNS`), times in seconds to the millisecond."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TIMELINE_COLUMNS)
    for s in segments:
        writer.writerow(
            [f"{s.start_s:.3f}", f"{s.end_s:.3f}", s.label, f"{s.confidence:.4f}", s.samples]
        )
    return buffer.getvalue()


def read_timeline_csv(path: Path) -> list[Segment]:
    """Segments back from a file :func:`timeline_csv` wrote."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            Segment(
                float(row["start_s"]),
                float(row["end_s"]),
                row["label"],
                float(row["confidence"]),
                int(row["samples"]),
            )
            for row in csv.DictReader(handle)
        ]


def tick_step(duration_s: float, most: int = 10) -> float:
    """A round tick spacing (0.5, 1, 2, 5, 10, 15, 30 s, 1, 2, 5, 10, 15, 30 min, …) that
    puts at most ``most`` intervals on ``duration_s``."""
    for step in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if duration_s / step <= most:
            return float(step)
    return 3600.0 * math.ceil(duration_s / (3600.0 * most))


def _clock(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"


def render_timeline(
    segments: Sequence[Segment], duration_s: float, *, title: str = "", width: int = 1000
) -> Image.Image:
    """A PNG-ready picture of the timeline: one coloured band per segment over a time axis
    with ticks, and a legend of the labels (with their total time)."""
    font = ImageFont.load_default()
    labels = list(dict.fromkeys(s.label for s in segments))
    colours = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}
    margin, band_top, band_height = 20, 40, 60
    axis_y = band_top + band_height
    legend_top = axis_y + 40
    row_height = 22
    height = legend_top + row_height * max(1, len(labels)) + margin
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 12), title or "action timeline", fill="black", font=font)
    span = max(duration_s, 1e-9)
    scale = (width - 2 * margin) / span

    def x_of(seconds: float) -> int:
        return margin + round(min(max(seconds, 0.0), span) * scale)

    for s in segments:
        box = (x_of(s.start_s), band_top, max(x_of(s.end_s) - 1, x_of(s.start_s)), axis_y)
        draw.rectangle(box, fill=colours[s.label])
    draw.rectangle((margin, band_top, width - margin, axis_y), outline="black")
    step = tick_step(duration_s)
    tick = 0.0
    while tick <= duration_s + 1e-9:
        x = x_of(tick)
        draw.line((x, axis_y, x, axis_y + 6), fill="black")
        draw.text((x, axis_y + 9), _clock(tick), fill="black", font=font, anchor="ma")
        tick += step
    totals = {label: sum(s.duration_s for s in segments if s.label == label) for label in labels}
    for row, label in enumerate(labels):
        y = legend_top + row * row_height
        draw.rectangle((margin, y, margin + 14, y + 14), fill=colours[label], outline="black")
        draw.text((margin + 22, y + 1), f"{label} ({totals[label]:.1f} s)", fill="black", font=font)
    return image


def write_timeline_png(
    path: Path, segments: Sequence[Segment], duration_s: float, *, title: str = ""
) -> Path:
    """Write :func:`render_timeline` to ``path`` atomically."""
    picture = render_timeline(segments, duration_s, title=title)
    with atomic_write(path) as staging:
        picture.save(staging, format="PNG")
    return path
