"""``clip-har export`` as a user runs it: artifacts, the TensorRT message on a CPU machine,
prediction through the exports, and clear errors for damaged files and bad requests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from clip_har.models.bundle import open_bundle

pytestmark = pytest.mark.integration


def _probabilities(stdout: str) -> np.ndarray:
    rows = sorted(json.loads(stdout), key=lambda row: row["path"])
    return np.array(
        [[item["score"] for item in sorted(r["top_k"], key=lambda i: i["label"])] for r in rows]
    )


def test_export_then_predict_through_the_exports(
    tiny_bundle: Path, photo_folder: Path, tmp_path: Path, clip_har_cache: Path
) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    done = run_cli(
        "export", str(bundle), "--formats", "onnx,onnx-int8,tensorrt,text-onnx",
        "--parity-data", str(photo_folder),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "TensorRT export needs CUDA + TensorRT" in done.stderr
    assert "5 real photos against torch fp32" in done.stdout
    exports = open_bundle(bundle).manifest.exports
    assert set(exports) == {"onnx", "onnx-int8", "text-onnx"}
    assert all(record.passed for record in exports.values())

    predictions = {}
    for model_format in ("torch", "onnx", "onnx-int8"):
        args = ("-b", str(bundle), "--format", model_format, "--print", "json", "-k", "15")
        predictions[model_format] = run_cli("predict", str(photo_folder), *args)
    assert all(p.returncode == 0 for p in predictions.values()), predictions
    reference = _probabilities(predictions["torch"].stdout)
    np.testing.assert_allclose(_probabilities(predictions["onnx"].stdout), reference, atol=1e-4)
    np.testing.assert_allclose(
        _probabilities(predictions["onnx-int8"].stdout), reference, atol=0.05
    )
    open_vocabulary = run_cli(
        "predict", str(photo_folder), "-b", str(bundle), "--format", "onnx",
        "--labels", "dancing,cooking", "--print", "json",
    )  # fmt: skip
    assert open_vocabulary.returncode == 0, open_vocabulary.stderr
    assert {row["label"] for row in json.loads(open_vocabulary.stdout)} <= {"dancing", "cooking"}

    model = bundle / "exports" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-100])
    truncated = run_cli("predict", str(photo_folder), "-b", str(bundle), "--format", "onnx")
    assert truncated.returncode == 1
    assert "corrupt or truncated" in truncated.stderr and "clip-har export" in truncated.stderr


def test_bad_export_requests_are_clear_errors(
    tiny_bundle: Path, tmp_path: Path, clip_har_cache: Path
) -> None:
    missing = run_cli("export", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "bundle directory not found" in missing.stderr
    unknown = run_cli("export", str(tiny_bundle), "--formats", "onnx,coreml")
    assert unknown.returncode == 2 and "unknown export format coreml" in unknown.stderr
    method = run_cli("export", str(tiny_bundle), "--calibration-method", "mode")
    assert method.returncode == 2 and "'mode'" in method.stderr and "minmax" in method.stderr
    no_bundle = run_cli("predict", str(tmp_path), "--format", "onnx")
    assert no_bundle.returncode == 2 and "--format onnx runs a bundle's export" in no_bundle.stderr
    assert not (tiny_bundle / "exports").exists()
