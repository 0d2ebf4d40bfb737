"""Batch inference without a model: inputs and their keys, shards, resumable result files
(a cut-off last line included) and the merge checks (clip_har.inference.batch)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import make_photo

from clip_har.errors import ClipHarError, ImageProblem, UsageError
from clip_har.inference.batch import (
    COLUMNS,
    LEGACY_COLUMNS,
    BatchInput,
    BatchOutputError,
    BatchRow,
    Shard,
    Summary,
    api_error_code,
    check_resumable,
    existing_rows,
    list_inputs,
    merge_outputs,
    open_writer,
    parts_folder,
    read_output,
    shard_of,
    write_rows,
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Images in nested folders, plus a file that is not an image."""
    root = tmp_path / "photos"
    (root / "a" / "deep").mkdir(parents=True)
    (root / "b").mkdir()
    for index, name in enumerate(["x.jpg", "a/y.png", "a/deep/z.jpeg", "b/w.jpg"]):
        make_photo(root / name, seed=index)
    (root / "notes.txt").write_text("not an image")
    return root


def _keys(inputs: list[BatchInput]) -> list[str]:
    return [item.key for item in inputs]


def _rows(*keys: str, label: str = "running", shard: str | None = "0/1") -> list[BatchRow]:
    return [
        BatchRow(key, label, 0.75, ((label, 0.75), ("sitting", 0.25)), "m:1", "torch", shard=shard)
        for key in keys
    ]


def _shard_outputs(folder: Path, count: int, *, skip: int | None = None) -> list[Path]:
    """The outputs of ``count`` shards over keys k0.jpg … k29.jpg (all but shard ``skip``)."""
    keys = [f"k{number}.jpg" for number in range(30)]
    paths = []
    for index in range(count):
        if index != skip:
            mine = [key for key in keys if shard_of(key, count) == index]
            path = folder / f"shard-{index}.jsonl"
            write_rows(path, _rows(*mine, shard=f"{index}/{count}"))
            paths.append(path)
    return paths


# --------------------------------------------------------------------------- inputs


def test_a_folder_gives_every_image_below_it_keyed_by_relative_path(tree: Path) -> None:
    found = list_inputs(str(tree))
    assert _keys(found) == ["a/deep/z.jpeg", "a/y.png", "b/w.jpg", "x.jpg"]
    assert all(item.path == tree / item.key for item in found)


