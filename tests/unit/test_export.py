"""Export: every registered format goes export -> verify -> engine -> parity on the tiny
model (a format whose requirement is absent skips with its reason); the registry, the
exporters and the docs table agree; damaged or failed artifacts are refused clearly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_photo
from typer.testing import CliRunner

from clip_har.cli.main import app
from clip_har.config import ParityLimit, ParitySettings
from clip_har.errors import BundleError, ClipHarError
from clip_har.export.images import sample_pixels
from clip_har.export.parity import limit_for
from clip_har.export.run import (
    EXPORTERS,
    Exporter,
    ExportOptions,
    export_bundle,
    image_outputs,
    parse_formats,
    register_exporter,
)
from clip_har.inference.engines import EngineOptions, create_engine
from clip_har.inference.formats import (
    FormatSpec,
    format_names,
    formats_markdown,
    get_format,
    register_format,
    registered_formats,
)
from clip_har.inference.predictor import Predictor
from clip_har.models.bundle import MANIFEST, open_bundle

DOCS = Path(__file__).resolve().parents[2] / "docs" / "export.md"
PARITY_IMAGES = 12
CALIBRATION_IMAGES = 6
# what particular exporters record beyond the fields every record has
EXPECTED_DETAILS: dict[str, dict[str, object]] = {
    "onnx-opt": {"fused_Attention": 2},  # tiny has 2 layers
    "onnx-int8": {"method": "dynamic", "weights": "int8"},
    "onnx-int8-static": {"calibration": "minmax", "calibration_images": CALIBRATION_IMAGES},
    "onnx-fp16": {"weights": "fp16", "io": "fp32"},
    "tensorrt": {"precision": "fp16"},
    "text-onnx": {"tokenizer": "exports/tokenizer.json"},
}


def available_formats() -> list[str]:
    return [spec.name for spec in registered_formats() if spec.unavailable_reason("export") is None]


@pytest.fixture(scope="module")
def exported(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with every format this machine can build, exported in one session."""
    directory = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("export") / "b"))
    calibration = tmp_path_factory.mktemp("calibration")
    for index in range(CALIBRATION_IMAGES):
        make_photo(calibration / f"c{index}.png", (90 + 10 * index, 70), seed=index)
    options = ExportOptions(
        parity_count=PARITY_IMAGES, calibration=calibration, calibration_count=CALIBRATION_IMAGES
    )
    summary = export_bundle(directory, available_formats(), options)
    assert summary.failures == {}
    return directory


def _check_onnx_signature(path: Path, spec: FormatSpec) -> None:
    """Inputs and outputs named as the registry says, with a dynamic batch axis."""
    model = onnx.load(str(path), load_external_data=False)
    assert model.opset_import[0].version >= 17
    assert tuple(i.name for i in model.graph.input) == spec.signature.inputs
    assert tuple(o.name for o in model.graph.output) == spec.signature.outputs
    for value in model.graph.input:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


def _check_open_vocabulary(exported: Path) -> None:
    """The text encoder's engine is open vocabulary behind an ONNX image engine."""
    labels = ["dancing", "cooking dinner", "reading_a_book"]
    torch_predictor = Predictor.from_bundle(exported, "torch").with_labels(labels)
    onnx_predictor = Predictor.from_bundle(exported, "onnx").with_labels(labels)
    pixels, _ = sample_pixels(open_bundle(exported).manifest.preprocessing, None, 6, seed=1)
    expected = np.stack([p.probabilities for p in torch_predictor.predict_pixels(pixels)])
    got = np.stack([p.probabilities for p in onnx_predictor.predict_pixels(pixels)])
    assert got.shape == (6, 3)
    np.testing.assert_allclose(got, expected, atol=limit_for(ParitySettings(), "fp32").max_abs_diff)


@pytest.mark.parametrize("name", format_names())
def test_every_format_exports_verifies_runs_and_keeps_parity(exported: Path, name: str) -> None:
    spec = get_format(name)
    reason = spec.unavailable_reason("export")
    if reason is not None:
        pytest.skip(reason)
    bundle = open_bundle(exported)

    # export + verify: recorded under the registry's file, hash checked, gate passed
    path, record = bundle.export_file(name)
    assert path == exported / "exports" / spec.file
    assert record.bytes == path.stat().st_size
    assert all((path.parent / companion).is_file() for companion in spec.companions)
    assert record.precision == spec.precisions[0]
    assert record.opset == (17 if spec.runtime == "onnxruntime" else None)
    assert EXPECTED_DETAILS.get(name, {}).items() <= record.details.items()
    if spec.runtime == "onnxruntime":
        _check_onnx_signature(path, spec)

    # parity: inside the gate of its precision, every image decided or excluded
    parity = record.parity
    assert parity is not None and parity.passed
    assert parity.images == PARITY_IMAGES and not parity.real_photos
    assert parity.decided_images is not None and parity.excluded_images is not None
    assert parity.decided_images + parity.excluded_images == PARITY_IMAGES
    limit = limit_for(ParitySettings(), record.precision)
    assert parity.max_abs_diff <= limit.max_abs_diff

    # engine: the registry's factory, at any batch size, against torch
    if not spec.is_image:
        _check_open_vocabulary(exported)
        return
    pixels, _ = sample_pixels(bundle.manifest.preprocessing, None, 5, seed=3)
    reference = create_engine(bundle, "torch").predict(pixels)
    engine = create_engine(bundle, name)
    assert engine.format == name
    for size in (1, 5):
        probs = engine.predict(pixels[:size])
        assert probs.shape == (size, len(bundle.class_names))
        np.testing.assert_allclose(probs, reference[:size], atol=limit.max_abs_diff)


