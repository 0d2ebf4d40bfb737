"""Every text file a user gives clip-har reads the same way (``clip_har.io.read_text_input``):
class lists, prompt sets, the params file, label CSVs, evaluation files and bundle manifests.
A UTF-8 byte-order mark changes nothing; bytes that are not UTF-8 are one clear error that
names the file and where decoding failed (issue 13, defects 4, 5 and 16)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import make_photo
from typer.testing import CliRunner

from clip_har.cli.main import app
from clip_har.config import load_settings
from clip_har.data.manifest import read_manifest
from clip_har.data.sources import import_source
from clip_har.errors import (
    BundleError,
    ClipHarError,
    ConfigError,
    EvaluationError,
    SourceError,
)
from clip_har.evaluation.compare_runs import load_evaluation
from clip_har.io import read_text_input
from clip_har.models.bundle import open_bundle
from clip_har.models.prompts import load_class_names, load_prompt_set, resolve_class_names

BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------- the defects


def test_class_file_with_bom_keeps_the_first_class(tmp_path: Path) -> None:
    """Notepad's "UTF-8 with BOM": the first class is ``running``, not ``\\ufeffrunning``."""
    classes = tmp_path / "classes.txt"
    classes.write_bytes(BOM + b"running\r\nsitting\r\n")
    assert load_class_names(classes) == ["running", "sitting"]
    assert resolve_class_names(str(classes)) == ["running", "sitting"]


