"""TensorRT export: the exported image ONNX (``pixels`` -> ``probabilities`` + ``embeddings``)
built into a serialized engine for the GPU it runs on.

Precision by TensorRT version (10 and 11): docs/export.md#tensorrt.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clip_har.errors import ClipHarError, TensorRTError
from clip_har.inference.signature import IMAGE_INPUT, IMAGE_OUTPUTS
from clip_har.inference.tensorrt_engine import (
    make_trt_logger,
    require_tensorrt,
)
from clip_har.inference.tensorrt_engine import (
    tensorrt_unavailable_reason as _unavailable_reason,
)
from clip_har.io import atomic_write, noun_form, plural

__all__ = [
    "OnnxImageModel",
    "build_tensorrt_engine",
    "inspect_onnx",
    "tensorrt_unavailable_reason",
]

log = logging.getLogger(__name__)

Precision = Literal["fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp16", "int8")
# ONNX Runtime integer ops (dynamic quantisation, QOperator format) TensorRT cannot parse.
_INTEGER_OPS = frozenset(
    {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv"}
)
_GIB = 1 << 30


def tensorrt_unavailable_reason() -> str | None:
    """``None`` when a CUDA device and the ``tensorrt`` package are usable; otherwise a
    message starting "TensorRT export needs CUDA + TensorRT:" naming what is missing."""
    return _unavailable_reason("export")


@dataclass(frozen=True)
class OnnxImageModel:
    """What the TensorRT build needs to know about an exported image ONNX."""

    height: int
    width: int
    outputs: tuple[str, ...]
    quantized: bool  # has Q/DQ nodes: explicit quantization
    float16: bool  # has fp16 weights: already converted for strong typing


def inspect_onnx(onnx_path: Path) -> OnnxImageModel:
    """Check that ``onnx_path`` is an image model TensorRT can build (input ``pixels``
    ``[N, 3, H, W]`` with static H and W, outputs ``probabilities`` and ``embeddings``,
    no ONNX Runtime integer ops, int8 Q/DQ with zero points of 0) and describe it."""
    import onnx
    from onnx import TensorProto, numpy_helper

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ClipHarError(f"ONNX model not found: {onnx_path}")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and others for a bad file
        raise ClipHarError(f"{onnx_path} is not a readable ONNX model ({error})") from error
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if [value.name for value in inputs] != [IMAGE_INPUT]:
        raise ClipHarError(
            f"{onnx_path} has inputs {[value.name for value in inputs]}; a TensorRT image "
            f"engine needs exactly one input '{IMAGE_INPUT}' [N, 3, H, W]"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    sizes = [dim.dim_value if dim.HasField("dim_value") else None for dim in dims]
    if len(sizes) != 4 or sizes[1] != 3 or not sizes[2] or not sizes[3]:
        shown = ["?" if size is None else size for size in sizes]
        raise ClipHarError(
            f"{onnx_path}: input '{IMAGE_INPUT}' has shape {shown}; TensorRT needs "
            "[N, 3, H, W] with fixed H and W (only the batch N may be dynamic)"
        )
    outputs = tuple(value.name for value in graph.output)
    missing = [name for name in IMAGE_OUTPUTS if name not in outputs]
    if missing:
        raise ClipHarError(
            f"{onnx_path} lacks the {noun_form(len(missing), 'output')} {', '.join(missing)} "
            f"(it has {', '.join(outputs)}); "
            "export the image model with clip-har export first"
        )
    op_types = {node.op_type for node in graph.node}
    integer_ops = sorted(op_types & _INTEGER_OPS)
    if integer_ops:
        raise ClipHarError(
            f"{onnx_path} uses ONNX Runtime integer ops ({', '.join(integer_ops)}), which "
            "TensorRT cannot build: use the fp32 ONNX (fp16) or a static int8 QDQ ONNX (int8)"
        )
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zero_point = initializers.get(node.input[2])
        if zero_point is None:
            continue
        if zero_point.data_type == TensorProto.UINT8 or np.any(
            numpy_helper.to_array(zero_point) != 0
        ):
            raise ClipHarError(
                f"{onnx_path}: {node.op_type} '{node.name}' has an asymmetric or unsigned "
                "zero point; TensorRT only runs symmetric signed int8 Q/DQ (int8, zero point "
                "0). Quantise with activation_type=QInt8, weight_type=QInt8 and "
                "extra_options={'ActivationSymmetric': True, 'WeightSymmetric': True}"
            )
    return OnnxImageModel(
        height=int(sizes[2]),
        width=int(sizes[3]),
        outputs=outputs,
        quantized=bool(op_types & {"QuantizeLinear", "DequantizeLinear"}),
        float16=any(init.data_type == TensorProto.FLOAT16 for init in graph.initializer),
    )


def _check_arguments(
    precision: str,
    batch_sizes: tuple[int, int, int],
    workspace_gib: float,
    calibration: np.ndarray | None,
    model: OnnxImageModel,
) -> None:
    if precision not in PRECISIONS:
        raise ClipHarError(
            f"unknown TensorRT precision '{precision}' (use {' or '.join(PRECISIONS)})"
        )
    if len(batch_sizes) != 3 or not 1 <= batch_sizes[0] <= batch_sizes[1] <= batch_sizes[2]:
        raise ClipHarError(
            f"batch sizes must be (min, opt, max) with 1 <= min <= opt <= max, got {batch_sizes}"
        )
    if workspace_gib <= 0:
        raise ClipHarError(f"the TensorRT workspace must be positive, got {workspace_gib} GiB")
    if calibration is not None:
        expected = (3, model.height, model.width)
        if (
            calibration.ndim != 4
            or tuple(calibration.shape[1:]) != expected
            or not calibration.size
        ):
            raise ClipHarError(
                f"calibration pixels must be [N, {', '.join(map(str, expected))}] with N >= 1, "
                f"got {list(calibration.shape)}"
            )


def _write_atomic(path: Path, data: Any) -> None:
    """Write bytes (or a buffer such as ``IHostMemory``) so readers never see half a file."""
    with atomic_write(path) as staging, staging.open("wb") as handle:
        handle.write(data)


def _entropy_calibrator(
    trt: Any, pixels: np.ndarray | None, batch_size: int, cache: Path | None
) -> Any:
    """A TensorRT 10 ``IInt8EntropyCalibrator2`` over ``pixels`` in batches of
    ``batch_size``, reading and writing the calibration ``cache`` when one is given."""
    import torch

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            images = np.empty((0,), np.float32) if pixels is None else pixels
            self.batches = [
                np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)
                for i in range(0, len(images) - batch_size + 1, batch_size)
            ]
            self.index = 0
            self.buffer = (
                torch.empty((batch_size, *images.shape[1:]), dtype=torch.float32, device="cuda")
                if self.batches
                else None
            )

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.buffer is None or self.index >= len(self.batches):
                return None
            self.buffer.copy_(torch.from_numpy(self.batches[self.index]))
            torch.cuda.synchronize()
            self.index += 1
            log.info("TensorRT int8 calibration batch %d/%d", self.index, len(self.batches))
            return [int(self.buffer.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            if cache is not None and cache.is_file():
                log.info("using the TensorRT calibration cache %s", cache)
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: Any) -> None:
            if cache is not None:
                _write_atomic(cache, bytes(data))
                log.info("wrote the TensorRT calibration cache %s", cache)

    return _Calibrator()


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> Any:
    """The TensorRT network for ``onnx_path``; parser errors are listed, node by node."""
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(
            f"TensorRT {trt.__version__} could not parse {onnx_path}:\n  "
            + "\n  ".join(errors or logger.errors or ["(no parser message)"])
        )
    return network, parser


def build_tensorrt_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    precision: Literal["fp16", "int8"] = "fp16",
    calibration: np.ndarray | None = None,
    calibration_cache: Path | None = None,
    batch_sizes: tuple[int, int, int] = (1, 8, 32),
    workspace_gib: float = 4.0,
) -> dict[str, str | int | float | bool]:
    """Build ``onnx_path`` into a serialized TensorRT engine at ``engine_path`` (written
    atomically) with one optimisation profile over ``batch_sizes`` (min, opt, max) and
    return the details to record in the manifest. Raises :class:`TensorRTUnavailableError`
    first when this machine has no CUDA GPU or no TensorRT."""
    require_tensorrt("export")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    model = inspect_onnx(onnx_path)
    _check_arguments(precision, batch_sizes, workspace_gib, calibration, model)
    import tensorrt as trt
    import torch

    weak_typing = hasattr(trt.BuilderFlag, "FP16")  # removed in TensorRT 11 (strong typing)
    implicit_int8 = hasattr(trt, "IInt8EntropyCalibrator2") and hasattr(trt.BuilderFlag, "INT8")
    quantization = "none"
    if precision == "int8" and model.quantized:
        quantization = "explicit-qdq"
        if calibration is not None:
            log.info("int8 scales come from the ONNX Q/DQ nodes; calibration images are unused")
    elif precision == "int8":
        if not implicit_int8:
            raise TensorRTError(
                f"TensorRT {trt.__version__} has no implicit INT8 calibration (deprecated in "
                "10.1, removed in 11): int8 needs a QDQ ONNX (explicit quantization). Build "
                "from the static int8 QDQ export (symmetric, signed int8) instead of "
                f"{onnx_path.name}"
            )
        if calibration is None and (calibration_cache is None or not calibration_cache.is_file()):
            raise ClipHarError(
                "int8 TensorRT calibration needs calibration images (pixels) or an existing "
                "calibration cache"
            )
        quantization = "calibrated"
    minimum, optimum, maximum = batch_sizes
    shape = (3, model.height, model.width)
    logger = make_trt_logger(trt)
    with tempfile.TemporaryDirectory(prefix="clip-har-trt-") as work:
        source = onnx_path
        if precision == "fp16" and not weak_typing and not model.float16:
            from clip_har.export.quantize import convert_fp16

            source = Path(work) / "model-fp16.onnx"
            log.info("converting %s to fp16 for a strongly typed TensorRT build", onnx_path)
            convert_fp16(onnx_path, source)
        builder = trt.Builder(logger)
        network, _parser = _parse(trt, builder, logger, source)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * _GIB))
        profile = builder.create_optimization_profile()
        profile.set_shape(IMAGE_INPUT, (minimum, *shape), (optimum, *shape), (maximum, *shape))
        config.add_optimization_profile(profile)
        calibrator = None
        if weak_typing and (precision == "fp16" or quantization != "none"):
            config.set_flag(trt.BuilderFlag.FP16)  # layers left in float may use fp16
        if weak_typing and quantization != "none":
            config.set_flag(trt.BuilderFlag.INT8)
        if quantization == "calibrated":
            images = 0 if calibration is None else len(calibration)
            calibration_batch = min(optimum, images) if images else optimum
            if images % calibration_batch:
                log.info(
                    "int8 calibration uses %d of %s (whole batches of %d)",
                    images - images % calibration_batch,
                    plural(images, "image"),
                    calibration_batch,
                )
            calibrator = _entropy_calibrator(trt, calibration, calibration_batch, calibration_cache)
            config.int8_calibrator = calibrator
            calibration_profile = builder.create_optimization_profile()
            fixed = (calibration_batch, *shape)
            calibration_profile.set_shape(IMAGE_INPUT, fixed, fixed, fixed)
            config.set_calibration_profile(calibration_profile)
        log.info(
            "building a %s TensorRT %s engine from %s (batch %d/%d/%d)",
            precision,
            trt.__version__,
            source.name,
            minimum,
            optimum,
            maximum,
        )
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            detail = "\n  ".join(logger.errors) or "see the TensorRT log above"
            raise TensorRTError(
                f"TensorRT {trt.__version__} could not build {onnx_path.name} ({precision}):\n  "
                + detail
            )
        _write_atomic(engine_path, serialized)
    major, minor = torch.cuda.get_device_capability()
    details: dict[str, str | int | float | bool] = {
        "tensorrt": str(trt.__version__),
        "precision": precision,
        "min_batch": minimum,
        "opt_batch": optimum,
        "max_batch": maximum,
        "device": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
        "strongly_typed": not weak_typing,
        "quantization": quantization,
        "workspace_gib": float(workspace_gib),
    }
    if quantization == "calibrated":
        details["calibration_images"] = 0 if calibration is None else len(calibration)
    log.info("wrote TensorRT engine %s (%s)", engine_path, details)
    return details