def test_every_registered_format_has_an_exporter_and_a_parity_comparison() -> None:
    assert set(EXPORTERS) == set(format_names())
    for spec in registered_formats():
        # a format without an image engine must say what its gate compares
        assert spec.is_image or EXPORTERS[spec.name].compare is not image_outputs, spec.name
    files = [name for spec in registered_formats() for name in (spec.file, *spec.companions)]
    assert len(files) == len(set(files))


def test_a_name_or_file_is_registered_once() -> None:
    onnx_spec = get_format("onnx")
    with pytest.raises(ClipHarError, match="already registered"):
        register_format(onnx_spec)
    with pytest.raises(ClipHarError, match=r"model\.onnx already taken"):
        register_format(FormatSpec("onnx-copy", "model.onnx", ("fp32",), "onnxruntime"))
    with pytest.raises(ClipHarError, match="invalid format spec"):
        FormatSpec("torch", "model.pt", ("fp32",), "torchscript")  # the reference engine
    assert "onnx-copy" not in format_names()


def test_a_new_format_is_its_spec_and_its_exporter(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/architecture.md "How to add an export format", done from outside the package with
    a throwaway format (both registries are restored after the test)."""
    monkeypatch.setattr(
        "clip_har.inference.formats._FORMATS", {spec.name: spec for spec in registered_formats()}
    )
    monkeypatch.setattr("clip_har.export.run.EXPORTERS", dict(EXPORTERS))
    spec = register_format(
        FormatSpec(
            "onnx-copy",
            "model.copy.onnx",
            ("fp32",),
            "onnxruntime",
            engine=get_format("onnx").engine,
        )
    )
    with pytest.raises(ClipHarError, match="unknown format 'nowhere'"):
        register_exporter("nowhere", EXPORTERS["onnx"])
    with pytest.raises(ClipHarError, match="'onnx' already has an exporter"):
        register_exporter("onnx", EXPORTERS["onnx"])
    register_exporter(spec.name, Exporter(EXPORTERS["onnx"].build))

    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))
    summary = export_bundle(copy, [spec.name], ExportOptions(parity_count=2))
    assert summary.failures == {} and summary.records[spec.name].passed
    assert summary.records[spec.name].file == "exports/model.copy.onnx"
    engine = create_engine(open_bundle(copy), spec.name)
    assert engine.predict(np.zeros((1, 3, 64, 64), dtype=np.float32)).shape == (1, 15)


def test_the_docs_table_is_the_registry() -> None:
    """docs/export.md embeds `clip-har formats --markdown` verbatim: a new or changed
    FormatSpec fails here until the docs are regenerated from the registry."""
    text = DOCS.read_text()
    block = text.split("<!-- formats:", 1)[1].split("-->", 1)[1].split("<!-- end formats -->")[0]
    assert block.lstrip("\n") == formats_markdown()
    names = [line.split("`")[1] for line in formats_markdown().splitlines()[2:]]
    assert names == [spec.name for spec in registered_formats()]


def test_clip_har_formats_lists_the_registry_and_what_is_missing_here() -> None:
    markdown = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["formats", "--markdown"])
    assert markdown.exit_code == 0 and markdown.stdout == formats_markdown()
    listing = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["formats"])
    assert listing.exit_code == 0
    for spec in registered_formats():
        assert spec.name in listing.stdout
        reason = spec.unavailable_reason("inference")
        assert reason is None or reason.split(":")[0] in listing.stderr


def test_onnx_open_vocabulary_runs_without_pytorch(exported: Path) -> None:
    """The ONNX engine, text encoder and tokenizer alone: importing torch is made to fail."""
    manifest = json.loads((exported / MANIFEST).read_text())
    text = manifest["exports"]["text-onnx"]["details"]
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
import numpy as np
from clip_har.inference.onnx_engine import (
    OnnxEngine, OnnxTextEncoder, OnnxZeroShotEngine, class_text_weights)
from clip_har.models.prompts import load_prompt_set
root = {str(exported)!r}
encoder = OnnxTextEncoder(root + "/exports/text_encoder.onnx", root + "/exports/tokenizer.json",
                          max_length={text["max_length"]}, pad_id={text["pad_id"]})
weights = class_text_weights(encoder, ["dancing", "cooking"], load_prompt_set("actions"))
image = OnnxEngine(root + "/exports/model.onnx")
engine = OnnxZeroShotEngine(image, weights, {text["logit_scale"]})
probs = engine.predict(np.zeros((2, 3, 64, 64), dtype=np.float32))
assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1.0), probs
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_artifacts_are_detected_by_hash(
    exported: Path, tmp_path: Path, damage: str
) -> None:
    copy = Path(shutil.copytree(exported, tmp_path / "copy"))
    path = copy / "exports" / "model.onnx"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    else:
        path.unlink()
    expected = "missing" if damage == "delete" else "corrupt or truncated"
    with pytest.raises(BundleError, match=expected):
        create_engine(open_bundle(copy), "onnx")


def test_a_changed_tokenizer_is_refused(exported: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(exported, tmp_path / "copy"))
    tokenizer = copy / "exports" / "tokenizer.json"
    tokenizer.write_bytes(tokenizer.read_bytes() + b" ")
    with pytest.raises(ClipHarError, match="changed since export"):
        Predictor.from_bundle(copy, "onnx")


def test_a_failed_parity_gate_is_recorded_and_refused_unless_forced(
    exported: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(exported, tmp_path / "copy"))
    strict = ParitySettings(int8=ParityLimit(max_abs_diff=0.0, top1_agreement=1.0))
    summary = export_bundle(copy, ["onnx-int8"], ExportOptions(parity=strict, parity_count=4))
    assert summary.gate_failures == ["onnx-int8"]
    record = open_bundle(copy).manifest.exports["onnx-int8"]
    assert record.parity is not None and not record.parity.passed
    with pytest.raises(BundleError, match="failed its parity gate"):
        create_engine(open_bundle(copy), "onnx-int8")
    forced = create_engine(open_bundle(copy), "onnx-int8", EngineOptions(force=True))
    assert forced.predict(np.zeros((1, 3, 64, 64), dtype=np.float32)).shape == (1, 15)
    assert open_bundle(copy).manifest.exports["onnx"].passed  # other records kept


@pytest.mark.parametrize("name", [spec.name for spec in registered_formats() if spec.requires])
def test_a_format_missing_its_requirement_fails_clearly_and_the_rest_is_exported(
    tiny_bundle: Path, tmp_path: Path, name: str
) -> None:
    reason = get_format(name).unavailable_reason("export")
    if reason is None:
        pytest.skip(f"this machine has what {name} needs")
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))
    summary = export_bundle(copy, ["onnx", name], ExportOptions(parity_count=2))
    assert summary.failures[name] == reason
    assert list(open_bundle(copy).manifest.exports) == ["onnx"]
    assert [p.name for p in (copy / "exports").iterdir()] == ["model.onnx"]  # no work files


def test_bad_requests_are_clear_errors(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ClipHarError, match="unknown export format"):
        parse_formats(["onnx", "onx"])
    with pytest.raises(ClipHarError, match=r"no export format given"):
        parse_formats([" ", ""])
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))
    summary = export_bundle(copy, ["onnx-int8-static"], ExportOptions(parity_count=2))
    assert "needs calibration images" in summary.failures["onnx-int8-static"]
    with pytest.raises(BundleError, match="no 'onnx-opt' export"):
        create_engine(open_bundle(copy), "onnx-opt")
    with pytest.raises(ClipHarError, match="unknown engine format 'text-onnx'"):
        create_engine(open_bundle(copy), "text-onnx")  # exported, but not an image engine


def test_onnx_providers_missing_from_the_build_are_named(exported: Path) -> None:
    options = EngineOptions(providers=("TensorrtExecutionProvider", "CPUExecutionProvider"))
    with pytest.raises(ClipHarError, match="provider TensorrtExecutionProvider is not in this"):
        create_engine(open_bundle(exported), "onnx", options)
    with pytest.raises(ClipHarError, match="needs onnxruntime-gpu"):
        create_engine(open_bundle(exported), "onnx", EngineOptions(device="cuda"))
    cpu = EngineOptions(providers=("CPUExecutionProvider",), threads=1)
    assert create_engine(open_bundle(exported), "onnx", cpu).predict(
        np.zeros((1, 3, 64, 64), dtype=np.float32)
    ).shape == (1, 15)


def test_a_failed_in_place_export_leaves_the_bundle_as_it_was(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    missing = tmp_path / "nope"
    result = CliRunner().invoke(
        app, ["export", str(copy), "--formats", "onnx", "--parity-data", str(missing)]
    )
    assert result.exit_code == 1, result.output
    assert "image data not found" in result.output
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before  # no exports/
