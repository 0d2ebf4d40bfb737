"""Video building blocks: temporal smoothing, timeline segments, the PNG plot, the overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_har.errors import ConfigError
from clip_har.inference.smoothing import (
    EmaSmoother,
    VoteSmoother,
    make_smoother,
    smooth_sequence,
)
from clip_har.inference.timeline import (
    Sample,
    Segment,
    build_segments,
    merge_short,
    read_timeline_csv,
    render_timeline,
    tick_step,
    timeline_csv,
    write_timeline_png,
)

A, B, C = np.array([0.7, 0.2, 0.1]), np.array([0.2, 0.7, 0.1]), np.array([0.1, 0.2, 0.7])


def test_ema_averages_probabilities_with_alpha_on_the_newest() -> None:
    ema = EmaSmoother(alpha=0.25)
    assert ema.update(A).index == 0
    second = ema.update(B)  # 0.25 * B + 0.75 * A = [0.575, 0.325, 0.1]
    assert second.index == 0 and second.confidence == pytest.approx(0.575)
    for _ in range(5):
        last = ema.update(B)
    assert last.index == 1  # a lasting change wins after a few updates


def test_vote_takes_the_majority_of_the_window_and_breaks_ties_by_mean_probability() -> None:
    vote = VoteSmoother(window=3)
    assert [vote.update(p).index for p in (A, A, B, B, C)] == [0, 0, 0, 1, 1]
    tie = VoteSmoother(window=2)
    tie.update(np.array([0.5, 0.4, 0.1]))
    decided = tie.update(np.array([0.1, 0.8, 0.1]))  # one vote each: B has the higher mean
    assert decided.index == 1 and decided.confidence == pytest.approx(0.6)


def test_none_keeps_each_prediction() -> None:
    smoother = make_smoother("none")
    assert [smoother.update(p).index for p in (A, C, B)] == [0, 2, 1]


def test_offline_vote_is_centred_so_a_clean_change_has_no_lag() -> None:
    probs = np.stack([A] * 5 + [B] * 5)
    decisions = smooth_sequence(probs, "vote", window=5)
    assert [d.index for d in decisions] == [0] * 5 + [1] * 5
    glitch = np.stack([A] * 4 + [C] + [A] * 4)  # a one-sample glitch is voted away
    assert {d.index for d in smooth_sequence(glitch, "vote", window=3)} == {0}


def test_offline_ema_keeps_a_clean_boundary_in_place() -> None:
    decisions = smooth_sequence(np.stack([A] * 6 + [B] * 6), "ema", alpha=0.5)
    assert [d.index for d in decisions] == [0] * 6 + [1] * 6


@pytest.mark.parametrize(
    ("kind", "options"), [("ema", {"alpha": 0.0}), ("ema", {"alpha": 1.5}), ("vote", {"window": 0})]
)
def test_bad_smoothing_settings_are_refused(kind: str, options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        make_smoother(kind, **options)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown smoothing"):
        make_smoother("median")


def _samples(labels: str, step: float = 0.5) -> list[Sample]:
    return [Sample(i * step, label, 0.5) for i, label in enumerate(labels)]


def test_segments_start_at_the_first_sample_of_each_label_and_end_at_the_next() -> None:
    segments = build_segments(_samples("aaabbbbcc"), end_s=4.5)
    assert [(s.label, s.start_s, s.end_s, s.samples) for s in segments] == [
        ("a", 0.0, 1.5, 3),
        ("b", 1.5, 3.5, 4),
        ("c", 3.5, 4.5, 2),
    ]


def test_short_segments_merge_into_the_longer_neighbour() -> None:
    # "c" (0.5 s) sits between "a" (1.5 s) and "b" (2.0 s): it joins "b"
    segments = build_segments(_samples("aaacbbbb"), end_s=4.0, min_segment=1.0)
    assert [(s.label, s.start_s, s.end_s, s.samples) for s in segments] == [
        ("a", 0.0, 1.5, 3),
        ("b", 1.5, 4.0, 5),
    ]


def test_a_short_segment_between_two_of_one_label_joins_them() -> None:
    segments = build_segments(_samples("aaaabaaaa"), end_s=4.5, min_segment=1.0)
    assert [(s.label, s.start_s, s.end_s, s.samples) for s in segments] == [("a", 0.0, 4.5, 9)]


def test_merging_weights_confidence_by_samples_and_stops_at_one_segment() -> None:
    merged = merge_short([Segment(0, 1, "a", 0.9, 3), Segment(1, 1.5, "b", 0.3, 1)], 5.0)
    assert len(merged) == 1 and merged[0].label == "a"
    assert merged[0].confidence == pytest.approx((0.9 * 3 + 0.3) / 4)


def test_timeline_csv_round_trips(tmp_path: Path) -> None:
    segments = build_segments(_samples("aabb"), end_s=2.0)
    path = tmp_path / "timeline.csv"
    path.write_text(timeline_csv(segments))
    assert read_timeline_csv(path) == segments


def test_timeline_png_has_a_band_per_label(tmp_path: Path) -> None:
    segments = build_segments(_samples("aaaabbbbcccc"), end_s=6.0)
    path = write_timeline_png(tmp_path / "timeline.png", segments, 6.0, title="t")
    with Image.open(path) as image:
        image.load()
        middle = [image.getpixel((x, 70)) for x in (100, 500, 900)]  # inside the band
    assert len(set(middle)) == 3
    assert render_timeline(segments, 6.0).size[0] == 1000


def test_tick_steps_are_round_and_few() -> None:
    assert tick_step(9.0) == 1.0
    assert tick_step(95.0) == 10.0
    assert tick_step(4 * 3600.0) == 1800.0


def test_overlay_keeps_the_frame_size_and_draws_something() -> None:
    pytest.importorskip("cv2")
    from clip_har.inference.video import draw_overlay

    for shape in ((120, 160, 3), (31, 17, 3), (720, 1280, 3)):
        frame = np.full(shape, 200, np.uint8)
        annotated = draw_overlay(frame, ["running 87%", "12.0 FPS"])
        assert annotated.shape == frame.shape and annotated.dtype == frame.dtype
        assert not np.array_equal(annotated, frame)
        assert np.all(frame == 200)  # the input frame is left alone


def test_sources_camera_index_versus_path() -> None:
    from clip_har.inference.video import is_live, parse_source

    assert parse_source("0") == 0 and is_live(0)
    assert parse_source("clip.mp4") == "clip.mp4" and not is_live("clip.mp4")
    assert is_live("rtsp://camera.local/stream")
