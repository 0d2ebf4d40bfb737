"""TensorRT engine: a serialized TensorRT plan (``model.plan``) run on one CUDA GPU.

Imports neither ``tensorrt`` nor ``torch`` at import time; :func:`tensorrt_unavailable_reason`
says what is missing. See docs/inference.md#tensorrt.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clip_har.errors import TensorRTError, TensorRTUnavailableError
from clip_har.inference.signature import IMAGE_INPUT, IMAGE_OUTPUTS
from clip_har.io import plural

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MIN_TENSORRT_MAJOR = 10  # the name-based tensor API (set_tensor_address / execute_async_v3)


def _install_hint(torch_cuda: str | None) -> str:
    """The pip command for the TensorRT wheel that matches the CUDA build of torch."""
    if torch_cuda and torch_cuda.split(".")[0] == "13":
        return "pip install tensorrt-cu13"
    if torch_cuda and torch_cuda.split(".")[0] == "12":
        return "pip install tensorrt-cu12"
    return "pip install tensorrt-cu12, or tensorrt-cu13 for CUDA 13"


def tensorrt_unavailable_reason(purpose: str = "inference") -> str | None:
    """``None`` when a CUDA device and a usable ``tensorrt`` (10 or newer) are present;
    otherwise one sentence that starts with ``"TensorRT <purpose> needs CUDA + TensorRT:"``
    and names everything that is missing."""
    missing: list[str] = []
    torch_cuda: str | None = None
    try:
        import torch

        torch_cuda = torch.version.cuda
        if not torch.cuda.is_available():
            if torch_cuda is None:
                missing.append(
                    f"no CUDA device (this PyTorch {torch.__version__} is a CPU-only build; "
                    "install a CUDA build of torch on a machine with an NVIDIA GPU)"
                )
            else:
                missing.append(
                    f"no CUDA device (PyTorch {torch.__version__} is built for CUDA {torch_cuda} "
                    "but torch.cuda.is_available() is False: no NVIDIA GPU or driver is visible)"
                )
    except ImportError:
        missing.append("no CUDA device (PyTorch is not installed)")
    if importlib.util.find_spec("tensorrt") is None:
        missing.append(f"the tensorrt package is not installed ({_install_hint(torch_cuda)})")
    else:
        try:
            import tensorrt as trt
        except (ImportError, OSError) as error:
            missing.append(
                f"the tensorrt package is installed but cannot load ({error}); reinstall the "
                f"wheel that matches your CUDA ({_install_hint(torch_cuda)})"
            )
        else:
            version = str(getattr(trt, "__version__", "0"))
            major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
            if major < MIN_TENSORRT_MAJOR:
                missing.append(
                    f"TensorRT {version} is too old (need {MIN_TENSORRT_MAJOR} or newer: "
                    f"{_install_hint(torch_cuda)})"
                )
    if not missing:
        return None
    return f"TensorRT {purpose} needs CUDA + TensorRT: " + "; ".join(missing)


def require_tensorrt(purpose: str = "inference") -> None:
    """Raise :class:`TensorRTUnavailableError` naming what is missing, if anything is."""
    reason = tensorrt_unavailable_reason(purpose)
    if reason is not None:
        raise TensorRTUnavailableError(reason)


def make_trt_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards TensorRT's messages to :mod:`logging` and keeps the
    errors (``.errors``), so a failure can be reported with TensorRT's own explanation."""

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.WARNING:
                log.warning("TensorRT: %s", msg)
            elif severity == trt.ILogger.INFO:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def torch_dtype(trt: Any, data_type: Any) -> torch.dtype:
    """The torch dtype of a TensorRT ``DataType`` (float32, float16, int8, int32, ...)."""
    import torch

    try:
        numpy_type = np.dtype(trt.nptype(data_type))
    except TypeError as error:
        raise TensorRTError(f"TensorRT tensor type {data_type} has no numpy equivalent") from error
    return torch.from_numpy(np.empty(0, dtype=numpy_type)).dtype