def test_keys_do_not_depend_on_where_the_data_is_mounted(tree: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "mount"
    moved.parent.mkdir()
    tree.rename(moved)
    assert _keys(list_inputs(str(moved))) == ["a/deep/z.jpeg", "a/y.png", "b/w.jpg", "x.jpg"]


def test_a_glob_is_keyed_relative_to_its_literal_folders(tree: Path) -> None:
    assert _keys(list_inputs(f"{tree}/a/**/*.*")) == ["deep/z.jpeg", "y.png"]
    assert _keys(list_inputs(f"{tree}/*.jpg")) == ["x.jpg"]


def test_a_csv_manifest_lists_its_filename_column_once_each(tmp_path: Path, tree: Path) -> None:
    table = tree / "list.csv"
    table.write_text("Filename,label\nx.jpg,running\nb/w.jpg,sitting\nx.jpg,running\n,x\n")
    found = list_inputs(str(table))
    assert _keys(found) == ["b/w.jpg", "x.jpg"]
    assert found[1].path == tree / "x.jpg"


def test_labels_csv_names_images_in_the_images_folder_beside_it(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    make_photo(tmp_path / "images" / "p.jpg")
    (tmp_path / "labels.csv").write_text("filename,label\np.jpg,running\n")
    [found] = list_inputs(str(tmp_path / "labels.csv"))
    assert (found.key, found.path) == ("p.jpg", tmp_path / "images" / "p.jpg")


def test_a_data_manifest_is_keyed_relative_to_its_folder(tmp_path: Path, tree: Path) -> None:
    import pandas as pd

    from clip_har.data.manifest import write_manifest

    frame = pd.DataFrame(
        {"path": [str(tree / "x.jpg"), str(tree / "b/w.jpg")], "label": ["a", "b"]}
    )
    write_manifest(frame, tree / "data")
    assert _keys(list_inputs(str(tree / "data"))) == ["../b/w.jpg", "../x.jpg"]


def test_inputs_that_give_no_image_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ClipHarError, match="no such file"):
        list_inputs(str(tmp_path / "missing"))
    with pytest.raises(ClipHarError, match="no image files"):
        list_inputs(str(tmp_path / "*.jpg"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match="not a folder, a glob"):
        list_inputs(str(tmp_path / "notes.txt"))
    (tmp_path / "bad.csv").write_text("name,label\na.jpg,b\n")
    with pytest.raises(ClipHarError, match="no filename column"):
        list_inputs(str(tmp_path / "bad.csv"))


# --------------------------------------------------------------------------- shards


KEYS = [f"class_{i % 7}/img_{i:05d}.jpg" for i in range(2000)]


@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shards_partition_the_inputs(count: int) -> None:
    inputs = [BatchInput(key, Path(key)) for key in KEYS]
    shards = [set(_keys(Shard(index, count).take(inputs))) for index in range(count)]
    assert set().union(*shards) == set(KEYS)
    assert sum(len(shard) for shard in shards) == len(KEYS)  # pairwise disjoint
    assert all(len(shard) > len(KEYS) / count * 0.8 for shard in shards)  # roughly even


def test_an_input_keeps_its_shard_whatever_else_is_listed() -> None:
    inputs = [BatchInput(key, Path(key)) for key in KEYS]
    shuffled = inputs[:]
    random.Random(1).shuffle(shuffled)
    fewer = shuffled[: len(shuffled) // 2]
    shard = Shard(1, 3)
    assert set(_keys(shard.take(shuffled))) == set(_keys(shard.take(inputs)))
    assert set(_keys(shard.take(fewer))) == set(_keys(shard.take(inputs))) & set(_keys(fewer))


def test_the_shard_of_a_key_is_fixed() -> None:
    """Pinned: a change would send inputs to other shards than earlier runs did."""
    keys = ("a.jpg", "b.jpg", "images/c.png", "d.jpg", "e.jpg")
    assert [shard_of(key, 3) for key in keys] == [1, 0, 1, 2, 1]
    assert shard_of("a.jpg", 1000003) == 826654


@pytest.mark.parametrize("text", ["3/3", "-1/3", "0/0", "1", "a/b", "1/2/3", ""])
def test_a_bad_shard_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="I/N"):
        Shard.parse(text)


def test_a_shard_reads_as_written() -> None:
    assert Shard.parse("2/5") == Shard(2, 5) and str(Shard(2, 5)) == "2/5"


# --------------------------------------------------------------------------- result files


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_rows_written_read_back_the_same(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    rows = [
        *_rows("a.jpg", "b/c.jpg"),
        BatchRow("bad.jpg", model="m:1", format="torch", error="cannot\ndecode", error_code="x"),
    ]
    writer = open_writer(path)
    for row in rows:
        writer.append(row)
    writer.close()
    back = read_output(path)
    assert back[:2] == rows[:2]
    assert back[2].error == "cannot decode" and back[2].label is None  # one line per row
    assert not parts_folder(path).exists()


def test_csv_has_one_readable_column_each(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    writer = open_writer(path)
    writer.append(_rows("a.jpg")[0])
    writer.close()
    header, line = path.read_text().splitlines()
    assert header == ",".join(COLUMNS) and COLUMNS[-1] == "shard"
    assert line == "a.jpg,running,0.75,running:0.750000;sitting:0.250000,m:1,torch,,,0/1"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_outputs_written_before_the_shard_column_still_read(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"old{suffix}"
    old = [{k: v for k, v in row.record().items() if k != "shard"} for row in _rows("a.jpg")]
    if suffix == ".csv":
        path.write_text(
            ",".join(LEGACY_COLUMNS) + "\na.jpg,running,0.75,running:0.750000,m:1,torch,,\n"
        )
    elif suffix == ".jsonl":
        path.write_text(json.dumps(old[0]) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(old), path)
    [row] = read_output(path)
    assert (row.path, row.label, row.shard) == ("a.jpg", "running", None)


def test_a_csv_with_only_an_old_header_gets_the_current_one(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text(",".join(LEGACY_COLUMNS) + "\n")
    writer = open_writer(path)
    writer.append(_rows("a.jpg")[0])
    writer.close()
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert read_output(path) == _rows("a.jpg")


def test_resuming_another_shards_output_or_an_old_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    check_resumable(path, _rows("a.jpg", shard="1/3"), Shard(1, 3))  # its own: fine
    check_resumable(path, [], Shard(1, 3))
    with pytest.raises(BatchOutputError, match=r"rows of shard 0/3, not 1/3.*--force"):
        check_resumable(path, _rows("a.jpg", shard="0/3"), Shard(1, 3))
    with pytest.raises(BatchOutputError, match=r"older clip-har batch.*--force"):
        check_resumable(path, _rows("a.jpg", shard=None), Shard(0, 1))


def test_api_error_codes_become_the_bundles_image_problem_codes() -> None:
    assert api_error_code("unsupported_media_type") == ImageProblem.NOT_AN_IMAGE.value
    assert api_error_code("invalid_image") == ImageProblem.CORRUPT_DATA.value
    assert api_error_code("empty_image") == ImageProblem.EMPTY_FILE.value
    assert api_error_code("image_too_small") == ImageProblem.TOO_SMALL.value
    assert api_error_code("image_too_large") == ImageProblem.TOO_LARGE.value
    assert api_error_code("payload_too_large") == ImageProblem.TOO_LARGE.value
    assert api_error_code("invalid_base64") == "invalid_base64"  # no image problem: kept


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_cut_off_last_line_is_dropped_and_appending_resumes(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    write_rows(path, _rows("a.jpg", "b.jpg", "c.jpg"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])  # killed while writing c.jpg
    done = existing_rows(path)
    assert [row.path for row in done] == ["a.jpg", "b.jpg"]
    writer = open_writer(path)
    writer.append(_rows("c.jpg")[0])
    writer.close()
    assert [row.path for row in read_output(path)] == ["a.jpg", "b.jpg", "c.jpg"]


def test_parquet_parts_survive_a_kill_and_are_combined(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    writer = open_writer(path)
    for row in _rows(*(f"{i}.jpg" for i in range(300))):
        writer.append(row)
    # killed here: no close(); the first 256 rows are a published part
    assert len(existing_rows(path)) == 256 and not path.exists()
    writer = open_writer(path)
    writer.append(_rows("last.jpg")[0])
    writer.close()
    assert len(read_output(path)) == 257 and not parts_folder(path).exists()


def test_force_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_rows(path, _rows("a.jpg"))
    writer = open_writer(path, restart=True)
    writer.append(_rows("b.jpg")[0])
    writer.close()
    assert [row.path for row in read_output(path)] == ["b.jpg"]


def test_a_foreign_file_is_refused_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("file,guess\na.jpg,running\n")
    with pytest.raises(BatchOutputError, match="not a clip-har batch output"):
        existing_rows(path)
    jsonl = tmp_path / "out.jsonl"
    jsonl.write_text(json.dumps({"x": 1}) + "\n")
    with pytest.raises(BatchOutputError, match="line 1"):
        existing_rows(jsonl)
    assert path.read_text() == "file,guess\na.jpg,running\n"


# --------------------------------------------------------------------------- merge


def test_merge_gives_every_row_once_sorted(tmp_path: Path) -> None:
    write_rows(tmp_path / "0.csv", _rows("c.jpg", "a.jpg", shard="0/3"))
    write_rows(tmp_path / "1.jsonl", _rows("b.jpg", shard="1/3"))
    write_rows(tmp_path / "2.parquet", [])  # a shard with no input: it stands for 2/3
    expected = [BatchInput(key, Path(key)) for key in ("a.jpg", "b.jpg", "c.jpg")]
    shards = [tmp_path / n for n in ("0.csv", "1.jsonl", "2.parquet")]
    for check in (expected, None):
        merged = merge_outputs(shards, check)
        assert [row.path for row in merged] == ["a.jpg", "b.jpg", "c.jpg"]


def test_merge_without_expect_finds_a_missing_shard(tmp_path: Path) -> None:
    assert len(merge_outputs(_shard_outputs(tmp_path, 3))) == 30
    (tmp_path / "gap").mkdir()
    with pytest.raises(BatchOutputError, match=r"1 shard of 3 missing: no output holds shard 1/3"):
        merge_outputs(_shard_outputs(tmp_path / "gap", 3, skip=1))


def test_merge_refuses_a_shard_given_twice_and_the_same_file_twice(tmp_path: Path) -> None:
    shards = _shard_outputs(tmp_path, 3)
    copy = tmp_path / "copy-of-0.csv"
    write_rows(copy, read_output(shards[0]))
    with pytest.raises(BatchOutputError, match="shard 0/3 is given twice") as caught:
        merge_outputs([*shards, copy])
    assert "doubled" not in str(caught.value)  # the cause, not every doubled key
    with pytest.raises(BatchOutputError) as caught:
        merge_outputs([*shards, tmp_path / ".." / tmp_path.name / shards[0].name])
    assert "the same file is given twice" in str(caught.value)
    assert "doubled" not in str(caught.value)


def test_merge_refuses_outputs_of_different_splits_or_mixed_shards(tmp_path: Path) -> None:
    write_rows(tmp_path / "a.jsonl", _rows("a.jpg", shard="0/2"))
    write_rows(tmp_path / "b.jsonl", _rows("b.jpg", shard="1/3"))
    with pytest.raises(BatchOutputError, match="different splits"):
        merge_outputs([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    write_rows(tmp_path / "c.jsonl", [*_rows("a.jpg", shard="0/2"), *_rows("c.jpg", shard="1/2")])
    with pytest.raises(BatchOutputError, match=r"c\.jsonl holds rows of several shards: 0/2, 1/2"):
        merge_outputs([tmp_path / "c.jsonl"])


def test_merging_outputs_without_a_shard_column_needs_expect(tmp_path: Path) -> None:
    old = tmp_path / "old.jsonl"
    write_rows(old, _rows("a.jpg", "b.jpg", shard=None))
    with pytest.raises(BatchOutputError, match=r"old.jsonl: written by an older.*--expect"):
        merge_outputs([old])
    expected = [BatchInput(key, Path(key)) for key in ("a.jpg", "b.jpg")]
    assert [row.path for row in merge_outputs([old], expected)] == ["a.jpg", "b.jpg"]


def test_merge_names_doubled_missing_and_unexpected_inputs(tmp_path: Path) -> None:
    write_rows(tmp_path / "0.csv", _rows("a.jpg", "b.jpg", shard="0/2"))
    write_rows(tmp_path / "1.csv", _rows("b.jpg", "z.jpg", shard="1/2"))
    expected = [BatchInput(key, Path(key)) for key in ("a.jpg", "b.jpg", "c.jpg")]
    with pytest.raises(BatchOutputError) as caught:
        merge_outputs([tmp_path / "0.csv", tmp_path / "1.csv"], expected)
    message = str(caught.value)
    assert "1 input doubled: b.jpg" in message and "1.csv" in message
    assert "1 input missing: c.jpg" in message
    assert "not among the expected inputs: z.jpg" in message


def test_summary_counts_classes_and_errors() -> None:
    rows = [
        *_rows("a", "b", "c"),
        *_rows("d", label="sitting"),
        BatchRow("e", error="bad", error_code="x"),
    ]
    summary = Summary().extend(rows)
    assert summary.as_json() == {
        "rows": 5,
        "predicted": 4,
        "errors": 1,
        "classes": [
            {"class": "running", "count": 3, "share": 0.75, "mean_confidence": 0.75},
            {"class": "sitting", "count": 1, "share": 0.25, "mean_confidence": 0.75},
        ],
    }
