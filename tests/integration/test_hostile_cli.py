"""Every ``clip-har`` command fed hostile arguments and inputs: each must answer with a clear
message, a non-zero exit code from the documented scheme and no traceback on either stream.

The commands and their options are read from the live Typer app, so a new command or a
renamed option is covered (or reported as uncovered) without editing a hand-kept list.
Commands run in-process through ``CliRunner``, which still catches an escaping exception.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, make_photo, run_cli, runnable_commands
from typer.testing import CliRunner, Result

from clip_har.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE
from clip_har.cli.main import app

pytestmark = pytest.mark.integration

BUG_MARKER = "this is a bug in clip-har"  # what the handler prints for an unforeseen exception

COMMANDS: dict[str, Any] = runnable_commands(app)


# --------------------------------------------------------------------------- hostile inputs


@dataclass(frozen=True)
class World:
    """Hostile (and a few sound) inputs, made once for the module."""

    root: Path
    bundle: Path  # sound
    corrupt_manifest: Path  # manifest.json is not JSON
    headless: Path  # head file deleted
    truncated: Path  # exports/model.onnx cut in half
    manifest: Path  # a sound imported manifest folder (labels running, sitting)
    corrupt_parquet: Path  # a folder whose manifest.parquet is garbage
    photos: Path  # class sub-folders running/ and sitting/
    file: Path  # a plain text file, where folders are expected
    folder: Path  # an empty folder, where files are expected
    csv_folder: Path  # a folder named like an output file: x.csv/
    missing: Path  # does not exist
    bad_model: Path  # a save_pretrained model whose preprocessor_config.json is unusable
    garbled_model: Path  # a save_pretrained model whose config.json is not JSON
    marked_model: Path  # the tiny preset folder whose clip_har_preset.json is not JSON
    split: Path  # the sound manifest, split into train/val/test
    corrupt_checkpoint: Path  # a --checkpoint-dir whose checkpoint.pt is garbage
    corrupt_details: Path  # an evaluation folder whose metrics_full.json is not JSON
    columnless_predictions: Path  # an evaluation folder whose predictions.csv lacks columns
    params: dict[str, Path]  # broken params files by what is wrong with them


runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def world(tiny_bundle: Path, tiny_backbone: Any, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("hostile")

    def bundle_copy(name: str) -> Path:
        return Path(shutil.copytree(tiny_bundle, root / name))

    corrupt_manifest = bundle_copy("corrupt-manifest")
    (corrupt_manifest / "manifest.json").write_text('{"schema_version": 1, "name": ')
    headless = bundle_copy("headless")
    head = json.loads((headless / "manifest.json").read_text())["head"]["file"]
    (headless / head).unlink()
    truncated = root / "truncated"
    exported = invoke("export", tiny_bundle, "-o", truncated, "--formats", "onnx")
    assert exported.exit_code == 0, exported.output
    onnx = truncated / "exports" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])

    photos = root / "photos"
    for offset, label in enumerate(("running", "sitting")):  # two of the bundle's classes
        (photos / label).mkdir(parents=True)
        for index in range(3):
            make_photo(photos / label / f"{index}.jpg", seed=index + 10 * offset)
    manifest = root / "manifest"
    imported = invoke("data", "import", photos, "-o", manifest)
    assert imported.exit_code == 0, imported.output
    corrupt_parquet = root / "corrupt-parquet"
    corrupt_parquet.mkdir()
    (corrupt_parquet / "manifest.parquet").write_bytes(b"PAR1 this is not parquet")

    bad_model = root / "bad-model"
    tiny_backbone.model.save_pretrained(bad_model)
    tiny_backbone.tokenizer.save_pretrained(bad_model)
    preprocessing = tiny_backbone.image_config.to_hf() | {"image_std": [0.5, 0.0, 0.5]}
    (bad_model / "preprocessor_config.json").write_text(json.dumps(preprocessing))
    garbled_model = Path(shutil.copytree(bad_model, root / "garbled-model"))
    (garbled_model / "config.json").write_text('{"model_type": "clip", ')
    (garbled_model / "preprocessor_config.json").write_text(
        json.dumps(tiny_backbone.image_config.to_hf())
    )

    marked_model = Path(shutil.copytree(tiny_backbone.source_dir, root / "marked-model"))
    (marked_model / "clip_har_preset.json").write_text('{"preset": "tiny", ')
    split = root / "split"
    splitted = invoke("data", "split", manifest, "-o", split, "--ratios", "0.7,0.15,0.15")
    assert splitted.exit_code == 0, splitted.output
    corrupt_checkpoint = root / "checkpoints"
    corrupt_checkpoint.mkdir()
    (corrupt_checkpoint / "checkpoint.pt").write_bytes(b"not a checkpoint at all")
    corrupt_details = root / "corrupt-evaluation"
    corrupt_details.mkdir()
    (corrupt_details / "metrics_full.json").write_text('{"class_names": ["running", ')
    (corrupt_details / "predictions.csv").write_text(
        "path,label,predicted\na.jpg,running,running\n"
    )
    columnless_predictions = root / "columnless-evaluation"
    columnless_predictions.mkdir()
    (columnless_predictions / "metrics_full.json").write_text('{"class_names": ["running"]}')
    (columnless_predictions / "predictions.csv").write_text("file,guess\na.jpg,running\n")

    text_file = root / "notes.txt"
    text_file.write_text("not what you think\n")
    (root / "latin1-classes.txt").write_bytes("running\ncaf\xe9\n".encode("latin-1"))
    empty = root / "empty-folder"
    empty.mkdir()
    (root / "x.csv").mkdir()
    params_dir = root / "params"
    params_dir.mkdir()
    params = {
        "unknown key": "predict:\n  topk: 3\n",
        "wrong type": "predict:\n  top_k: many\n",
        "invalid YAML": "predict: [top_k: 3\n",
        "a YAML list": "- predict\n- train\n",
        "not UTF-8": b"predict:\n  top_k: \xff\xfe\n",
        "a section that is a number": "predict: 5\n",
    }
    params_files = {}
    for index, (what, content) in enumerate(params.items()):
        path = params_dir / f"params-{index}.yaml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        params_files[what] = path
    return World(
        root=root,
        bundle=tiny_bundle,
        corrupt_manifest=corrupt_manifest,
        headless=headless,
        truncated=truncated,
        manifest=manifest,
        corrupt_parquet=corrupt_parquet,
        photos=photos,
        file=text_file,
        folder=empty,
        csv_folder=root / "x.csv",
        missing=root / "does-not-exist",
        bad_model=bad_model,
        garbled_model=garbled_model,
        marked_model=marked_model,
        split=split,
        corrupt_checkpoint=corrupt_checkpoint,
        corrupt_details=corrupt_details,
        columnless_predictions=columnless_predictions,
        params=params_files,
    )


# --------------------------------------------------------------------------- the checks


def _flat(text: str) -> str:
    """Output without panel borders and line breaks, so wrapped messages still match."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