class TensorRTEngine:
    """Runs a serialized TensorRT plan on CUDA device ``device``; batches larger than the
    plan's maximum profile batch are split into chunks. Thread-safe (one call at a time)."""

    format = "tensorrt"

    def __init__(self, path: Path, device: int = 0) -> None:
        require_tensorrt("inference")
        import tensorrt as trt
        import torch

        path = Path(path)
        if not path.is_file():
            raise TensorRTError(f"TensorRT engine file not found: {path}")
        count = torch.cuda.device_count()
        if not 0 <= device < count:
            raise TensorRTError(
                f"CUDA device {device} does not exist (this machine has "
                f"{plural(count, 'CUDA device')})"
            )
        self.path = path
        self.device = torch.device("cuda", device)
        self.device_name = torch.cuda.get_device_name(device)
        self._logger = make_trt_logger(trt)
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                detail = f" ({self._logger.errors[-1]})" if self._logger.errors else ""
                raise TensorRTError(
                    f"{path} is not a TensorRT engine that TensorRT {trt.__version__} can load "
                    f"on {self.device_name}{detail}. Engines only run with the TensorRT version "
                    "and GPU model they were built with: rebuild it on this machine "
                    "(clip-har export --format tensorrt)."
                )
            self._engine = engine
            self._check_io(trt, engine)
            minimum, _, maximum = engine.get_tensor_profile_shape(IMAGE_INPUT, 0)
            self.min_batch = max(1, int(minimum[0]))
            self.max_batch = int(maximum[0])
            self.image_shape = (int(maximum[1]), int(maximum[2]), int(maximum[3]))
            self._context = engine.create_execution_context()
            if self._context is None:
                raise TensorRTError(
                    f"TensorRT could not create an execution context for {path} on "
                    f"{self.device_name} (out of GPU memory?)"
                )
            self._stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
            self._input = torch.empty(
                (self.max_batch, *self.image_shape),
                dtype=torch_dtype(trt, engine.get_tensor_dtype(IMAGE_INPUT)),
                device=self.device,
            )
            self._context.set_tensor_address(IMAGE_INPUT, self._input.data_ptr())
            self._outputs: dict[str, torch.Tensor] = {}
            for name in IMAGE_OUTPUTS:
                width = int(engine.get_tensor_shape(name)[1])
                self._outputs[name] = torch.empty(
                    (self.max_batch, width),
                    dtype=torch_dtype(trt, engine.get_tensor_dtype(name)),
                    device=self.device,
                )
                self._context.set_tensor_address(name, self._outputs[name].data_ptr())
        self._lock = threading.Lock()
        log.info(
            "loaded TensorRT engine %s on %s (batch %d..%d, input %s)",
            path,
            self.device_name,
            self.min_batch,
            self.max_batch,
            self.image_shape,
        )

    def _check_io(self, trt: Any, engine: Any) -> None:
        """The plan must have exactly the image-model tensors every engine relies on."""
        modes = {
            engine.get_tensor_name(i): engine.get_tensor_mode(engine.get_tensor_name(i))
            for i in range(engine.num_io_tensors)
        }
        inputs = sorted(n for n, mode in modes.items() if mode == trt.TensorIOMode.INPUT)
        outputs = sorted(n for n, mode in modes.items() if mode == trt.TensorIOMode.OUTPUT)
        if inputs != [IMAGE_INPUT] or not set(IMAGE_OUTPUTS) <= set(outputs):
            raise TensorRTError(
                f"{self.path} is not a CLIP-HAR image engine: it has inputs {inputs} and "
                f"outputs {outputs}, expected input '{IMAGE_INPUT}' and outputs "
                f"{', '.join(repr(n) for n in IMAGE_OUTPUTS)}"
            )

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities [N, C], embeddings [N, D])`` as float32 numpy arrays."""
        batch = np.ascontiguousarray(pixels, dtype=np.float32)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.image_shape:
            raise TensorRTError(
                f"pixels must be [N, {', '.join(map(str, self.image_shape))}] for this engine, "
                f"got {list(batch.shape)}"
            )
        if len(batch) == 0:
            probabilities, embeddings = (
                np.zeros((0, int(self._outputs[name].shape[1])), dtype=np.float32)
                for name in IMAGE_OUTPUTS
            )
            return probabilities, embeddings
        step = self.max_batch
        chunks = [self._run_chunk(batch[i : i + step]) for i in range(0, len(batch), step)]
        probabilities = np.concatenate([c[0] for c in chunks])
        embeddings = np.concatenate([c[1] for c in chunks])
        return probabilities, embeddings

    def _run_chunk(self, chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One call of the plan on at most ``max_batch`` images (padded up to ``min_batch``)."""
        import torch

        count = len(chunk)
        if count < self.min_batch:
            pad = np.repeat(chunk[-1:], self.min_batch - count, axis=0)
            chunk = np.concatenate([chunk, pad])
        rows = len(chunk)
        with self._lock, torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            self._input[:rows].copy_(torch.from_numpy(chunk))
            if not self._context.set_input_shape(IMAGE_INPUT, (rows, *self.image_shape)):
                raise TensorRTError(
                    f"TensorRT rejected batch shape {[rows, *self.image_shape]} "
                    f"(engine profile allows batch {self.min_batch}..{self.max_batch})"
                )
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                detail = f": {self._logger.errors[-1]}" if self._logger.errors else ""
                raise TensorRTError(f"TensorRT inference failed on {self.device_name}{detail}")
            probabilities, embeddings = (
                self._outputs[name][:count].float().cpu() for name in IMAGE_OUTPUTS
            )
            self._stream.synchronize()
        return probabilities.numpy(), embeddings.numpy()

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, C]`` (float32)."""
        return self.run(pixels)[0]
