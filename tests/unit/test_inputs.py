"""Every input named to ``predict`` gets a result row, in its place, with a reason code:
missing files, symlink loops, folders without images and patterns matching nothing are
reported and counted, never dropped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import make_photo
from typer.testing import CliRunner

from clip_har.cli.common import EXIT_FAILURE, EXIT_PARTIAL
from clip_har.cli.main import app
from clip_har.errors import ImageProblem
from clip_har.inference.inputs import InputProblem, collect_inputs
from clip_har.inference.predictor import Predictor

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _codes(inputs: list[str]) -> dict[str, ImageProblem]:
    return {problem.input: problem.code for problem in collect_inputs(inputs).problems}


def test_a_missing_input_gets_a_row_and_counts_in_the_totals(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    good = make_photo(tmp_path / "good.jpg")
    missing = tmp_path / "nonexistent" / "x.jpg"
    result = runner.invoke(
        app, ["predict", str(good), str(missing), "-b", str(tiny_bundle), "--print", "json"]
    )
    assert result.exit_code == EXIT_PARTIAL, result.output
    rows = json.loads(result.stdout)
    assert [row["path"] for row in rows] == [str(good), str(missing)]
    assert rows[0]["label"] and rows[0]["error_code"] is None
    assert rows[1]["label"] is None
    assert rows[1]["error_code"] == "missing_file" and rows[1]["error"] == "file not found"
    assert "predicted 1 of 2 images, 1 failed" in result.stderr


def test_a_symlink_loop_is_reported_as_a_loop_not_as_a_pattern(tmp_path: Path) -> None:
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    twisted = tmp_path / "a.jpg"
    (tmp_path / "b.jpg").symlink_to(twisted)
    twisted.symlink_to(tmp_path / "b.jpg")
    [self_loop, pair] = collect_inputs([str(loop), str(twisted)]).problems
    assert self_loop.code is ImageProblem.SYMLINK_LOOP and "symbolic link loop" in self_loop.reason
    assert pair.code is ImageProblem.SYMLINK_LOOP
    assert "match" not in self_loop.reason


def test_every_kind_of_unusable_input_has_its_own_code(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "deeper").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    broken = tmp_path / "broken.jpg"
    broken.symlink_to(tmp_path / "gone.jpg")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    codes = _codes(
        [
            str(tmp_path / "missing.jpg"),
            str(broken),
            str(fifo),
            str(empty),
            str(tmp_path / "none*.png"),
            str(empty / "*"),  # matches only a folder without images (and a text file)
        ]
    )
    assert codes == {
        str(tmp_path / "missing.jpg"): ImageProblem.MISSING_FILE,
        str(broken): ImageProblem.MISSING_FILE,
        str(fifo): ImageProblem.NOT_A_FILE,
        str(empty): ImageProblem.NO_IMAGES,
        str(tmp_path / "none*.png"): ImageProblem.NO_IMAGES,
    }  # notes.txt is a file the pattern names: it is tried, and fails as not an image
    reasons = {p.input: p.reason for p in collect_inputs([str(broken)]).problems}
    assert "broken symbolic link" in reasons[str(broken)]


def test_a_pattern_matching_only_empty_folders_is_one_problem(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    [problem] = collect_inputs([str(tmp_path / "*")]).problems
    assert problem == InputProblem(
        str(tmp_path / "*"), ImageProblem.NO_IMAGES, "matches only folders without image files"
    )


@pytest.mark.skipif(AS_ROOT, reason="root reads folders whatever their permissions")
def test_a_folder_that_cannot_be_listed_is_unreadable_not_empty(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    make_photo(locked / "x.jpg")
    locked.chmod(0o000)
    try:
        [problem] = collect_inputs([str(locked)]).problems
    finally:
        locked.chmod(0o755)
    assert problem.code is ImageProblem.UNREADABLE and "cannot list" in problem.reason


def test_entries_keep_input_order_and_each_image_once(photo_folder: Path) -> None:
    first = photo_folder / "good_1.png"
    collected = collect_inputs(
        [str(first), str(photo_folder / "missing.jpg"), str(photo_folder), str(first)]
    )
    assert collected.entries[0] == first
    assert collected.entries[1] == InputProblem(
        str(photo_folder / "missing.jpg"), ImageProblem.MISSING_FILE, "file not found"
    )
    assert len(collected.paths) == 5 and len(set(collected.paths)) == 5
    assert collected.unmatched == [str(photo_folder / "missing.jpg")]


def test_predict_inputs_yields_one_result_per_entry_in_order(
    tiny_bundle: Path, photo_folder: Path
) -> None:
    predictor = Predictor.from_bundle(tiny_bundle)
    collected = collect_inputs(
        [str(photo_folder / "nope*.jpg"), str(photo_folder / "good_0.jpg"), "/no/such.png"]
    )
    results = list(predictor.predict_inputs(collected))
    assert [r.code for r in results] == [
        ImageProblem.NO_IMAGES,
        None,
        ImageProblem.MISSING_FILE,
    ]
    assert results[1].prediction is not None
    assert str(results[0].path) == str(photo_folder / "nope*.jpg")


def test_no_usable_input_at_all_is_a_failure_naming_each(tmp_path: Path) -> None:
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    result = runner.invoke(app, ["predict", str(loop), str(tmp_path), "--model", "tiny"])
    assert result.exit_code == EXIT_FAILURE
    assert "no input images found" in result.stderr
    assert "symbolic link loop" in result.stderr and "no image files" in result.stderr