def check_clean_failure(result: Result, code: int, *mentions: str) -> None:
    """A message naming ``mentions``, exit ``code``, no traceback and no unforeseen error."""
    output = result.stdout + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{type(result.exception).__name__} escaped: {result.exception}\n{output}"
    )
    assert "Traceback" not in output, output
    assert BUG_MARKER not in output, output
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}:\n{output}"
    flat = _flat(output)
    for text in mentions:
        assert _flat(text) in flat, f"{text!r} not in:\n{output}"


# --------------------------------------------------------------------------- per-command cases


Args = Callable[[World], list[str | Path]]
Mentions = Callable[[World], list[str | Path]]


@dataclass(frozen=True)
class Case:
    name: str
    args: Args  # after the command's own words
    mentions: Mentions = lambda w: []
    code: int = EXIT_FAILURE


def _nothing(w: World) -> list[str | Path]:
    return []


def _bundle_cases(before: Args = _nothing, after: Args = _nothing) -> list[Case]:
    """A bundle given between ``before`` and ``after``: missing, a file, a corrupt
    manifest.json, a deleted head file."""
    return [
        Case("missing bundle", lambda w: [*before(w), w.missing, *after(w)], lambda w: [w.missing]),
        Case("bundle is a file", lambda w: [*before(w), w.file, *after(w)], lambda w: [w.file]),
        Case(
            "corrupt manifest.json",
            lambda w: [*before(w), w.corrupt_manifest, *after(w)],
            lambda w: [w.corrupt_manifest / "manifest.json", "not valid JSON"],
        ),
        Case(
            "head file deleted",
            lambda w: [*before(w), w.headless, *after(w)],
            lambda w: ["head", "missing"],
        ),
    ]


def _manifest_cases(before: Args = _nothing, after: Args = _nothing) -> list[Case]:
    """A manifest folder given between ``before`` and ``after``: missing, a text file, a
    garbage manifest.parquet."""
    return [
        Case(
            "missing manifest", lambda w: [*before(w), w.missing, *after(w)], lambda w: [w.missing]
        ),
        Case(
            "manifest is a text file",
            lambda w: [*before(w), w.file, *after(w)],
            lambda w: [w.file],
        ),
        Case(
            "corrupt manifest.parquet",
            lambda w: [*before(w), w.corrupt_parquet, *after(w)],
            lambda w: [w.corrupt_parquet],
        ),
    ]


def _out(w: World, name: str) -> Path:
    return w.root / "out" / name


def _latin1(w: World) -> Path:
    """A class list saved as Latin-1 (``café``): not UTF-8 at byte 11."""
    return w.root / "latin1-classes.txt"


