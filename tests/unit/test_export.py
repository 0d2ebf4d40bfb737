"""Export: every CPU format passes its parity gate, engines run the artifacts, ONNX open
vocabulary matches torch, and damaged or failed artifacts are refused with clear errors."""

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

from clip_har.config import ParityLimit, ParitySettings
from clip_har.errors import BundleError, ClipHarError
from clip_har.export.images import sample_pixels
from clip_har.export.run import ExportOptions, export_bundle, parse_formats
from clip_har.inference.engines import EngineOptions, create_engine
from clip_har.inference.predictor import Predictor
from clip_har.models.bundle import MANIFEST, open_bundle

CPU_FORMATS = ["onnx", "onnx-opt", "onnx-int8", "onnx-int8-static", "onnx-fp16", "torchscript"]
FP32_FORMATS = ["onnx", "onnx-opt", "torchscript", "text-onnx"]


@pytest.fixture(scope="module")
def exported(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with every CPU format and the text encoder exported."""
    directory = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("export") / "b"))
    calibration = tmp_path_factory.mktemp("calibration")
    for index in range(6):
        make_photo(calibration / f"c{index}.png", (90 + 10 * index, 70), seed=index)
    summary = export_bundle(
        directory,
        [*CPU_FORMATS, "text-onnx"],
        ExportOptions(parity_count=12, calibration=calibration, calibration_count=6),
    )
    assert summary.failures == {}
    return directory


def test_every_cpu_format_is_recorded_and_passes_its_gate(exported: Path) -> None:
    manifest = open_bundle(exported).manifest
    assert set(manifest.exports) == {*CPU_FORMATS, "text-onnx"}
    for name, record in manifest.exports.items():
        assert record.parity is not None and record.parity.passed, name
        assert (exported / record.file).stat().st_size == record.bytes
        assert record.parity.images == 12 and not record.parity.real_photos
    for name in FP32_FORMATS:
        parity = manifest.exports[name].parity
        assert parity is not None and parity.max_abs_diff <= 1e-4, name
        assert parity.top1_agreement == 1.0 and manifest.exports[name].precision == "fp32"
    assert manifest.exports["onnx-int8"].precision == "int8"
    assert manifest.exports["onnx-int8-static"].details["calibration"] == "minmax"
    assert manifest.exports["onnx"].opset == 17 and manifest.exports["torchscript"].opset is None
    assert manifest.exports["onnx-opt"].details["fused_Attention"] == 2  # tiny has 2 layers


def test_onnx_graph_follows_the_contract(exported: Path) -> None:
    model = onnx.load(str(exported / "exports" / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["probabilities", "embeddings"]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"  # dynamic batch axis


@pytest.mark.parametrize("fmt", CPU_FORMATS)
def test_engines_match_torch_at_any_batch_size(exported: Path, fmt: str) -> None:
    bundle = open_bundle(exported)
    pixels, _ = sample_pixels(bundle.manifest.preprocessing, None, 5, seed=3)
    reference = create_engine(bundle, "torch").predict(pixels)
    engine = create_engine(bundle, fmt)
    limit = 1e-4 if bundle.manifest.exports[fmt].precision == "fp32" else 0.05
    for size in (1, 5):
        probs = engine.predict(pixels[:size])
        assert probs.shape == (size, len(bundle.class_names))
        np.testing.assert_allclose(probs, reference[:size], atol=limit)


def test_open_vocabulary_through_the_onnx_text_encoder_matches_torch(exported: Path) -> None:
    labels = ["dancing", "cooking dinner", "reading_a_book"]
    torch_predictor = Predictor.from_bundle(exported, "torch").with_labels(labels)
    onnx_predictor = Predictor.from_bundle(exported, "onnx").with_labels(labels)
    pixels, _ = sample_pixels(open_bundle(exported).manifest.preprocessing, None, 6, seed=1)
    expected = np.stack([p.probabilities for p in torch_predictor.predict_pixels(pixels)])
    got = np.stack([p.probabilities for p in onnx_predictor.predict_pixels(pixels)])
    assert got.shape == (6, 3)
    np.testing.assert_allclose(got, expected, atol=1e-4)


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


def test_tensorrt_without_cuda_fails_clearly_and_the_rest_is_exported(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))
    summary = export_bundle(copy, ["onnx", "tensorrt"], ExportOptions(parity_count=2))
    assert summary.failures["tensorrt"].startswith("TensorRT export needs CUDA + TensorRT")
    assert list(open_bundle(copy).manifest.exports) == ["onnx"]
    assert not (copy / "exports" / "model.plan").exists()
    assert [p.name for p in (copy / "exports").iterdir()] == ["model.onnx"]  # no work files


def test_bad_requests_are_clear_errors(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ClipHarError, match="unknown export format"):
        parse_formats("onnx,onx")
    with pytest.raises(ClipHarError, match="no export formats"):
        parse_formats(" , ")
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))
    summary = export_bundle(copy, ["onnx-int8-static"], ExportOptions(parity_count=2))
    assert "needs calibration images" in summary.failures["onnx-int8-static"]
    with pytest.raises(BundleError, match="no 'onnx-opt' export"):
        create_engine(open_bundle(copy), "onnx-opt")


def test_onnx_providers_missing_from_the_build_are_named(exported: Path) -> None:
    options = EngineOptions(providers=("TensorrtExecutionProvider", "CPUExecutionProvider"))
    with pytest.raises(ClipHarError, match="TensorrtExecutionProvider are not in this"):
        create_engine(open_bundle(exported), "onnx", options)
    with pytest.raises(ClipHarError, match="needs onnxruntime-gpu"):
        create_engine(open_bundle(exported), "onnx", EngineOptions(device="cuda"))
    cpu = EngineOptions(providers=("CPUExecutionProvider",), threads=1)
    assert create_engine(open_bundle(exported), "onnx", cpu).predict(
        np.zeros((1, 3, 64, 64), dtype=np.float32)
    ).shape == (1, 15)
