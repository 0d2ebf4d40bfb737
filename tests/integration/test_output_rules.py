"""The output rules of docs/cli.md, checked on every command of the live Typer app.

Every option that writes (``--output``/``-o`` and the other options made by
``output_option``) must come with the shared ``--force``; no output may be, or lie inside,
an input; an existing output is replaced only with ``--force``; a failed command leaves
nothing behind; and outputs follow the umask. Commands run in-process through
``CliRunner`` on the tiny preset and a dozen generated photos.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CLI, make_photo, runnable_commands
from typer.testing import CliRunner, Result

from clip_har.cli.common import EXIT_FAILURE, EXIT_USAGE
from clip_har.cli.main import app
from clip_har.cli.outputs import FORCE_HELP, OUTPUT_PANEL
from clip_har.serving.store import PredictionRecord, PredictionStore, sqlite_file_url

pytestmark = pytest.mark.integration

COMMANDS: dict[str, Any] = runnable_commands(app)


def _is_output(param: Any) -> bool:
    """An option that names something the command writes."""
    opts = set(getattr(param, "opts", ()))
    if "--force" in opts:
        return False
    return (
        bool(opts & {"--output", "-o"}) or getattr(param, "rich_help_panel", None) == OUTPUT_PANEL
    )


def _kind(command: str, option: str) -> str:
    """FILE or DIR: the metavar ``output_option`` gives."""
    return str(next(p.metavar for p in COMMANDS[command].params if option in p.opts))


def _outputs(command: Any) -> list[Any]:
    return [p for p in command.params if _is_output(p)]


OUTPUTS: dict[tuple[str, str], Any] = {
    (name, param.opts[0]): param for name, cmd in COMMANDS.items() for param in _outputs(cmd)
}
# outputs whose input is remote (a Hub repository): nothing local to write onto or into;
# test_hub.py checks that an existing output is replaced only with --force
REMOTE_INPUTS = {("hub pull", "--output")}
# --force that overrides a gate rather than replacing an output: the promotion gate (issue 14
# names it so, and it always needs --reason)
GATE_OVERRIDES = {"registry promote"}


# --------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class World:
    root: Path
    bundle: Path
    model: Path  # a copy of the tiny preset's folder
    photos: Path  # running/, sitting/, eating/: four photos each
    manifest: Path  # imported
    split: Path  # split train/val/test
    evaluations: tuple[Path, Path]
    params: dict[str, Path]  # a valid params file (``{}``) per output suffix


runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def world(tiny_bundle: Path, tiny_backbone: Any, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("outputs")
    model = Path(shutil.copytree(tiny_backbone.source_dir, root / "model"))
    photos = root / "photos"
    for offset, label in enumerate(("running", "sitting", "eating")):
        (photos / label).mkdir(parents=True)
        for index in range(4):
            make_photo(photos / label / f"{index}.png", (64, 48 + offset), seed=index + 10 * offset)
    ok(invoke("data", "import", photos, "-o", root / "manifest"))
    split = root / "split"
    ok(invoke("data", "split", root / "manifest", "-o", split, "--ratios", "0.5,0.25,0.25",
              "--near-distance", "0"))  # fmt: skip
    evaluations = (root / "eval-a", root / "eval-b")
    for folder in evaluations:
        ok(invoke("evaluate", "-b", tiny_bundle, "-d", split, "-o", folder, "--split", "all",
                  "--bootstrap", "0", "--tracking", "none"))  # fmt: skip
    params = {}
    for suffix in ("", ".csv", ".json", ".png", ".jsonl", ".mp4", ".html"):
        params[suffix] = root / f"params{suffix or '.yaml'}"
        params[suffix].write_text("{}\n")  # an empty mapping: valid settings, any name
    return World(root, tiny_bundle, model, photos, root / "manifest", split, evaluations, params)


@pytest.fixture(autouse=True)
def _quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An empty working folder, no tracking; undo each run's logging set-up afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLIP_HAR_PARAMS", raising=False)
    monkeypatch.setenv("CLIP_HAR_TRAIN__TRACKING", "none")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# --------------------------------------------------------------------------- minimal runs

Argv = Callable[[World, Path], list[str | Path]]
Inputs = Callable[[World], Path]

_BENCH = ("--formats", "torch", "--batch-sizes", "1", "--warmup", "0", "--min-iterations", "1",
          "--min-seconds", "0", "--no-memory")  # fmt: skip
_TRAIN = ("-d", "{split}", "--model", "tiny", "--prompts", "minimal", "-s", "linear-probe")


def _train(w: World, *extra: str | Path) -> list[str | Path]:
    return [*(w.split if a == "{split}" else a for a in _TRAIN), *extra]


@dataclass(frozen=True)
class Run:
    """A minimal valid command line writing to OUT, and a folder input it reads."""

    argv: Argv
    source: Inputs  # an input folder: outputs onto and inside it are refused
    suffix: str = ""  # of a file output


def _feedback_store(w: World) -> Path:
    """``feedback/store.db`` (a service's prediction log: one prediction with feedback) and
    ``feedback/images`` (its stored upload), made once; the folder."""
    folder = w.root / "feedback"
    database = folder / "store.db"
    if database.is_file():
        return folder
    folder.mkdir(exist_ok=True)
    store = PredictionStore(sqlite_file_url(database), images_dir=folder / "images")
    try:
        digest = store.store_image((w.photos / "running" / "0.png").read_bytes())
        top = [("running", 0.9)]
        record = PredictionRecord(
            PredictionRecord.new_id(), datetime.now(timezone.utc), "tiny", "1", "v1/predict",
            "running", 0.9, top, 5.0, digest,
        )  # fmt: skip

        async def log() -> None:
            await store.log_predictions([record])
            await store.add_feedback(record.id, correct=False, label="sitting", comment=None)

        asyncio.run(log())
    finally:
        store.close()
    return folder


def _feedback_inputs(w: World) -> list[str | Path]:
    store = _feedback_store(w)
    return ["--database", store / "store.db", "--images", store / "images"]


def _drift_inputs(w: World) -> list[str | Path]:
    """``drift/reference`` (of the bundle on every photo) and ``drift/serving.db`` (a service's
    log of the very same predictions, so no drift), made once: the ``monitor drift`` options."""
    folder = w.root / "drift"
    reference, database = folder / "reference", folder / "serving.db"
    if not database.is_file():
        ok(invoke("monitor", "reference", w.bundle, w.split, "-o", reference))
        profile = json.loads((reference / "profile.json").read_text())
        with np.load(reference / "arrays.npz") as arrays:
            confidences = arrays["confidences"].tolist()
        labels = [label for label, n in profile["class_counts"].items() for _ in range(n)]
        now = datetime.now(timezone.utc)
        records = [
            PredictionRecord(
                PredictionRecord.new_id(),
                now,
                "tiny",
                "1",
                "v1/predict",
                label,
                confidence,
                [(label, confidence)],
                5.0,
            )
            for label, confidence in zip(labels, sorted(confidences), strict=True)
        ]
        store = PredictionStore(sqlite_file_url(database))
        try:
            asyncio.run(store.log_predictions(records))
        finally:
            store.close()
    count = str(json.loads((reference / "profile.json").read_text())["images"])
    return ["-r", reference, "--database", database, "--min-predictions", count]


def _batch_output(w: World) -> Path:
    """``batch/shard.csv``: a ``clip-har batch`` result file of every photo, made once."""
    shard = w.root / "batch" / "shard.csv"
    if not shard.is_file():
        ok(invoke("batch", w.photos, "-o", shard, "-b", w.bundle))
    return shard


def _video(w: World) -> Path:
    """``videos/clip.mp4``: eight 64x48 frames at 4 fps (mp4v), made once; skips the test
    when OpenCV (the ``[video]`` extra) is not installed."""
    cv2 = pytest.importorskip("cv2", reason="video commands need OpenCV (the [video] extra)")
    video = w.root / "videos" / "clip.mp4"
    if video.is_file():
        return video
    video.parent.mkdir(exist_ok=True)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), 4.0, (64, 48))
    try:
        for index in range(8):
            writer.write(np.full((48, 64, 3), 30 * index, dtype=np.uint8))
    finally:
        writer.release()
    return video


def _webcam(w: World, *output: str | Path) -> list[str | Path]:
    return ["--source", _video(w), "-b", w.bundle, "--no-show", "--max-frames", "4", *output]


RUNS: dict[tuple[str, str], Run] = {
    ("predict", "--output"): Run(
        lambda w, out: [w.photos, "-b", w.bundle, "-o", out], lambda w: w.photos, ".csv"
    ),
    ("export", "--output"): Run(
        lambda w, out: [w.bundle, "--formats", "onnx", "-o", out], lambda w: w.bundle
    ),
    ("benchmark", "--output"): Run(
        lambda w, out: [w.bundle, *_BENCH, "-o", out], lambda w: w.bundle
    ),
    ("bundle create", "--output"): Run(
        lambda w, out: ["--model", w.model, "--classes", "running,sitting", "-o", out],
        lambda w: w.model,
    ),
    ("data import", "--output"): Run(lambda w, out: [w.photos, "-o", out], lambda w: w.photos),
    ("data validate", "--output"): Run(
        lambda w, out: [w.manifest, "-o", out], lambda w: w.manifest
    ),
    ("data split", "--output"): Run(
        lambda w, out: [w.manifest, "-o", out, "--near-distance", "0"], lambda w: w.manifest
    ),
    ("data balance", "--output"): Run(lambda w, out: [w.split, "-o", out], lambda w: w.split),
    ("data preview-augment", "--output"): Run(
        lambda w, out: [w.manifest, "-o", out, "--images", "1", "--copies", "1", "--size", "16"],
        lambda w: w.manifest,
        ".png",
    ),
    ("train", "--output"): Run(lambda w, out: _train(w, "-o", out), lambda w: w.split),
    ("train", "--metrics"): Run(
        lambda w, out: _train(w, "-o", out.parent.parent / "aux-bundle", "--metrics", out),
        lambda w: w.split,
        ".json",
    ),
    ("train", "--checkpoint-dir"): Run(
        lambda w, out: _train(w, "-o", out.parent.parent / "aux-bundle", "--checkpoint-dir", out),
        lambda w: w.split,
    ),
    ("evaluate", "--output"): Run(
        lambda w, out: [
            "-b",
            w.bundle,
            "-d",
            w.split,
            "-o",
            out,
            "--split",
            "all",
            "--bootstrap",
            "0",
        ],
        lambda w: w.split,
    ),
    ("evaluate compare", "--output"): Run(
        lambda w, out: [*w.evaluations, "-o", out, "--bootstrap", "0"],
        lambda w: w.evaluations[0],
    ),
    ("registry register", "--record"): Run(
        lambda w, out: [w.bundle, "--name", "rules", "--record", out], lambda w: w.bundle, ".json"
    ),
    ("feedback export", "--output"): Run(
        lambda w, out: [*_feedback_inputs(w), "-o", out], lambda w: _feedback_store(w) / "images"
    ),
    # an existing batch output is resumed (appended to), not replaced; anything else there
    # is refused with a hint at --force, which starts over
    ("batch", "--output"): Run(
        lambda w, out: [w.photos, "-o", out, "-b", w.bundle], lambda w: w.photos, ".csv"
    ),
    ("batch-merge", "--output"): Run(
        lambda w, out: [_batch_output(w), "-o", out, "--expect", w.photos],
        lambda w: w.photos,
        ".csv",
    ),
    ("predict-video", "--output"): Run(
        lambda w, out: [_video(w), "-o", out, "-b", w.bundle, "--every", "2"],
        lambda w: w.bundle,
    ),
    ("webcam", "--output"): Run(lambda w, out: _webcam(w, "-o", out), lambda w: w.bundle, ".mp4"),
    ("webcam", "--log"): Run(lambda w, out: _webcam(w, "--log", out), lambda w: w.bundle, ".jsonl"),
    ("monitor reference", "--output"): Run(
        lambda w, out: [w.bundle, w.split, "-o", out, "--split", "train"], lambda w: w.split
    ),
    ("monitor drift", "--output"): Run(
        lambda w, out: [*_drift_inputs(w), "-o", out],
        lambda w: Path(_drift_inputs(w)[1]),
        ".html",
    ),
}


def _args(command: str, option: str, w: World, out: Path) -> list[str | Path]:
    """The run's command line, with the ``--params`` file (an input of every command)."""
    run = RUNS[(command, option)]
    return ["--params", w.params[run.suffix], *command.split(), *run.argv(w, out)]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (or the file itself) and its sha256."""
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _check_refused(result: Result, code: int, *mentions: str) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "this is a bug" not in output, output
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}:\n{output}"
    flat = " ".join(output.split())
    for text in mentions:
        assert text in flat, f"{text!r} not in:\n{output}"


# --------------------------------------------------------------------------- the walk


def test_every_output_has_a_minimal_run() -> None:
    """A new command (or output option) fails here until it is added to RUNS."""
    assert sorted(set(OUTPUTS) - set(RUNS) - REMOTE_INPUTS) == [], "add the new outputs to RUNS"
    assert sorted(set(RUNS) - set(OUTPUTS)) == [], "RUNS names outputs the CLI no longer has"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_output_uses_the_shared_options(command: str) -> None:
    params = COMMANDS[command].params
    outputs = _outputs(COMMANDS[command])
    force = [p for p in params if "--force" in getattr(p, "opts", ())]
    for param in outputs:
        assert param.rich_help_panel == OUTPUT_PANEL, f"{param.opts}: not made by output_option"
        assert param.metavar in ("FILE", "DIR"), f"{param.opts}: not made by output_option"
    if outputs:
        assert len(force) == 1, f"{command} writes {outputs[0].opts[0]} but has no --force"
        assert force[0].help == FORCE_HELP and force[0].rich_help_panel == OUTPUT_PANEL
    for flag in force:  # --force replaces something that exists, never anything else
        if command in GATE_OVERRIDES:
            assert "--reason" in flag.help, f"{command} --force: {flag.help}"
            continue
        assert flag.help.startswith("Replace"), f"{command} --force: {flag.help}"


def test_parity_gate_override_is_not_force() -> None:
    """--force used to mean 'use an export that failed its parity gate' in two commands."""
    for command in ("predict", "benchmark"):
        options = {opt for p in COMMANDS[command].params for opt in getattr(p, "opts", ())}
        assert "--ignore-parity" in options and "--force" in options


RULES = sorted(RUNS)


@pytest.mark.parametrize(("command", "option"), RULES, ids=[" ".join(r) for r in RULES])
def test_output_onto_or_inside_an_input_is_refused(
    command: str, option: str, world: World, tmp_path: Path
) -> None:
    run = RUNS[(command, option)]
    source = run.source(world)
    before = _snapshot(source)
    kind = _kind(command, option)
    params = world.params[run.suffix]
    targets = [source / f"out{run.suffix}"]  # inside a folder the command reads
    targets.append(params if kind == "FILE" else source)  # onto a file or folder it reads
    if kind == "DIR":
        targets.append(source.parent)  # a folder holding an input: replacing it deletes it
    for target in targets:
        result = invoke(*_args(command, option, world, target), "--force")
        _check_refused(result, EXIT_USAGE, "input")
        assert _snapshot(source) == before and params.read_text() == "{}\n"
        assert not (source / f"out{run.suffix}").exists()


def _occupy(path: Path, kind: str) -> dict[str, str]:
    if kind == "DIR":
        path.mkdir(parents=True)
        (path / "stale.txt").write_text("from another run\n")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"an earlier output\n")
    return _snapshot(path)


@pytest.mark.parametrize(("command", "option"), RULES, ids=[" ".join(r) for r in RULES])
def test_existing_output_is_replaced_only_with_force(
    command: str, option: str, world: World, tmp_path: Path
) -> None:
    run = RUNS[(command, option)]
    kind = _kind(command, option)
    out = tmp_path / "results" / f"out{run.suffix}"
    before = _occupy(out, kind)
    refused = invoke(*_args(command, option, world, out))
    _check_refused(refused, EXIT_FAILURE, "--force")
    assert _snapshot(out) == before
    ok(invoke(*_args(command, option, world, out), "--force"))
    if kind == "DIR":  # replaced whole: nothing of the old folder is kept
        assert not (out / "stale.txt").exists()
    else:
        assert out.read_bytes() != b"an earlier output\n"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------- the defects


def test_import_never_overwrites_its_source(world: World, tmp_path: Path) -> None:
    """Defect 1: ``data import SRC -o SRC/labels.csv`` replaced the CSV with Parquet, and
    ``-o SRC/images/x.jpg`` a photo."""
    source = tmp_path / "src"
    (source / "images").mkdir(parents=True)
    make_photo(source / "images" / "x.jpg")
    make_photo(source / "images" / "y.jpg", seed=1)
    (source / "labels.csv").write_text(
        "filename,label\nimages/x.jpg,running\nimages/y.jpg,sitting\n"
    )
    before = _snapshot(source)
    for target in (source / "labels.csv", source / "images" / "x.jpg", source / "out", source):
        for force in ((), ("--force",)):
            result = invoke("data", "import", source, "-o", target, *force)
            _check_refused(result, EXIT_USAGE, "input")
    csv = invoke("data", "import", source / "labels.csv", "-o", source / "images", "--force")
    _check_refused(csv, EXIT_USAGE, "input")  # the folder holds the photos the CSV lists
    assert _snapshot(source) == before


def test_an_output_reached_through_a_symlink_is_still_an_input(
    world: World, tmp_path: Path
) -> None:
    link = tmp_path / "link"
    link.symlink_to(world.manifest, target_is_directory=True)
    before = _snapshot(world.manifest)
    result = invoke("data", "validate", world.manifest, "-o", link, "--force")
    _check_refused(result, EXIT_USAGE, "input")
    assert _snapshot(world.manifest) == before


def test_exit_codes_separate_usage_from_failure(world: World, tmp_path: Path) -> None:
    """Defect 3: bad option values exit 2, failures 1, as docs/cli.md says."""
    _check_refused(invoke("predict", world.photos, "--top-k", "0"), EXIT_USAGE, "--top-k")
    _check_refused(invoke("predict", world.photos, "--no-such-option"), EXIT_USAGE)
    _check_refused(
        invoke("predict", world.photos, "-b", world.bundle, "--batch-size", "-5"),
        EXIT_USAGE,
        "--batch-size",
    )
    missing = invoke("predict", world.photos, "-b", tmp_path / "no-bundle")
    _check_refused(missing, EXIT_FAILURE, "no-bundle")


@pytest.mark.parametrize(
    ("args", "mention"),
    [
        (lambda w, f: ["data", "split", w.manifest, "-o", f], "is a file"),
        (lambda w, f: ["data", "preview-augment", w.manifest, "-o", f.parent], "is a folder"),
        (
            lambda w, f: ["evaluate", "-b", w.bundle, "-d", w.split, "-o", f, "--split", "all"],
            "is a file",
        ),
        (lambda w, f: ["evaluate", "compare", *w.evaluations, "-o", f], "is a file"),
        (lambda w, f: ["benchmark", w.bundle, *_BENCH, "-o", f], "is a file"),
        (
            lambda w, f: ["predict", w.photos, "-b", w.bundle, "-o", f.parent / "x.csv"],
            "is a folder",
        ),
    ],
    ids=[
        "split -o FILE",
        "preview-augment -o DIR",
        "evaluate -o FILE",
        "compare -o FILE",
        "benchmark -o FILE",
        "predict -o x.csv/",
    ],
)
def test_an_output_of_the_wrong_kind_is_a_clear_error(
    args: Callable[[World, Path], list[Any]], mention: str, world: World, tmp_path: Path
) -> None:
    """Defect 4: each of these was a traceback."""
    file = tmp_path / "place" / "taken.txt"
    file.parent.mkdir()
    file.write_text("kept\n")
    (file.parent / "x.csv").mkdir()
    result = invoke(*args(world, file))
    _check_refused(result, EXIT_FAILURE, mention)
    assert file.read_text() == "kept\n"


def test_the_video_a_command_reads_is_an_input(world: World, tmp_path: Path) -> None:
    """``webcam --source V -o V`` and ``predict-video V -o DIR-HOLDING-V`` would replace
    the recording being read (the walk above uses the bundle as their folder input)."""
    video = _video(world)
    before = _snapshot(video.parent)
    for argv in (
        ["webcam", *_webcam(world, "-o", video)],
        ["webcam", *_webcam(world, "--log", video)],
        ["predict-video", video, "-b", world.bundle, "-o", video],
        ["predict-video", video, "-b", world.bundle, "-o", video.parent],
    ):
        _check_refused(invoke(*argv, "--force"), EXIT_USAGE, "input")
    assert _snapshot(video.parent) == before


def test_a_failed_command_leaves_no_partial_output(world: World, tmp_path: Path) -> None:
    """Defect 1: ``export --parity-data /nope -o X`` left a bundle copy with an empty
    exports/, and ``evaluate compare`` its output folder."""
    exported = tmp_path / "exported"
    result = invoke("export", world.bundle, "--formats", "onnx", "--parity-data",
                    tmp_path / "nope", "-o", exported)  # fmt: skip
    _check_refused(result, EXIT_FAILURE, "nope")
    compared = tmp_path / "compared"
    result = invoke("evaluate", "compare", world.evaluations[0], tmp_path / "nope", "-o", compared)
    _check_refused(result, EXIT_FAILURE, "nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_replaced_output_folder_keeps_no_stale_report(world: World, tmp_path: Path) -> None:
    """Defect 1: data commands wrote over an old folder and left its other files."""
    out = tmp_path / "validated"
    ok(invoke("data", "validate", world.manifest, "-o", out))
    (out / "balance_report.json").write_text("{}")  # from another command and dataset
    ok(invoke("data", "validate", world.split, "-o", out, "--force"))
    assert not (out / "balance_report.json").exists()
    assert (out / "data_report.json").is_file()


def test_predict_checks_its_output_before_predicting(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 10: ``predict -o out.txt`` predicted every image, then failed."""

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr("clip_har.inference.predictor.Predictor.from_bundle", never)
    result = invoke("predict", world.photos, "-b", world.bundle, "-o", tmp_path / "out.txt")
    _check_refused(result, EXIT_USAGE, "out.txt", ".csv or .json")
    assert not (tmp_path / "out.txt").exists()


def test_an_output_extension_must_match_what_is_written(world: World, tmp_path: Path) -> None:
    """Defect 13: ``preview-augment -o g.txt`` wrote PNG bytes into a .txt file."""
    result = invoke("data", "preview-augment", world.manifest, "-o", tmp_path / "g.txt")
    _check_refused(result, EXIT_USAGE, "g.txt", ".png")
    metrics = invoke(
        "train", *_train(world, "-o", tmp_path / "b", "--metrics", tmp_path / "m.yaml")
    )
    _check_refused(metrics, EXIT_USAGE, "m.yaml", ".json")
    assert sorted(tmp_path.iterdir()) == []


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_follow_the_umask(world: World, tmp_path: Path, clip_har_cache: Path) -> None:
    """Defect 7: bundle folders came out 0700 and head files 0600, so a service running as
    another user could not read them. Under a umask of 022 everything is world-readable."""

    def clip_har(*args: str | Path) -> None:
        done = subprocess.run(
            [CLI, *map(str, args)], capture_output=True, text=True, timeout=300, check=False,
            umask=0o022, cwd=tmp_path, env={**os.environ, "CLIP_HAR_CACHE": str(clip_har_cache)},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    clip_har("bundle", "create", "--model", "tiny", "--classes", "running,sitting", "-o", "b")
    clip_har("export", "b", "--formats", "onnx", "-o", "exported")
    clip_har("predict", world.photos, "-b", "exported", "--format", "onnx", "-o", "p.csv")
    written = [tmp_path / "b", tmp_path / "exported", tmp_path / "p.csv"]
    for top in written:
        for path in [top, *top.rglob("*")]:
            expected = 0o755 if path.is_dir() else 0o644
            assert _mode(path) & 0o777 == expected, f"{path}: {oct(_mode(path))}"
    assert json.loads((tmp_path / "exported" / "manifest.json").read_text())["exports"]