def test_data_validate_accepts_the_first_class_of_a_bom_class_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``data validate --classes`` with a BOM file keeps every ``running`` image."""
    monkeypatch.chdir(tmp_path)  # no ./params.yaml
    monkeypatch.delenv("CLIP_HAR_PARAMS", raising=False)
    photos = tmp_path / "photos"
    for offset, label in enumerate(("running", "sitting")):
        (photos / label).mkdir(parents=True)
        for index in range(2):
            make_photo(photos / label / f"{index}.jpg", seed=index + 10 * offset)
    classes = tmp_path / "classes.txt"
    classes.write_bytes(BOM + b"running\nsitting\n")
    runner = CliRunner()
    imported = runner.invoke(app, ["data", "import", str(photos), "-o", "raw"])
    assert imported.exit_code == 0, imported.output
    validated = runner.invoke(
        app, ["data", "validate", "raw", "-o", "valid", "--classes", str(classes)]
    )
    assert validated.exit_code == 0, validated.output
    report = json.loads((tmp_path / "valid" / "data_report.json").read_text())
    assert (report["accepted"], report["rejected"]) == (4, 0), report
    assert sorted(read_manifest(tmp_path / "valid")["label"]) == ["running"] * 2 + ["sitting"] * 2


def test_a_params_section_that_is_not_a_mapping_names_the_file_and_key(tmp_path: Path) -> None:
    """``predict: 5`` is refused (it was accepted silently), at any depth; an empty
    section (``predict:`` and nothing below) means its defaults."""
    params = tmp_path / "odd.yaml"
    params.write_text("predict: 5\n")
    with pytest.raises(ConfigError, match=r"odd\.yaml: 'predict' must be a mapping.*top_k"):
        load_settings(params)
    params.write_text("export:\n  parity:\n    fp32: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"odd\.yaml: 'export\.parity\.fp32' must be a mapping"):
        load_settings(params)
    params.write_text("predict:\ntrain:\n  epochs: 3\n")
    settings = load_settings(params)
    assert (settings.predict.top_k, settings.train.epochs) == (5, 3)


# --------------------------------------------------------------------------- every text input


@dataclass(frozen=True)
class TextInput:
    """One kind of text file: its name in a folder, a valid content with a non-ASCII
    character, how the program reads the folder, and the error family it reports in."""

    name: str
    file: str
    text: str
    read: Callable[[Path], Any]
    error: type[ClipHarError]
    siblings: dict[str, str] = field(default_factory=dict)  # other files the reader needs


def _label_table(folder: Path) -> list[str]:
    make_photo(folder / "0.jpg")
    return list(import_source(str(folder / "labels.csv"))["label"])


def _evaluation(folder: Path) -> tuple[list[str], list[str]]:
    evaluation = load_evaluation(str(folder), folder / "download")
    return evaluation.class_names, list(evaluation.predictions["label"])


DETAILS = '{"class_names": ["running", "café"]}\n'
PREDICTIONS = "path,label,predicted\na.jpg,café,running\n"

INPUTS = [
    TextInput(
        "class list",
        "classes.txt",
        "# classes\nrunning\ncafé\n",
        lambda folder: load_class_names(folder / "classes.txt"),
        ConfigError,
    ),
    TextInput(
        "prompt set",
        "prompts.yaml",
        "name: mine\ntemplates:\n  - a photo of {} in a café.\n",
        lambda folder: load_prompt_set(folder / "prompts.yaml").texts("running"),
        ConfigError,
    ),
    TextInput(
        "params file",
        "params.yaml",
        "predict:\n  top_k: 3\ntrain:\n  experiment: café\n",
        lambda folder: load_settings(folder / "params.yaml").model_dump(
            include={"predict", "train"}
        ),
        ConfigError,
    ),
    TextInput(
        "label table",
        "labels.csv",
        "filename,label\n0.jpg,café\n",
        _label_table,
        SourceError,
    ),
    TextInput(
        "evaluation details",
        "metrics_full.json",
        DETAILS,
        _evaluation,
        EvaluationError,
        {"predictions.csv": PREDICTIONS},
    ),
    TextInput(
        "predictions table",
        "predictions.csv",
        PREDICTIONS,
        _evaluation,
        EvaluationError,
        {"metrics_full.json": DETAILS},
    ),
]


def _folder_with(root: Path, kind: TextInput, content: bytes) -> Path:
    root.mkdir()
    for name, text in kind.siblings.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / kind.file).write_bytes(content)
    return root


@pytest.mark.parametrize("kind", INPUTS, ids=[kind.name for kind in INPUTS])
def test_a_bom_changes_nothing_in_any_text_input(kind: TextInput, tmp_path: Path) -> None:
    plain = kind.read(_folder_with(tmp_path / "plain", kind, kind.text.encode()))
    with_bom = kind.read(_folder_with(tmp_path / "bom", kind, BOM + kind.text.encode()))
    assert with_bom == plain
    assert "\ufeff" not in repr(with_bom)


@pytest.mark.parametrize("kind", INPUTS, ids=[kind.name for kind in INPUTS])
def test_non_utf8_text_inputs_name_the_file(kind: TextInput, tmp_path: Path) -> None:
    """A Latin-1 file is the caller's family of error (never a UnicodeDecodeError), naming
    the file, what it is and the byte where decoding failed."""
    latin1 = kind.text.encode("latin-1")
    where = latin1.index("é".encode("latin-1"))
    folder = _folder_with(tmp_path / "latin1", kind, latin1)
    with pytest.raises(kind.error) as info:
        kind.read(folder)
    message = str(info.value)
    assert str(folder / kind.file) in message
    assert f"{kind.name} is not UTF-8 text" in message
    assert f"byte {where}: 0xe9" in message


def test_a_bundle_manifest_saved_with_a_bom_still_opens(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    manifest = bundle / "manifest.json"
    manifest.write_bytes(BOM + manifest.read_bytes())
    assert open_bundle(bundle).class_names == open_bundle(tiny_bundle).class_names
    manifest.write_bytes(manifest.read_bytes()[len(BOM) :].replace(b"running", b"caf\xe9"))
    with pytest.raises(BundleError, match=r"manifest\.json: bundle manifest is not UTF-8"):
        open_bundle(bundle)


# --------------------------------------------------------------------------- the reader


def test_only_a_leading_bom_is_dropped_and_newlines_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(BOM + "a\r\nb\ufeffc\n".encode())
    assert read_text_input(path, "notes") == "a\r\nb\ufeffc\n"


def test_the_error_says_where_decoding_failed(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(BOM + b"one\ntwo\nth\xffree\n")
    with pytest.raises(ConfigError, match=r"notes\.txt: notes is not UTF-8 text \(line 3, byte 13"):
        read_text_input(path, "notes")
    path.write_bytes("running\n".encode("utf-16"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(it is UTF-16\); save it as UTF-8"):
        read_text_input(path, "notes")
    with pytest.raises(FileNotFoundError):
        read_text_input(tmp_path / "absent.txt", "notes")