CASES: dict[str, list[Case]] = {
    "formats": [
        Case("an unexpected argument", lambda w: ["onnx"], lambda w: ["onnx"], EXIT_USAGE),
    ],
    "predict": [
        Case(
            "missing image",
            lambda w: [w.missing / "x.jpg", "-b", w.bundle],
            lambda w: ["no input images found"],
        ),
        *_bundle_cases(lambda w: [w.photos, "-b"]),
        Case(
            "truncated export",
            lambda w: [w.photos, "-b", w.truncated, "--format", "onnx"],
            lambda w: ["model.onnx", "truncated"],
        ),
        Case(
            "export the bundle lacks",
            lambda w: [w.photos, "-b", w.bundle, "--format", "onnx"],
            lambda w: ["no 'onnx' export"],
        ),
        Case(
            "unusable preprocessor config",
            lambda w: [w.photos, "--model", w.bad_model, "--labels", "a,b"],
            lambda w: [w.bad_model / "preprocessor_config.json", "image_std"],
        ),
        Case(
            "corrupt clip_har_preset.json",
            lambda w: [w.photos, "--model", w.marked_model, "--labels", "a,b"],
            lambda w: [w.marked_model / "clip_har_preset.json", "not valid JSON"],
        ),
        Case(
            "unknown --format",
            lambda w: [w.photos, "-b", w.bundle, "--format", "nope"],
            lambda w: ["--format", "nope"],
            EXIT_USAGE,
        ),
        Case(
            "--bundle and --model together",
            lambda w: [w.photos, "-b", w.bundle, "--model", "tiny"],
            lambda w: ["--bundle", "--model"],
            EXIT_USAGE,
        ),
        Case(
            "-o is a folder",
            lambda w: [w.photos, "-b", w.bundle, "-o", w.folder],
            lambda w: [w.folder],
        ),
        Case(
            "-o x.csv is a folder",
            lambda w: [w.photos, "-b", w.bundle, "-o", w.csv_folder],
            lambda w: [w.csv_folder, "folder"],
        ),
        Case(
            "-o has an unknown type",
            lambda w: [w.photos, "-b", w.bundle, "-o", _out(w, "predictions.txt")],
            lambda w: ["predictions.txt", ".csv or .json"],
            EXIT_USAGE,
        ),
    ],
    "export": [
        *_bundle_cases(after=lambda w: ["-o", _out(w, "export")]),
        Case(
            "unknown format",
            lambda w: [w.bundle, "-o", _out(w, "export"), "--formats", "nope"],
            lambda w: ["nope"],
            EXIT_USAGE,
        ),
        Case(
            "empty --formats",
            lambda w: [w.bundle, "-o", _out(w, "export"), "--formats", ""],
            lambda w: ["formats"],
            EXIT_USAGE,
        ),
        Case(
            "missing --parity-data",
            lambda w: [w.bundle, "-o", _out(w, "export"), "--parity-data", w.missing],
            lambda w: [w.missing],
        ),
        Case(
            "-o is a file",
            lambda w: [w.bundle, "-o", w.file, "--formats", "onnx"],
            lambda w: [w.file],
        ),
    ],
    "benchmark": [
        *_bundle_cases(),
        Case(
            "truncated export",
            lambda w: [w.truncated, "--formats", "onnx", "--batch-sizes", "1"],
            lambda w: ["model.onnx", "truncated"],
        ),
        Case(
            "batch size 0",
            lambda w: [w.bundle, "--batch-sizes", "0"],
            lambda w: ["batch sizes"],
            EXIT_USAGE,
        ),
        Case(
            "batch sizes not numbers",
            lambda w: [w.bundle, "--batch-sizes", "one,two"],
            lambda w: ["one,two"],
            EXIT_USAGE,
        ),
        Case(
            "unknown format in --formats",
            lambda w: [w.bundle, "--formats", "torch,onxx"],
            lambda w: ["onxx"],
            EXIT_USAGE,
        ),
        Case("missing --data", lambda w: [w.bundle, "--data", w.missing], lambda w: [w.missing]),
    ],
    "bundle create": [
        Case(
            "-o is a file",
            lambda w: ["-o", w.file, "--model", "tiny"],
            lambda w: [w.file, "already exists"],
        ),
        Case(
            "missing classes file",
            lambda w: ["-o", _out(w, "b1"), "--model", "tiny", "--classes", w.missing],
            lambda w: [w.missing],
        ),
        Case(
            "classes is a folder",
            lambda w: ["-o", _out(w, "b2"), "--model", "tiny", "--classes", w.folder],
            lambda w: [w.folder],
        ),
        Case(
            "Latin-1 classes file",
            lambda w: ["-o", _out(w, "b6"), "--model", "tiny", "--classes", _latin1(w)],
            lambda w: [_latin1(w), "not UTF-8", "byte 11"],
        ),
        Case(
            "missing prompts file",
            lambda w: ["-o", _out(w, "b3"), "--model", "tiny", "--prompts", w.missing / "p.yaml"],
            lambda w: ["p.yaml"],
        ),
        Case(
            "missing model folder",
            lambda w: ["-o", _out(w, "b4"), "--model", w.missing],
            lambda w: [w.missing],
        ),
        Case(
            "model folder is empty",
            lambda w: ["-o", _out(w, "b5"), "--model", w.folder],
            lambda w: [w.folder, "config.json"],
        ),
        Case(
            "unusable preprocessor config",
            lambda w: ["-o", _out(w, "b6"), "--model", w.bad_model],
            lambda w: [w.bad_model / "preprocessor_config.json", "image_std"],
        ),
        Case(
            "config.json is not JSON",
            lambda w: ["-o", _out(w, "b7"), "--model", w.garbled_model],
            lambda w: [w.garbled_model, "cannot load the model"],
        ),
        Case(
            "corrupt clip_har_preset.json",
            lambda w: ["-o", _out(w, "b8"), "--model", w.marked_model],
            lambda w: [w.marked_model / "clip_har_preset.json", "not valid JSON"],
        ),
    ],
    "bundle show": _bundle_cases(),
    "bundle verify": [
        *_bundle_cases(),
        Case(
            "truncated export",
            lambda w: [w.truncated],
            lambda w: [w.truncated / "exports" / "model.onnx", "corrupt or truncated"],
        ),
    ],
    "data import": [
        Case("missing source", lambda w: [w.missing, "-o", _out(w, "i1")], lambda w: [w.missing]),
        Case(
            "source is an unknown file",
            lambda w: [w.file, "-o", _out(w, "i2")],
            lambda w: [w.file],
        ),
        Case("empty folder", lambda w: [w.folder, "-o", _out(w, "i3")], lambda w: [w.folder]),
        Case("-o is a file", lambda w: [w.photos, "-o", w.file], lambda w: [w.file]),
    ],
    "data validate": [
        *_manifest_cases(after=lambda w: ["-o", _out(w, "v1")]),
        Case("-o is a file", lambda w: [w.manifest, "-o", w.file], lambda w: [w.file]),
        Case(
            "missing classes file",
            lambda w: [w.manifest, "-o", _out(w, "v2"), "--classes", w.missing],
            lambda w: [w.missing],
        ),
        Case(
            "Latin-1 classes file",
            lambda w: [w.manifest, "-o", _out(w, "v3"), "--classes", _latin1(w)],
            lambda w: [_latin1(w), "not UTF-8", "byte 11"],
        ),
    ],
    "data split": [
        *_manifest_cases(after=lambda w: ["-o", _out(w, "s1")]),
        Case("-o is a file", lambda w: [w.manifest, "-o", w.file], lambda w: [w.file]),
        Case(
            "ratios not numbers",
            lambda w: [w.manifest, "-o", _out(w, "s2"), "--ratios", "a,b,c"],
            lambda w: ["ratios"],
            EXIT_USAGE,
        ),
        Case(
            "ratios not summing to 1",
            lambda w: [w.manifest, "-o", _out(w, "s3"), "--ratios", "0.9,0.9,0.9"],
            lambda w: ["ratios"],
            EXIT_USAGE,
        ),
        Case(
            "negative seed",
            lambda w: [w.manifest, "-o", _out(w, "s4"), "--seed", "-1"],
            lambda w: ["--seed"],
            EXIT_USAGE,
        ),
    ],
    "data balance": [
        *_manifest_cases(after=lambda w: ["-o", _out(w, "bal1")]),
        Case("-o is a file", lambda w: [w.manifest, "-o", w.file], lambda w: [w.file]),
        Case(
            "unknown target",
            lambda w: [w.manifest, "-o", _out(w, "bal2"), "--target", "lots"],
            lambda w: ["lots"],
        ),
        Case(
            "unknown scheme",
            lambda w: [w.manifest, "-o", _out(w, "bal3"), "--scheme", "nowhere"],
            lambda w: ["nowhere"],
        ),
    ],
    "data preview-augment": [
        *_manifest_cases(after=lambda w: ["-o", _out(w, "grid.png")]),
        Case(
            "unknown policy",
            lambda w: [w.manifest, "-o", _out(w, "g.png"), "--policy", "wild"],
            lambda w: ["wild"],
        ),
        Case(
            "-o is a folder",
            lambda w: [w.manifest, "-o", w.folder, "--images", "1", "--copies", "1"],
            lambda w: [w.folder],
        ),
    ],
    "data has-labels": _manifest_cases(),
    "data track": [
        Case("missing path", lambda w: [w.missing], lambda w: [w.missing]),
    ],
    "data push": [
        Case("outside a DVC repository", lambda w: [], lambda w: ["DVC"]),
    ],
    "data pull": [
        Case("outside a DVC repository", lambda w: [], lambda w: ["DVC"]),
    ],
    "data version": [
        Case("missing path", lambda w: [w.missing], lambda w: [w.missing]),
        Case("a file outside DVC", lambda w: [w.file], lambda w: [w.file]),
    ],
    "data remote add": [
        Case("outside a DVC repository", lambda w: ["store", w.folder], lambda w: ["DVC"]),
    ],
    "train": [
        Case("no --data", lambda w: ["-o", _out(w, "t0")], lambda w: ["--data"], EXIT_USAGE),
        Case(
            "missing data",
            lambda w: ["-d", w.missing, "-o", _out(w, "t1"), "--model", "tiny"],
            lambda w: [w.missing],
        ),
        Case(
            "data is a file",
            lambda w: ["-d", w.file, "-o", _out(w, "t2"), "--model", "tiny"],
            lambda w: [w.file],
        ),
        Case(
            "corrupt manifest.parquet",
            lambda w: ["-d", w.corrupt_parquet, "-o", _out(w, "t3"), "--model", "tiny"],
            lambda w: [w.corrupt_parquet],
        ),
        Case(
            "unknown strategy",
            lambda w: ["-d", w.manifest, "-o", _out(w, "t4"), "--strategy", "magic"],
            lambda w: ["magic"],
            EXIT_USAGE,
        ),
        Case(
            "unknown distributed mode",
            lambda w: [
                *("-d", w.manifest, "-o", _out(w, "t5")),
                *("--distributed", "quantum"),
            ],
            lambda w: ["quantum"],
            EXIT_USAGE,
        ),
        Case(
            "--resume without --checkpoint-dir",
            lambda w: ["-d", w.manifest, "-o", _out(w, "t6"), "--resume"],
            lambda w: ["--resume", "--checkpoint-dir"],
            EXIT_USAGE,
        ),
        Case(
            "--resume from a corrupt checkpoint.pt",
            lambda w: [
                *("-d", w.split, "-o", _out(w, "t7"), "--model", "tiny"),
                *("--strategy", "clip-adapter", "--epochs", "1"),
                *("--checkpoint-dir", w.corrupt_checkpoint, "--resume"),
            ],
            lambda w: [w.corrupt_checkpoint / "checkpoint.pt", "not a readable checkpoint"],
        ),
    ],
    "train embed": [
        *_manifest_cases(after=lambda w: ["--model", "tiny"]),
        Case(
            "--store is a file",
            lambda w: [w.manifest, "--model", "tiny", "--store", w.file],
            lambda w: [w.file],
        ),
    ],
    "evaluate": [
        Case("no --bundle", lambda w: ["-d", w.manifest], lambda w: ["--bundle"], EXIT_USAGE),
        *_bundle_cases(lambda w: ["-b"], lambda w: ["-d", w.manifest, "-o", _out(w, "e1")]),
        Case(
            "truncated export",
            lambda w: [
                *("-b", w.truncated, "-d", w.manifest, "-o", _out(w, "e2")),
                *("--format", "onnx", "--split", "all"),
            ],
            lambda w: ["model.onnx", "truncated"],
        ),
        *_manifest_cases(
            lambda w: ["-b", w.bundle, "-d"], lambda w: ["-o", _out(w, "e3"), "--split", "all"]
        ),
        Case(
            "-o is a file",
            lambda w: ["-b", w.bundle, "-d", w.manifest, "-o", w.file, "--split", "all"],
            lambda w: [w.file],
        ),
        Case(
            "negative seed",
            lambda w: [
                *("-b", w.bundle, "-d", w.manifest, "-o", _out(w, "e4")),
                *("--split", "all", "--seed", "-1"),
            ],
            lambda w: ["--seed"],
            EXIT_USAGE,
        ),
        Case(
            "unknown --format",
            lambda w: [
                *("-b", w.bundle, "-d", w.manifest, "-o", _out(w, "e5")),
                *("--split", "all", "--format", "nope"),
            ],
            lambda w: ["--format", "nope"],
            EXIT_USAGE,
        ),
    ],
    "registry register": [
        *_bundle_cases(after=lambda w: ["--name", "har"]),
        Case(
            "invalid --name",
            lambda w: [w.bundle, "--name", "no spaces"],
            lambda w: ["invalid registered model name"],
            EXIT_USAGE,
        ),
        Case(
            "empty --name",
            lambda w: [w.bundle, "--name", ""],
            lambda w: ["--name must not be empty"],
            EXIT_USAGE,
        ),
    ],
    "registry list": [
        Case("an unexpected argument", lambda w: ["har"], lambda w: ["har"], EXIT_USAGE),
    ],
    "registry show": [
        Case("invalid reference", lambda w: ["har/v1"], lambda w: ["models:/NAME"], EXIT_USAGE),
        Case("no store here", lambda w: ["har@production"], lambda w: ["no model registry"]),
    ],
    "registry compare": [
        Case("invalid reference", lambda w: ["har/1", "har"], lambda w: ["'har'"], EXIT_USAGE),
    ],
    "registry promote": [
        Case("no store here", lambda w: ["har", "1"], lambda w: ["no model registry"]),
        Case("version 0", lambda w: ["har", "0"], lambda w: ["VERSION"], EXIT_USAGE),
        Case("version not a number", lambda w: ["har", "one"], lambda w: ["VERSION"], EXIT_USAGE),
        Case(
            "invalid alias",
            lambda w: ["har", "1", "--alias", "prod uction"],
            lambda w: ["invalid alias"],
            EXIT_USAGE,
        ),
        Case(
            "alias MLflow reserves",
            lambda w: ["har", "1", "--alias", "latest"],
            lambda w: ["reserved"],
            EXIT_USAGE,
        ),
        Case(
            "--force without --reason",
            lambda w: ["har", "1", "--force"],
            lambda w: ["--reason"],
            EXIT_USAGE,
        ),
    ],
    "registry rollback": [
        Case("no store here", lambda w: ["har"], lambda w: ["no model registry"]),
        Case(
            "invalid name",
            lambda w: ["../har"],
            lambda w: ["invalid registered model name"],
            EXIT_USAGE,
        ),
    ],
    "registry history": [
        Case("no store here", lambda w: ["har"], lambda w: ["no model registry"]),
        Case(
            "invalid alias",
            lambda w: ["har", "--alias", "@prod"],
            lambda w: ["invalid alias"],
            EXIT_USAGE,
        ),
    ],
    "evaluate compare": [
        Case(
            "missing evaluations",
            lambda w: [w.missing, w.missing, "-o", _out(w, "c1")],
            lambda w: [w.missing],
        ),
        Case(
            "evaluations are files",
            lambda w: [w.file, w.file, "-o", _out(w, "c2")],
            lambda w: [w.file],
        ),
        Case(
            "empty evaluation folders",
            lambda w: [w.folder, w.folder, "-o", _out(w, "c3")],
            lambda w: [w.folder],
        ),
        Case(
            "only one evaluation",
            lambda w: [w.folder, "-o", _out(w, "c4")],
            lambda w: ["two"],
            EXIT_USAGE,
        ),
        Case(
            "corrupt metrics_full.json",
            lambda w: [w.corrupt_details, w.corrupt_details, "-o", _out(w, "c5")],
            lambda w: [w.corrupt_details / "metrics_full.json", "not valid JSON"],
        ),
        Case(
            "predictions.csv without its columns",
            lambda w: [w.columnless_predictions, w.columnless_predictions, "-o", _out(w, "c6")],
            lambda w: [w.columnless_predictions / "predictions.csv", "label, path, predicted"],
        ),
    ],
    "hub export": [
        *_bundle_cases(after=lambda w: [_out(w, "hub1")]),
        Case(
            "--evaluation is not an evaluation",
            lambda w: [w.bundle, _out(w, "hub2"), "--evaluation", w.folder],
            lambda w: [w.folder, "not a `clip-har evaluate` output", "missing metrics.json"],
        ),
        Case(
            "OUT inside the bundle",
            lambda w: [w.bundle, w.bundle / "hub"],
            lambda w: ["inside the input"],
            EXIT_USAGE,
        ),
        Case("OUT is a file", lambda w: [w.bundle, w.file], lambda w: [w.file]),
    ],
    "hub push": [
        Case(
            "a bundle, not a hub export",
            lambda w: [w.bundle, "--repo-id", "team/model"],
            lambda w: ["not a `clip-har hub export` output"],
        ),
        Case(
            "missing folder",
            lambda w: [w.missing, "--repo-id", "team/model"],
            lambda w: [w.missing],
        ),
        Case(
            "invalid --repo-id",
            lambda w: [w.bundle, "--repo-id", "a/b/c"],
            lambda w: ["--repo-id", "a/b/c"],
            EXIT_USAGE,
        ),
    ],
    "hub pull": [
        Case("invalid ID", lambda w: ["../up"], lambda w: ["../up"], EXIT_USAGE),
        Case(
            "-o is a file",
            lambda w: ["team/model", "-o", w.file],
            lambda w: [w.file, "already exists"],
        ),
    ],
    "project init": [
        Case(
            "missing --data",
            lambda w: [_out(w, "project1"), "--data", w.missing],
            lambda w: [w.missing, "does not exist"],
        ),
        Case(
            "DIR is a file",
            lambda w: [w.file, "--data", w.photos],
            lambda w: [w.file, "is a file"],
        ),
        Case(
            "DIR inside --data",
            lambda w: [w.photos / "project", "--data", w.photos],
            lambda w: ["inside the input"],
            EXIT_USAGE,
        ),
        Case(
            "invalid --register name",
            lambda w: [_out(w, "project2"), "--data", w.photos, "--register", "a b"],
            lambda w: ["invalid registered model name"],
            EXIT_USAGE,
        ),
    ],
    "project summary": [
        Case("missing DIR", lambda w: [w.missing], lambda w: [w.missing, "not a clip-har project"]),
        Case("not a project", lambda w: [w.folder], lambda w: ["no dvc.yaml"]),
    ],
}


