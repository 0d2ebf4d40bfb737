"""The real ``clip-har`` console script, run as a subprocess."""

import csv
import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_cli

from clip_har.cli.common import EXIT_PARTIAL

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli_bundle(clip_har_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("cli") / "bundle"
    result = run_cli("bundle", "create", "--model", "tiny", "-o", str(target))
    assert result.returncode == 0, result.stderr
    assert "RANDOM WEIGHTS" in result.stderr
    return target


def test_bundle_show_validates_and_summarises(cli_bundle: Path) -> None:
    result = run_cli("bundle", "show", str(cli_bundle))
    assert result.returncode == 0, result.stderr
    assert "RANDOM WEIGHTS" in result.stdout and "using_laptop" in result.stdout
    as_json = json.loads(run_cli("bundle", "show", str(cli_bundle), "--json").stdout)
    assert len(as_json["class_names"]) == 15


def test_bundle_create_refuses_to_overwrite(cli_bundle: Path) -> None:
    result = run_cli("bundle", "create", "--model", "tiny", "-o", str(cli_bundle))
    assert result.returncode == 1
    assert "already exists" in result.stderr and "Traceback" not in result.stderr


def test_mixed_folder_reports_each_bad_file_and_exits_partial(
    cli_bundle: Path, mixed_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds.csv"
    result = run_cli("predict", str(mixed_folder), "--bundle", str(cli_bundle), "-o", str(out))
    assert result.returncode == EXIT_PARTIAL, result.stderr
    bad = {
        "empty.jpg": ("empty", "empty_file"),
        "truncated.jpg": ("truncated", "corrupt_data"),
        "notes.jpg": ("not an image", "not_an_image"),
        "pixel.png": ("too small", "too_small"),
    }
    for name, (reason, _) in bad.items():
        line = next(line for line in result.stderr.splitlines() if name in line)
        assert reason in line, line
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 9
    assert {Path(r["path"]).name: r["error_code"] for r in rows if r["error"]} == {
        name: code for name, (_, code) in bad.items()
    }
    good = [row for row in rows if not row["error"]]
    assert len(good) == 5 and all(row["label"] for row in good)
    assert "Traceback" not in result.stderr

    skipped = run_cli("predict", str(mixed_folder), "--bundle", str(cli_bundle), "--skip-errors")
    assert skipped.returncode == 0


def test_json_output_and_open_vocabulary_labels(cli_bundle: Path, photo_folder: Path) -> None:
    result = run_cli(
        "predict", str(photo_folder / "*.jpg"), "--bundle", str(cli_bundle),
        "--labels", "juggling, surfing,waving", "--print", "json", "--top-k", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert len(records) == 3
    for record in records:
        assert record["label"] in {"juggling", "surfing", "waving"}
        assert len(record["top_k"]) == 2


def test_zero_shot_from_model_without_bundle(photo_folder: Path) -> None:
    result = run_cli(
        "predict", str(photo_folder), "--model", "tiny", "--labels", "a,b", "--print", "csv"
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert len(rows) == 5 and {row["label"] for row in rows} <= {"a", "b"}


def test_offline_hub_model_fails_fast_without_traceback(tmp_path: Path, photo_folder: Path) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    started = time.monotonic()
    result = run_cli(
        "predict", "--model", "openai/clip-vit-base-patch16", str(photo_folder / "good_0.jpg"),
        env=env, timeout=60,
    )  # fmt: skip
    assert time.monotonic() - started < 60
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "openai/clip-vit-base-patch16" in result.stderr and "--model tiny" in result.stderr


def test_bad_bundle_and_no_inputs_are_clear_errors(tmp_path: Path, photo_folder: Path) -> None:
    result = run_cli("predict", str(photo_folder), "--bundle", str(tmp_path))
    assert result.returncode == 1 and "manifest.json: missing" in result.stderr
    result = run_cli("predict", str(tmp_path / "nothing*.jpg"), "--model", "tiny")
    assert result.returncode == 1 and "no input images" in result.stderr


def test_predict_exits_1_when_no_input_gives_a_prediction_and_still_writes_every_row(
    cli_bundle: Path, mixed_folder: Path, tmp_path: Path
) -> None:
    tiny, text, missing = mixed_folder / "pixel.png", mixed_folder / "notes.jpg", tmp_path / "x.jpg"
    out = tmp_path / "preds.csv"
    result = run_cli(
        "predict", str(tiny), str(text), str(missing), "-b", str(cli_bundle), "-o", str(out),
        "--skip-errors",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [(row["path"], row["error_code"]) for row in rows] == [
        (str(tiny), "too_small"),
        (str(text), "not_an_image"),
        (str(missing), "missing_file"),
    ]
    alone = run_cli("predict", str(tiny), "-b", str(cli_bundle))
    assert alone.returncode == 1 and "too small" in alone.stderr


def test_real_photos_through_make_demo(har_sample_dir: Path, tmp_path: Path) -> None:
    images = har_sample_dir / "images"
    out = tmp_path / "demo"
    tracked = ["git", "status", "--porcelain", "--untracked-files=no"]
    before = subprocess.run(tracked, cwd=REPO, capture_output=True, text=True, check=False)
    result = subprocess.run(
        ["make", "demo", "MODEL=tiny", f"DATA={har_sample_dir}", f"OUT={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == len(list(images.glob("*.jpg")))
    project = out / "project"
    assert "validation accuracy: zero-shot" in result.stdout
    registered = json.loads((project / "models" / "registered.json").read_text())
    assert registered["registered"] and f"version {registered['version']}" in result.stdout
    assert (project / "models" / "exported" / "manifest.json").is_file()
    assert (project / "mlruns.db").is_file() and (project / "reports" / "eval").is_dir()
    after = subprocess.run(tracked, cwd=REPO, capture_output=True, text=True, check=False)
    assert after.stdout == before.stdout, "make demo changed tracked files of the repository"
    assert all(row["label"] and not row["error"] for row in rows)
