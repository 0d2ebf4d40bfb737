"""TensorRT export and engine: clear errors where CUDA/TensorRT are missing, the ONNX checks
the build relies on, and (only where a GPU and TensorRT exist) a real build and run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clip_har.errors import ClipHarError, TensorRTUnavailableError
from clip_har.export.tensorrt import (
    build_tensorrt_engine,
    inspect_onnx,
    tensorrt_unavailable_reason,
)
from clip_har.inference.tensorrt_engine import TensorRTEngine

pytestmark = pytest.mark.filterwarnings(
    "ignore:You are using the legacy TorchScript-based ONNX export",
    "ignore:The feature will be removed",
)
SIZE = 16
CLASSES = 5
HAS_TENSORRT = tensorrt_unavailable_reason() is None
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason=str(tensorrt_unavailable_reason()))
without_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="this machine has CUDA + TensorRT")


class TinyImageModel(nn.Module):
    """pixels -> (probabilities, embeddings), the contract of every exported image model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 8, kernel_size=4, stride=4)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = nn.functional.normalize(self.patch(pixels).relu().mean(dim=(2, 3)), dim=-1)
        return self.head(embeddings).softmax(dim=-1), embeddings


def export_onnx(
    path: Path,
    *,
    outputs: tuple[str, str] = ("probabilities", "embeddings"),
    dynamic_size: bool = False,
) -> Path:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    torch.onnx.export(
        TinyImageModel().eval(),
        (torch.randn(2, 3, SIZE, SIZE),),
        str(path),
        input_names=["pixels"],
        output_names=list(outputs),
        dynamic_axes={"pixels": axes, outputs[0]: {0: "batch"}, outputs[1]: {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def pixels(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 3, SIZE, SIZE)).astype(np.float32)


class _Reader:
    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter([{"pixels": images[i : i + 4]} for i in range(0, len(images), 4)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_qdq(source: Path, target: Path, *, symmetric: bool) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(source),
        str(target),
        _Reader(pixels(16)),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={
            "ActivationSymmetric": symmetric,
            "WeightSymmetric": True,
            "QuantizeBias": False,  # int32 bias Q/DQ is an ONNX Runtime idiom, not TensorRT's
        },
    )
    return target


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tmp_path_factory.mktemp("trt") / "model.onnx")


# --- on a machine without CUDA or TensorRT: say what is missing, build nothing -------------


@without_tensorrt
def test_unavailable_reason_names_what_is_missing() -> None:
    reason = tensorrt_unavailable_reason()
    assert reason is not None
    assert reason.startswith("TensorRT export needs CUDA + TensorRT:")
    if not torch.cuda.is_available():
        assert "no CUDA device" in reason
    if importlib.util.find_spec("tensorrt") is None:
        assert "the tensorrt package is not installed" in reason
        assert "pip install tensorrt-cu1" in reason


@without_tensorrt
def test_build_raises_unavailable_and_writes_no_engine(onnx_model: Path, tmp_path: Path) -> None:
    engine_path = tmp_path / "exports" / "model.engine"
    with pytest.raises(TensorRTUnavailableError) as raised:
        build_tensorrt_engine(onnx_model, engine_path, precision="fp16")
    assert str(raised.value) == tensorrt_unavailable_reason()
    assert isinstance(raised.value, ClipHarError)  # the CLI prints "error: ..." and exits 1
    assert not engine_path.exists()
    assert not engine_path.parent.exists()
    with pytest.raises(TensorRTUnavailableError):
        build_tensorrt_engine(onnx_model, engine_path, precision="int8", calibration=pixels(4))
    assert not engine_path.exists()


@without_tensorrt
def test_engine_raises_the_same_clear_error(tmp_path: Path) -> None:
    engine_path = tmp_path / "model.engine"
    engine_path.write_bytes(b"not an engine")
    with pytest.raises(TensorRTUnavailableError) as raised:
        TensorRTEngine(engine_path)
    message = str(raised.value)
    assert message.startswith("TensorRT inference needs CUDA + TensorRT:")
    assert message.removeprefix("TensorRT inference") == str(
        tensorrt_unavailable_reason()
    ).removeprefix("TensorRT export")


# --- the ONNX checks the build relies on (no GPU needed) -----------------------------------


def test_inspect_reads_the_image_size_of_a_plain_model(onnx_model: Path) -> None:
    model = inspect_onnx(onnx_model)
    assert (model.height, model.width) == (SIZE, SIZE)
    assert set(model.outputs) == {"probabilities", "embeddings"}
    assert not model.quantized
    assert not model.float16


def test_inspect_recognises_symmetric_int8_qdq(onnx_model: Path, tmp_path: Path) -> None:
    model = inspect_onnx(quantize_qdq(onnx_model, tmp_path / "qdq.onnx", symmetric=True))
    assert model.quantized


def test_inspect_rejects_unsigned_qdq_tensorrt_cannot_run(onnx_model: Path, tmp_path: Path) -> None:
    qdq = quantize_qdq(onnx_model, tmp_path / "qdq-u8.onnx", symmetric=False)
    with pytest.raises(ClipHarError, match="symmetric signed int8"):
        inspect_onnx(qdq)


def test_inspect_rejects_onnx_runtime_integer_ops(onnx_model: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(onnx_model), str(target), weight_type=QuantType.QInt8)
    with pytest.raises(ClipHarError, match="integer ops"):
        inspect_onnx(target)


def test_inspect_sees_an_fp16_conversion(onnx_model: Path, tmp_path: Path) -> None:
    from clip_har.export.quantize import convert_fp16

    target = tmp_path / "fp16.onnx"
    convert_fp16(onnx_model, target)
    assert inspect_onnx(target).float16


def test_inspect_names_a_missing_output(tmp_path: Path) -> None:
    path = export_onnx(tmp_path / "wrong.onnx", outputs=("probabilities", "features"))
    with pytest.raises(ClipHarError, match=r"lacks the outputs? "):
        inspect_onnx(path)


def test_inspect_needs_a_fixed_image_size(tmp_path: Path) -> None:
    path = export_onnx(tmp_path / "dynamic-size.onnx", dynamic_size=True)
    with pytest.raises(ClipHarError, match="fixed H and W"):
        inspect_onnx(path)


def test_inspect_explains_a_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ClipHarError, match="not found"):
        inspect_onnx(tmp_path / "absent.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x00garbage")
    with pytest.raises(ClipHarError, match="not a readable ONNX model"):
        inspect_onnx(broken)


# --- on a CUDA machine with TensorRT: a real build and run ----------------------------------


def _onnxruntime_outputs(path: Path, images: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(["probabilities", "embeddings"], {"pixels": images}))


@needs_tensorrt
def test_fp16_engine_matches_onnxruntime_and_splits_big_batches(
    onnx_model: Path, tmp_path: Path
) -> None:
    engine_path = tmp_path / "model.engine"
    details = build_tensorrt_engine(onnx_model, engine_path, batch_sizes=(1, 2, 4))
    assert engine_path.is_file()
    assert (details["min_batch"], details["opt_batch"], details["max_batch"]) == (1, 2, 4)
    assert details["precision"] == "fp16"
    engine = TensorRTEngine(engine_path)
    images = pixels(10, seed=1)  # more than max_batch: split into 4 + 4 + 2
    probabilities, embeddings = engine.run(images)
    expected_probabilities, expected_embeddings = _onnxruntime_outputs(onnx_model, images)
    assert probabilities.dtype == np.float32 and probabilities.shape == (10, CLASSES)
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-2)
    np.testing.assert_allclose(embeddings, expected_embeddings, atol=1e-2)
    np.testing.assert_array_equal(engine.predict(images), probabilities)
    assert engine.run(images[:0])[0].shape == (0, CLASSES)


@needs_tensorrt
def test_int8_engine_from_qdq_onnx(onnx_model: Path, tmp_path: Path) -> None:
    qdq = quantize_qdq(onnx_model, tmp_path / "qdq.onnx", symmetric=True)
    engine_path = tmp_path / "int8.engine"
    details = build_tensorrt_engine(qdq, engine_path, precision="int8", batch_sizes=(1, 4, 8))
    assert details["quantization"] == "explicit-qdq"
    images = pixels(6, seed=2)
    probabilities = TensorRTEngine(engine_path).predict(images)
    expected = _onnxruntime_outputs(onnx_model, images)[0]
    assert np.abs(probabilities - expected).max() < 0.1


@needs_tensorrt
def test_engine_rejects_a_file_that_is_not_an_engine(tmp_path: Path) -> None:
    path = tmp_path / "bogus.engine"
    path.write_bytes(b"not an engine")
    with pytest.raises(ClipHarError, match="rebuild it on this machine"):
        TensorRTEngine(path)