_LISTENERS: list[socket.socket] = []  # kept open for the module: a port something listens on


def _busy_port(w: World) -> str:
    if not _LISTENERS:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        _LISTENERS.append(listener)
    return str(_LISTENERS[0].getsockname()[1])


_UNKNOWN_MODEL = "models:/no-such-model@production"  # no registry in the empty working folder
CASES["mlflow serve"] = [
    Case(
        "port already in use",
        lambda w: ["--host", "127.0.0.1", "--port", _busy_port(w)],
        lambda w: ["already in use", "--port"],
    ),
    Case("unknown --host", lambda w: ["--host", "no-such-host.invalid"], lambda w: ["--host"]),
    Case(
        "--artifacts-destination is a file",
        lambda w: ["--artifacts-destination", w.file],
        lambda w: [w.file],
    ),
]
CASES["serve"] = [
    Case("no --bundle", lambda w: [], lambda w: ["--bundle"], EXIT_USAGE),
    Case("missing bundle folder", lambda w: ["-b", w.missing], lambda w: [w.missing]),
    Case("corrupt manifest", lambda w: ["-b", w.corrupt_manifest], lambda w: ["manifest"]),
    Case(
        "port already in use",
        lambda w: ["-b", w.bundle, "--port", _busy_port(w)],
        lambda w: ["already in use", "--port"],
    ),
    Case(
        "unknown --format",
        lambda w: ["-b", w.bundle, "--format", "nope"],
        lambda w: ["nope"],
        EXIT_USAGE,
    ),
    Case(
        "malformed models:/",
        lambda w: ["-b", "models:/bad name"],
        lambda w: ["bad name"],
        EXIT_USAGE,
    ),
    Case(
        "missing --evaluation folder",
        lambda w: ["-b", w.bundle, "--evaluation", w.missing],
        lambda w: ["--evaluation", w.missing],
    ),
    Case(
        "--evaluation is not an evaluate output",
        lambda w: ["-b", w.bundle, "--evaluation", w.folder],
        lambda w: ["--evaluation", "not a `clip-har evaluate` output"],
    ),
    Case(
        "--evaluation of another model",
        lambda w: ["-b", w.bundle, "--evaluation", _other_model_evaluation(w)],
        lambda w: ["--evaluation", "other classes"],
    ),
]


