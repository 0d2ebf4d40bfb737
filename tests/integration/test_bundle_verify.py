"""``clip-har bundle verify`` checks every file of a bundle (hashes, a loadable head) and
fails on any damage; ``bundle show`` says that it does not."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import make_photo
from typer.testing import CliRunner, Result

from clip_har.cli.common import EXIT_FAILURE
from clip_har.cli.main import app
from clip_har.errors import BundleError
from clip_har.models.bundle import EncoderDelta, open_bundle, save_bundle, verify_bundle
from clip_har.models.classifier import build_zero_shot_classifier
from clip_har.models.prompts import load_prompt_set

pytestmark = pytest.mark.integration

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def rows(result: Result) -> dict[str, str]:
    """``file -> status`` from ``bundle verify --json`` (the table folds long names)."""
    return {row["file"]: "ok" if row["ok"] else "FAILED" for row in json.loads(result.stdout)}


@pytest.fixture(scope="module")
def exported(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with an onnx and a text-onnx export (a companion tokenizer file)."""
    target = tmp_path_factory.mktemp("verify") / "exported"
    result = invoke("export", tiny_bundle, "-o", target, "--formats", "onnx,text-onnx")
    assert result.exit_code == 0, result.output
    return target


def damaged_copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "copy"))


def test_bundle_verify_refuses_a_corrupt_head_that_bundle_show_lists(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = damaged_copy(tiny_bundle, tmp_path)
    head = bundle / "head.safetensors"
    head.write_bytes(head.read_bytes()[:40])
    shown = invoke("bundle", "show", bundle)
    assert shown.exit_code == 0 and "not verified" in shown.stderr
    assert "bundle verify" in shown.stderr
    verified = invoke("bundle", "verify", "--json", bundle)
    assert verified.exit_code == EXIT_FAILURE, verified.output
    assert rows(verified) == {"manifest.json": "ok", "head.safetensors": "FAILED"}
    assert "cannot read head weights" in verified.stdout
    assert str(head) in verified.stderr and "failed verification" in verified.stderr
    assert "Traceback" not in verified.output


def test_a_sound_bundle_verifies_every_file(exported: Path) -> None:
    result = invoke("bundle", "verify", "--json", exported)
    assert result.exit_code == 0, result.output
    files = rows(result)
    assert set(files.values()) == {"ok"}
    assert {"manifest.json", "head.safetensors", "exports/model.onnx"} <= set(files)
    assert "exports/tokenizer.json" in files  # text-onnx's companion, by its recorded hash
    assert "sha256 matches" in result.stdout and "verified" in result.stderr
    table = invoke("bundle", "verify", exported)
    assert table.exit_code == 0 and "verification of" in table.stdout and "ok" in table.stdout


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_truncated_or_missing_export_fails_verification(
    exported: Path, tmp_path: Path, damage: str
) -> None:
    bundle = damaged_copy(exported, tmp_path)
    onnx = bundle / "exports" / "model.onnx"
    if damage == "truncate":
        onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    else:
        onnx.unlink()
    result = invoke("bundle", "verify", "--json", bundle)
    assert result.exit_code == EXIT_FAILURE, result.output
    assert rows(result)["exports/model.onnx"] == "FAILED"
    assert ("corrupt or truncated" if damage == "truncate" else "missing") in result.stdout
    assert rows(result)["head.safetensors"] == "ok"


def test_a_changed_companion_file_fails_verification(exported: Path, tmp_path: Path) -> None:
    bundle = damaged_copy(exported, tmp_path)
    tokenizer = bundle / "exports" / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes() + b" ")
    verdicts = {v.file: v for v in verify_bundle(bundle)}
    assert not verdicts["exports/tokenizer.json"].ok
    assert "corrupt or truncated" in str(verdicts["exports/tokenizer.json"].problem)
    assert verdicts["exports/text_encoder.onnx"].ok


def test_a_failed_parity_gate_is_reported_but_is_no_damage(exported: Path, tmp_path: Path) -> None:
    bundle = damaged_copy(exported, tmp_path)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["exports"]["onnx"]["parity"]["passed"] = False
    manifest_path.write_text(json.dumps(manifest))
    [verdict] = [v for v in verify_bundle(bundle) if v.role == "export onnx"]
    assert verdict.ok and "failed its parity gate" in verdict.note


