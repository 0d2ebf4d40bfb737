"""The torch format's compute precision: fp32 is the reference, bf16 autocast is close to it,
and a precision that cannot apply is refused instead of ignored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from clip_har.errors import UsageError
from clip_har.inference.engines import create_engine
from clip_har.inference.formats import EngineOptions
from clip_har.inference.predictor import Predictor
from clip_har.models.bundle import open_bundle


def test_bf16_probabilities_stay_close_to_fp32(tiny_bundle: Path) -> None:
    fp32 = Predictor.from_bundle(tiny_bundle, "torch")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)) for _ in range(4)]
    pixels = fp32.preprocessor.batch(images)
    reference = fp32.engine.predict(pixels)
    options = EngineOptions(precision="bf16")
    bf16 = Predictor.from_bundle(tiny_bundle, "torch", engine_options=options).engine.predict(
        pixels
    )
    assert bf16.dtype == np.float32 and bf16.shape == reference.shape
    np.testing.assert_allclose(bf16.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(bf16, reference, atol=0.05)  # bf16 keeps ~3 significant digits


def test_fp16_on_a_cpu_is_refused(tiny_bundle: Path) -> None:
    with pytest.raises(UsageError, match="CUDA"):
        create_engine(open_bundle(tiny_bundle), "torch", EngineOptions(precision="fp16"))


def test_a_precision_for_an_export_is_refused_not_ignored(tiny_onnx_bundle: Path) -> None:
    with pytest.raises(UsageError, match="torch format only"):
        create_engine(open_bundle(tiny_onnx_bundle), "onnx", EngineOptions(precision="bf16"))


def test_an_unknown_precision_names_the_choices() -> None:
    with pytest.raises(UsageError, match="fp32, bf16, fp16"):
        EngineOptions(precision="int4")


@pytest.mark.integration
def test_predict_runs_in_bf16_and_refuses_it_for_an_export(
    tiny_onnx_bundle: Path, photo_folder: Path
) -> None:
    ran = run_cli("predict", str(photo_folder), "-b", str(tiny_onnx_bundle), "--precision", "bf16")
    assert ran.returncode == 0, ran.stderr
    refused = run_cli(
        "predict", str(photo_folder), "-b", str(tiny_onnx_bundle), "--format", "onnx",
        "--precision", "bf16",
    )  # fmt: skip
    assert refused.returncode == 2 and "torch format only" in refused.stderr
    assert "Traceback" not in refused.stderr