def _other_model_evaluation(w: World) -> Path:
    """An evaluation folder of a two-class model (the sound bundle has 15 classes)."""
    folder = w.root / "other-model-evaluation"
    if not folder.is_dir():
        folder.mkdir()
        classes = ["running", "sitting"]
        (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "n_evaluated": 2}))
        details = {"class_names": classes, "confusion_matrix": [[1, 0], [1, 0]]}
        (folder / "metrics_full.json").write_text(json.dumps(details))
        (folder / "predictions.csv").write_text("path,label,predicted\na.jpg,running,running\n")
    return folder


CASES["up"] = [
    Case("neither --bundle nor --model", lambda w: [], lambda w: ["--bundle", "--model"], 2),
    Case("missing bundle folder", lambda w: ["-b", w.missing], lambda w: [w.missing]),
    Case("corrupt manifest", lambda w: ["-b", w.corrupt_manifest], lambda w: ["manifest"]),
    Case(
        "unknown registered model",
        lambda w: ["--model", "no-such-model"],
        lambda w: [_UNKNOWN_MODEL],
    ),
    Case(
        "port already in use",
        lambda w: [
            *("-b", w.bundle, "--no-ui", "--mlflow-port", str(free_port())),
            *("--api-port", _busy_port(w)),
        ],
        lambda w: ["already in use", "--api-port"],
    ),
    Case(
        "two services on one port",
        lambda w: ["-b", w.bundle, "--mlflow-port", "5999", "--api-port", "5999"],
        lambda w: ["--mlflow-port", "--api-port"],
        EXIT_USAGE,
    ),
]
CASES["predict"].append(
    Case(
        "unknown models:/ bundle",
        lambda w: [w.photos, "-b", _UNKNOWN_MODEL],
        lambda w: [_UNKNOWN_MODEL],
    )
)
CASES["evaluate"].append(
    Case(
        "unknown models:/ bundle",
        lambda w: ["-b", _UNKNOWN_MODEL, "-d", w.manifest, "-o", _out(w, "e-models")],
        lambda w: [_UNKNOWN_MODEL],
    )
)
for _command, _output in (("export", "x-models"), ("benchmark", "b-models")):
    CASES[_command] += [
        Case(
            "models:/ without --output",
            lambda w: [_UNKNOWN_MODEL],
            lambda w: [_UNKNOWN_MODEL, "--output"],
            EXIT_USAGE,
        ),
        Case(
            "unknown models:/ bundle",
            lambda w, out=_output: [_UNKNOWN_MODEL, "-o", _out(w, out)],
            lambda w: [_UNKNOWN_MODEL],
        ),
    ]