def test_a_broken_manifest_is_one_failed_row(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = damaged_copy(tiny_bundle, tmp_path)
    (bundle / "manifest.json").write_text('{"schema_version": 1, ')
    [verdict] = verify_bundle(bundle)
    assert verdict.file == "manifest.json" and "not valid JSON" in str(verdict.problem)


def test_a_changed_embedded_backbone_fails_verification(tiny_backbone: Any, tmp_path: Path) -> None:
    prompts = load_prompt_set("minimal")
    classifier = build_zero_shot_classifier(tiny_backbone, ["running", "sitting"], prompts)
    bundle = tmp_path / "embedded"
    save_bundle(
        bundle,
        classifier=classifier,
        backbone=tiny_backbone,
        prompts=prompts,
        include_backbone=True,
    )
    assert all(v.ok for v in verify_bundle(bundle))
    config = bundle / "backbone" / "config.json"
    config.write_text(config.read_text().replace("{", '{"tampered": true, ', 1))
    [backbone] = [v for v in verify_bundle(bundle) if v.role == "backbone"]
    assert backbone.problem is not None and "fingerprint" in backbone.problem


def test_bundle_help_says_which_command_verifies() -> None:
    show = invoke("bundle", "show", "--help")
    assert "bundle verify" in re.sub(r"\s+", " ", show.stdout)
    verify = invoke("bundle", "verify", "--help")
    assert "sha256" in verify.stdout and "exits 1" in verify.stdout


def overwrite_tensor_bytes(path: Path) -> None:
    """Overwrite 4 bytes of tensor data (after the safetensors header): the file still
    parses and every shape is right, only the weights differ."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start : start + 4] = bytes(255 - b for b in data[start : start + 4])
    path.write_bytes(bytes(data))


def test_bundle_verify_refuses_head_weights_damaged_in_place(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = damaged_copy(tiny_bundle, tmp_path)
    head = bundle / "head.safetensors"
    overwrite_tensor_bytes(head)
    verified = invoke("bundle", "verify", "--json", bundle)
    assert verified.exit_code == EXIT_FAILURE, verified.output
    assert rows(verified) == {"manifest.json": "ok", "head.safetensors": "FAILED"}
    assert "corrupt or truncated" in verified.stdout
    with pytest.raises(BundleError, match="head weights corrupt"):
        open_bundle(bundle).load_head()  # loading checks the recorded hash too


def test_bundle_verify_refuses_encoder_weights_damaged_in_place(
    tiny_backbone: Any, tmp_path: Path
) -> None:
    prompts = load_prompt_set("minimal")
    classifier = build_zero_shot_classifier(tiny_backbone, ["running", "sitting"], prompts)
    name, tensor = next(iter(tiny_backbone.model.state_dict().items()))
    bundle = tmp_path / "tuned"
    delta = EncoderDelta("partial", {name: tensor.clone()})
    save_bundle(
        bundle, classifier=classifier, backbone=tiny_backbone, prompts=prompts, encoder=delta
    )
    [sound] = [v for v in verify_bundle(bundle) if v.role == "encoder"]
    assert sound.ok and "sha256 matches" in sound.note
    overwrite_tensor_bytes(bundle / "encoder.safetensors")
    [encoder] = [v for v in verify_bundle(bundle) if v.role == "encoder"]
    assert encoder.problem is not None and "corrupt or truncated" in encoder.problem


def test_a_bundle_saved_without_weight_hashes_is_loaded_and_shape_checked_only(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """Bundles saved before head and encoder hashes were recorded still verify."""
    bundle = damaged_copy(tiny_bundle, tmp_path)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["head"]["sha256"]
    manifest_path.write_text(json.dumps(manifest))
    result = invoke("bundle", "verify", "--json", bundle)
    assert result.exit_code == 0, result.output
    [head] = [row for row in json.loads(result.stdout) if row["file"] == "head.safetensors"]
    assert "no recorded hash: loaded and shape-checked only" in head["note"]


def test_a_file_given_as_a_bundle_is_named_a_file_not_a_missing_folder(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a bundle")
    photo = make_photo(tmp_path / "photo.jpg")
    for args in (("bundle", "show", afile), ("predict", "-b", afile, photo)):
        result = invoke(*args)
        assert result.exit_code == EXIT_FAILURE, result.output
        assert "is a file, not a bundle directory" in result.stderr, args
        assert "not found" not in result.stderr and "Traceback" not in result.output
