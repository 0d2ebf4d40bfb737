"""Reduced-precision ONNX artifacts: int8 dynamic (weights), int8 static QDQ calibrated on
images, and fp16 for GPUs — all with ONNX Runtime's own tools."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from clip_har.config import CALIBRATION_METHODS, CalibrationName
from clip_har.errors import ClipHarError
from clip_har.inference.signature import IMAGE_INPUT

log = logging.getLogger(__name__)

_FLOAT = 1  # onnx.TensorProto.FLOAT: the type of tensors shape inference cannot name
_CALIBRATION_BATCH = 8


@contextmanager
def _prepared(source: Path) -> Iterator[Path]:
    """The model after ONNX Runtime's quantisation pre-processing (shape inference and
    graph clean-up), in a temporary file."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="clip-har-quant-") as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        yield prepared


def quantize_dynamic_int8(source: Path, target: Path) -> dict[str, str | bool]:
    """int8 weights, activations quantised on the fly. Only MatMuls with constant weights are
    quantised: an int8 patch-embedding Conv (``ConvInteger``) is slower than fp32 on CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _prepared(source) as prepared:
        quantize_dynamic(
            prepared,
            target,
            weight_type=QuantType.QInt8,
            per_channel=False,
            op_types_to_quantize=["MatMul"],
            extra_options={"DefaultTensorType": _FLOAT, "MatMulConstBOnly": True},
        )
    return {"method": "dynamic", "weights": "int8", "per_channel": False}


class _PixelReader:
    """Feeds calibration pixels to ONNX Runtime's calibrator in small batches."""

    def __init__(self, pixels: np.ndarray) -> None:
        self._batches = iter(
            [pixels[i : i + _CALIBRATION_BATCH] for i in range(0, len(pixels), _CALIBRATION_BATCH)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {IMAGE_INPUT: np.ascontiguousarray(batch)}


def quantize_static_int8(
    source: Path, target: Path, pixels: np.ndarray, method: CalibrationName = "minmax"
) -> dict[str, str | int | bool]:
    """Symmetric int8 QDQ (weights per channel, activations per tensor) with activation
    ranges calibrated on ``pixels`` by MinMax, Entropy or Percentile; TensorRT builds this
    graph as explicit quantization."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if method not in CALIBRATION_METHODS:
        raise ClipHarError(
            f"unknown calibration method '{method}' (use {', '.join(CALIBRATION_METHODS)})"
        )
    if len(pixels) == 0:
        raise ClipHarError("static int8 quantisation needs at least one calibration image")
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    with _prepared(source) as prepared:
        quantize_static(
            prepared,
            target,
            _PixelReader(pixels.astype(np.float32)),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate,
            extra_options={
                "DefaultTensorType": _FLOAT,
                "MatMulConstBOnly": True,
                # symmetric signed int8 everywhere: the only Q/DQ form TensorRT builds
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
            },
        )
    return {"method": "static-qdq", "calibration": method, "calibration_images": len(pixels)}


def convert_fp16(source: Path, target: Path) -> dict[str, str | bool]:
    """fp16 weights and compute with fp32 inputs/outputs (for CUDA and TensorRT providers)."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(source)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(target))
    return {"weights": "fp16", "io": "fp32"}