def _foreign_db(w: World) -> Path:
    """A SQLite database without the prediction log's tables."""
    path = w.root / "foreign.db"
    if not path.exists():
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE other (x INTEGER)")
        connection.close()
    return path


CASES["feedback export"] = [
    Case(
        "missing --database file",
        lambda w: ["-o", _out(w, "fb1"), "--database", w.missing, "--images", w.folder],
        lambda w: [w.missing],
        EXIT_USAGE,
    ),
    Case(
        "--database is a text file",
        lambda w: ["-o", _out(w, "fb2"), "--database", w.file, "--images", w.folder],
        lambda w: ["not a database"],
    ),
    Case(
        "--database of another program",
        lambda w: ["-o", _out(w, "fb3"), "--database", _foreign_db(w), "--images", w.folder],
        lambda w: ["holds no prediction log"],
    ),
    Case(
        "missing --images folder",
        lambda w: ["-o", _out(w, "fb4"), "--database", _foreign_db(w), "--images", w.missing],
        lambda w: [w.missing],
        EXIT_USAGE,
    ),
    Case(
        "no --images",
        lambda w: ["-o", _out(w, "fb5"), "--database", _foreign_db(w)],
        lambda w: ["--images", "--store-images"],
        EXIT_USAGE,
    ),
]

CASES["webcam"] = [
    Case(
        "missing video file",
        lambda w: ["--source", w.missing, "-b", w.bundle],
        lambda w: [w.missing, "does not exist"],
    ),
    Case(
        "source is not a video",
        lambda w: ["--source", w.file, "-b", w.bundle],
        lambda w: [w.file, "not a video"],
    ),
    Case(
        "--every 0",
        lambda w: ["--source", w.file, "-b", w.bundle, "--every", "0"],
        lambda w: ["--every"],
        EXIT_USAGE,
    ),
    Case(
        "unknown --smoothing",
        lambda w: ["--source", w.file, "-b", w.bundle, "--smoothing", "median"],
        lambda w: ["median"],
        EXIT_USAGE,
    ),
    Case(
        "-o has an unknown type",
        lambda w: ["--source", w.file, "-b", w.bundle, "-o", _out(w, "annotated.gif")],
        lambda w: ["annotated.gif", ".mp4"],
        EXIT_USAGE,
    ),
    Case(
        "--alpha with --smoothing vote",
        lambda w: ["--source", w.file, "-b", w.bundle, "--smoothing", "vote", "--alpha", "0.2"],
        lambda w: ["--alpha", "ema"],
        EXIT_USAGE,
    ),
    Case(
        "--window with the default ema",
        lambda w: ["--source", w.file, "-b", w.bundle, "--window", "9"],
        lambda w: ["--window", "vote"],
        EXIT_USAGE,
    ),
    Case("no --bundle", lambda w: ["--source", w.missing], lambda w: ["--bundle"], EXIT_USAGE),
]
CASES["predict-video"] = [
    Case(
        "missing video file",
        lambda w: [w.missing, "-o", _out(w, "pv1"), "-b", w.bundle],
        lambda w: [w.missing, "does not exist"],
    ),
    Case(
        "not a video",
        lambda w: [w.file, "-o", _out(w, "pv2"), "-b", w.bundle],
        lambda w: [w.file, "not a video"],
    ),
    Case(
        "--every 0",
        lambda w: [w.file, "-o", _out(w, "pv3"), "-b", w.bundle, "--every", "0"],
        lambda w: ["--every"],
        EXIT_USAGE,
    ),
    Case(
        "--every and --fps together",
        lambda w: [w.file, "-o", _out(w, "pv4"), "-b", w.bundle, "--every", "2", "--fps", "1"],
        lambda w: ["--every", "--fps"],
        EXIT_USAGE,
    ),
    Case(
        "-o is a file",
        lambda w: [w.file, "-o", w.file, "-b", w.bundle],
        lambda w: [w.file],
        EXIT_USAGE,
    ),
    Case(
        "--alpha with the default vote",
        lambda w: [w.file, "-o", _out(w, "pv5"), "-b", w.bundle, "--alpha", "0.2"],
        lambda w: ["--alpha", "ema"],
        EXIT_USAGE,
    ),
    Case(
        "--window with --smoothing none",
        lambda w: [
            *(w.file, "-o", _out(w, "pv6"), "-b", w.bundle),
            *("--smoothing", "none", "--window", "3"),
        ],
        lambda w: ["--window", "vote"],
        EXIT_USAGE,
    ),
    Case(
        "no --bundle, checked before the video",
        lambda w: [w.missing, "-o", _out(w, "pv7")],
        lambda w: ["--bundle"],
        EXIT_USAGE,
    ),
]


def _no_server(w: World) -> str:
    """The URL of a loopback port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


_NOT_A_URL = "ftp://example.invalid"
CASES["client predict"] = [
    Case("missing image", lambda w: [w.missing], lambda w: [w.missing.name], EXIT_USAGE),
    Case("image is a folder", lambda w: [w.folder], lambda w: [w.folder.name], EXIT_USAGE),
    Case("no server", lambda w: [w.file, "--url", _no_server(w)], lambda w: ["cannot reach"]),
    Case("not an http URL", lambda w: [w.file, "--url", _NOT_A_URL], lambda w: [_NOT_A_URL], 2),
]
CASES["client classify"] = [
    Case("no --labels", lambda w: [w.file], lambda w: ["--labels"], EXIT_USAGE),
    Case("blank labels", lambda w: [w.file, "--labels", " , "], lambda w: ["--labels"], 2),
    Case(
        "no server",
        lambda w: [w.file, "--labels", "a,b", "--url", _no_server(w)],
        lambda w: ["cannot reach"],
    ),
]
CASES["client feedback"] = [
    Case("--wrong without --label", lambda w: ["0" * 32, "--wrong"], lambda w: ["--label"], 2),
    Case("neither --correct nor --wrong", lambda w: ["0" * 32], lambda w: ["--correct"], 2),
    Case(
        "no server",
        lambda w: ["0" * 32, "--correct", "--url", _no_server(w)],
        lambda w: ["cannot reach"],
    ),
]
CASES["client model"] = [
    Case("no server", lambda w: ["--url", _no_server(w)], lambda w: ["cannot reach"]),
]
CASES["client health"] = [
    Case("no server", lambda w: ["--url", _no_server(w)], lambda w: ["cannot reach"]),
    Case("not an http URL", lambda w: ["--url", _NOT_A_URL], lambda w: [_NOT_A_URL], EXIT_USAGE),
]
CASES["ui"] = [
    Case(
        "--api-url and --bundle",
        lambda w: ["--api-url", "http://127.0.0.1:1", "--bundle", w.bundle],
        lambda w: ["not both"],
        EXIT_USAGE,
    ),
    Case(
        "not an http URL", lambda w: ["--api-url", _NOT_A_URL], lambda w: [_NOT_A_URL], EXIT_USAGE
    ),
    Case("missing bundle folder", lambda w: ["--bundle", w.missing], lambda w: [w.missing]),
    Case("corrupt manifest", lambda w: ["--bundle", w.corrupt_manifest], lambda w: ["manifest"]),
    Case(
        "port already in use",
        lambda w: ["--bundle", w.bundle, "--port", _busy_port(w)],
        lambda w: ["already in use", "--port"],
    ),
    Case(
        "--evaluation without --bundle",
        lambda w: ["--evaluation", w.folder],
        lambda w: ["--evaluation", "--bundle"],
        EXIT_USAGE,
    ),
    Case(
        "--state-dir without --bundle",
        lambda w: ["--api-url", "http://127.0.0.1:1", "--state-dir", w.folder],
        lambda w: ["--state-dir", "--bundle"],
        EXIT_USAGE,
    ),
    Case(
        "--evaluation of another model",
        lambda w: ["--bundle", w.bundle, "--evaluation", _other_model_evaluation(w)],
        lambda w: ["--evaluation", "other classes"],
    ),
]

CASES["batch"] = [
    *_bundle_cases(lambda w: [w.photos, "-o", _out(w, "batch1.csv"), "-b"]),
    Case(
        "neither --bundle nor --url",
        lambda w: [w.photos, "-o", _out(w, "batch2.csv")],
        lambda w: ["--bundle", "--url"],
        EXIT_USAGE,
    ),
    Case(
        "--bundle and --url together",
        lambda w: [w.photos, "-o", _out(w, "batch3.csv"), "-b", w.bundle, "--url", "http://x"],
        lambda w: ["--bundle", "--url"],
        EXIT_USAGE,
    ),
    *(
        Case(
            f"--shard {shard}",
            lambda w, shard=shard: [
                w.photos,
                "-o",
                _out(w, "b4.csv"),
                "-b",
                w.bundle,
                "--shard",
                shard,
            ],
            lambda w: ["--shard", "I/N"],
            EXIT_USAGE,
        )
        for shard in ("3/3", "1", "a/b", "0/0")
    ),
    Case(
        "--workers with --bundle",
        lambda w: [w.photos, "-o", _out(w, "batch5.csv"), "-b", w.bundle, "--workers", "2"],
        lambda w: ["--workers", "--url"],
        EXIT_USAGE,
    ),
    Case(
        "missing source",
        lambda w: [w.missing, "-o", _out(w, "batch6.csv"), "-b", w.bundle],
        lambda w: [w.missing, "no such file"],
    ),
    Case(
        "source is a text file",
        lambda w: [w.file, "-o", _out(w, "batch7.csv"), "-b", w.bundle],
        lambda w: [w.file, "not a folder, a glob pattern"],
        EXIT_USAGE,
    ),
    Case(
        "-o has an unknown type",
        lambda w: [w.photos, "-o", _out(w, "batch.txt"), "-b", w.bundle],
        lambda w: ["batch.txt", ".csv, .jsonl, .parquet"],
        EXIT_USAGE,
    ),
    Case(
        "-o x.csv is a folder",
        lambda w: [w.photos, "-o", w.csv_folder, "-b", w.bundle],
        lambda w: [w.csv_folder, "folder"],
    ),
    Case(
        "-o is another program's CSV",
        lambda w: [w.photos, "-o", w.columnless_predictions / "predictions.csv", "-b", w.bundle],
        lambda w: ["not a clip-har batch output", "--force"],
    ),
    Case(
        "truncated export",
        lambda w: [w.photos, "-o", _out(w, "batch8.csv"), "-b", w.truncated, "--format", "onnx"],
        lambda w: ["model.onnx", "truncated"],
    ),
]
CASES["batch-merge"] = [
    Case(
        "missing shard output",
        lambda w: [w.missing.with_suffix(".csv"), "-o", _out(w, "merge1.csv")],
        lambda w: [w.missing.with_suffix(".csv"), "no such shard output"],
    ),
    Case(
        "shard output of another program",
        lambda w: [w.columnless_predictions / "predictions.csv", "-o", _out(w, "merge2.csv")],
        lambda w: ["not a clip-har batch output"],
    ),
    Case(
        "-o has an unknown type",
        lambda w: [w.columnless_predictions / "predictions.csv", "-o", _out(w, "merge.txt")],
        lambda w: ["merge.txt", ".csv, .jsonl, .parquet"],
        EXIT_USAGE,
    ),
    Case(
        "missing --expect source",
        lambda w: [
            *(w.columnless_predictions / "predictions.csv", "-o", _out(w, "merge3.csv")),
            *("--expect", w.missing),
        ],
        lambda w: [w.missing],
    ),
]


def _drift_reference(w: World) -> Path:
    """A sound reference folder (a synthetic profile; no bundle run needed)."""
    import numpy as np

    from clip_har.monitoring.profile import ReferenceProfile, save_profile

    folder = w.root / "drift-reference"
    if not folder.is_dir():
        folder.mkdir()
        info = {"schema_version": 1, "id": "hostile", "class_counts": {"running": 3},
                "bundle": {"path": str(w.bundle), "model_key": "k", "classes": ["running"]},
                "confidence_histogram": {"edges": [0.0, 0.5, 1.0], "counts": [0, 3]}}  # fmt: skip
        arrays = (np.full(3, 0.9, np.float32), np.eye(3, dtype=np.float32))
        save_profile(folder, ReferenceProfile(info, *arrays))
    return folder


def _empty_log(w: World) -> Path:
    """The database of a service that has answered nothing yet."""
    from clip_har.serving.store import PredictionStore, sqlite_file_url

    path = w.root / "empty-log.db"
    if not path.exists():
        PredictionStore(sqlite_file_url(path)).close()
    return path


def _drift(w: World, *extra: str | Path) -> list[str | Path]:
    return ["-r", _drift_reference(w), "--database", _empty_log(w), *extra]


CASES["monitor reference"] = [
    *_bundle_cases(after=lambda w: [w.manifest, "-o", _out(w, "mref1")]),
    *_manifest_cases(lambda w: [w.bundle], lambda w: ["-o", _out(w, "mref2")]),
    Case(
        "--split of a manifest without splits",
        lambda w: [w.bundle, w.manifest, "-o", _out(w, "mref3"), "--split", "val"],
        lambda w: ["--split val", "has no splits"],
        EXIT_USAGE,
    ),
    Case(
        "unknown --split",
        lambda w: [w.bundle, w.split, "-o", _out(w, "mref4"), "--split", "nope"],
        lambda w: ["--split nope", "no such split"],
        EXIT_USAGE,
    ),
]

CASES["monitor drift"] = [
    Case(
        "missing --reference",
        lambda w: ["-r", w.missing, "--database", _empty_log(w)],
        lambda w: [w.missing, "does not exist"],
    ),
    Case(
        "--reference is a file",
        lambda w: ["-r", w.file, "--database", _empty_log(w)],
        lambda w: [w.file, "is a file"],
    ),
    Case(
        "--reference without profile.json",
        lambda w: ["-r", w.folder, "--database", _empty_log(w)],
        lambda w: ["profile.json: missing"],
    ),
    Case(
        "--database of another program",
        lambda w: ["-r", _drift_reference(w), "--database", _foreign_db(w)],
        lambda w: ["holds no prediction log"],
    ),
    Case(
        "missing --database file",
        lambda w: ["-r", _drift_reference(w), "--database", w.missing],
        lambda w: [w.missing],
        EXIT_USAGE,
    ),
    Case(
        "too few predictions", lambda w: _drift(w), lambda w: ["0 predictions", "min_predictions"]
    ),
    Case(
        "unparsable --since",
        lambda w: _drift(w, "--since", "yesterday"),
        lambda w: ["--since yesterday"],
        EXIT_USAGE,
    ),
    Case(
        "missing --images folder",
        lambda w: _drift(w, "--images", w.missing),
        lambda w: [w.missing],
        EXIT_USAGE,
    ),
    Case(
        "report not .html",
        lambda w: _drift(w, "-o", _out(w, "drift.txt")),
        lambda w: [".html"],
        EXIT_USAGE,
    ),
]


# --------------------------------------------------------------------------- the tests


def test_every_command_has_hostile_cases() -> None:
    uncovered = sorted(set(COMMANDS) - set(CASES))
    stale = sorted(set(CASES) - set(COMMANDS))
    assert not uncovered, f"add hostile cases to CASES for: {', '.join(uncovered)}"
    assert not stale, f"CASES names commands the CLI no longer has: {', '.join(stale)}"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Each in-process run reconfigures the root logger (``-v``); undo it for later tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder: no params.yaml, no git or DVC repository around, and no
    experiment tracking (an MLflow store costs seconds and is not under test)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLIP_HAR_PARAMS", raising=False)
    monkeypatch.setenv("CLIP_HAR_TRAIN__TRACKING", "none")
    return tmp_path


@pytest.mark.parametrize(
    ("command", "case"),
    [(command, case) for command, cases in CASES.items() for case in cases],
    ids=[f"{command}: {case.name}" for command, cases in CASES.items() for case in cases],
)
def test_hostile_input_is_a_clear_error(
    command: str, case: Case, world: World, elsewhere: Path
) -> None:
    result = invoke(*command.split(), *case.args(world))
    check_clean_failure(result, case.code, *(str(m) for m in case.mentions(world)))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unknown_option_is_a_usage_error(command: str, elsewhere: Path) -> None:
    result = invoke(*command.split(), "--no-such-option")
    check_clean_failure(result, EXIT_USAGE, "--no-such-option")


def _numeric_options() -> list[tuple[str, str, Any]]:
    found = []
    for command, cmd in sorted(COMMANDS.items()):
        for param in cmd.params:
            annotation = param.type_descriptor.annotation
            if param.opts[0].startswith("--") and annotation in (int, float):
                found.append((command, param.opts[0], param))
    return found


NUMERIC = _numeric_options()


@pytest.mark.parametrize(
    ("command", "option", "param"), NUMERIC, ids=[f"{c} {o}" for c, o, _ in NUMERIC]
)
def test_numbers_out_of_range_or_not_numbers_are_usage_errors(
    command: str, option: str, param: Any, elsewhere: Path
) -> None:
    words = command.split()
    bad = ["many"]
    if param.min is not None:
        bad.append(str(param.min - 1))
    if param.max is not None:
        bad.append(str(param.max + 1))
    for value in bad:
        check_clean_failure(invoke(*words, option, value), EXIT_USAGE, option)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_broken_params_file_is_named(command: str, world: World, elsewhere: Path) -> None:
    """Every command refuses a broken ``--params`` file before any work, naming it."""
    damaged = sorted(world.params.values())
    path = damaged[sorted(COMMANDS).index(command) % len(damaged)]  # each kind, in turn
    check_clean_failure(invoke("--params", path, *command.split()), EXIT_FAILURE, path.name)


def test_params_option_needs_a_file(world: World, elsewhere: Path) -> None:
    check_clean_failure(
        invoke("--params", world.missing, "bundle", "show", world.bundle),
        EXIT_FAILURE,
        world.missing.name,
    )
    check_clean_failure(
        invoke("--params", world.folder, "bundle", "show", world.bundle),
        EXIT_FAILURE,
        world.folder.name,
        "folder",
    )


@pytest.mark.parametrize(
    "what",
    [
        "unknown key",
        "wrong type",
        "invalid YAML",
        "a YAML list",
        "not UTF-8",
        "a section that is a number",
    ],
)
def test_broken_params_yaml_in_the_working_folder(what: str, world: World, elsewhere: Path) -> None:
    shutil.copy(world.params[what], elsewhere / "params.yaml")
    for args in (
        ["predict", world.photos, "-b", world.bundle],
        ["data", "split", world.manifest, "-o", elsewhere / "split"],
    ):
        check_clean_failure(invoke(*args), EXIT_FAILURE, "params.yaml")


def test_an_unforeseen_error_is_one_message_and_exit_1(
    world: World, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net for bugs: no traceback for the user, a pointer to ``-vv``."""

    def broken(directory: object) -> None:
        raise KeyError("manifest")

    monkeypatch.setattr("clip_har.models.bundle.open_bundle", broken)
    result = invoke("bundle", "show", world.bundle)
    assert result.exit_code == EXIT_FAILURE and "Traceback" not in result.output
    assert "unexpected KeyError" in result.stderr and BUG_MARKER in result.stderr
    verbose = invoke("-vv", "bundle", "show", world.bundle)
    assert verbose.exit_code == EXIT_FAILURE
    assert "Traceback" in verbose.stderr and "broken" in verbose.stderr  # -vv shows where


def test_ctrl_c_exits_130_quietly(
    world: World, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(directory: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("clip_har.models.bundle.open_bundle", interrupted)
    result = invoke("bundle", "show", world.bundle)
    assert result.exit_code == EXIT_INTERRUPTED and "Traceback" not in result.output
    assert "interrupted" in result.stderr


def test_the_console_script_keeps_the_scheme(world: World) -> None:
    """The installed ``clip-har`` entry point, as a shell script sees it."""
    failure = run_cli("bundle", "show", str(world.corrupt_manifest))
    usage = run_cli("predict", str(world.photos), "--top-k", "0")
    assert (failure.returncode, usage.returncode) == (EXIT_FAILURE, EXIT_USAGE)
    for done in (failure, usage):
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert "not valid JSON" in failure.stderr and "--top-k" in usage.stderr
