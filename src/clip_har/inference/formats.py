"""The format registry: one :class:`FormatSpec` per exported artifact format.

Torch-free: importing this module loads no runtime, so the CLI can build its help from it.
See docs/inference.md#the-format-registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from clip_har.devices import parse_device
from clip_har.errors import BundleError, ClipHarError, RegistryError, UsageError
from clip_har.inference.signature import IMAGE_SIGNATURE, TEXT_SIGNATURE, Signature
from clip_har.io import noun_form

if TYPE_CHECKING:
    from clip_har.models.bundle import Bundle

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
Runtime = Literal["onnxruntime", "torchscript", "tensorrt"]

REFERENCE_FORMAT = "torch"  # the bundle's own classifier, run eagerly: not an export
# compute precisions of the torch format (autocast); fp32 is the reference every export's
# parity is measured against, and an export's own precision is fixed when it is built
PRECISIONS = ("fp32", "bf16", "fp16")
TEXT_FORMAT = "text-onnx"  # the exported text encoder behind open-vocabulary ONNX engines
TOKENIZER_FILE = "tokenizer.json"
# what a registered version and the server run when no format is named, best first
SERVING_PREFERENCE = ("onnx-int8", "onnx")


class Engine(Protocol):
    """Anything that turns a batch of pixels into class probabilities."""

    format: str

    def predict(self, pixels: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class EngineOptions:
    """Runtime settings shared by every engine."""

    threads: int | None = None  # intra-op threads; None = the runtime's default (all cores)
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    force: bool = False  # accept exports that failed (or never ran) their parity gate
    # ONNX Runtime providers in priority order, e.g. ("TensorrtExecutionProvider",
    # "CUDAExecutionProvider", "CPUExecutionProvider"); empty = chosen from ``device``
    providers: tuple[str, ...] = ()
    precision: str = "fp32"  # the torch format's compute precision, one of PRECISIONS

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ClipHarError(f"threads must be at least 1, got {self.threads}")
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"unknown precision '{self.precision}' (choose from {', '.join(PRECISIONS)})"
            )
        # canonical name ("cuda:0", never " cuda"); raises UsageError naming the accepted ones
        object.__setattr__(self, "device", str(parse_device(self.device)))


# (artifact file, format name, options) -> engine; export's parity gate uses it too
ArtifactFactory = Callable[[Path, str, EngineOptions], Engine]


@dataclass(frozen=True)
class Requirement:
    """Something a format needs beyond the CPU install, and how to tell whether it is here:
    ``missing(purpose)`` is ``None`` when present, else a sentence naming what is missing
    (``purpose`` is ``"export"`` or ``"inference"``)."""

    name: str
    missing: Callable[[str], str | None]


@dataclass(frozen=True)
class FormatSpec:
    """One exported artifact format."""

    name: str
    file: str  # written to the bundle's exports/ folder
    # what it can be built in, the default first; the recorded one picks the parity gate
    precisions: tuple[Precision, ...]
    runtime: Runtime
    signature: Signature = IMAGE_SIGNATURE
    engine: ArtifactFactory | None = None  # None: not an image engine (the text encoder)
    companions: tuple[str, ...] = ()  # further files the exporter writes next to ``file``
    requires: tuple[Requirement, ...] = ()
    summary: str = ""  # how it is built, for `clip-har formats` and the docs table

    def __post_init__(self) -> None:
        if not self.name or self.name == REFERENCE_FORMAT or not self.precisions:
            raise RegistryError(f"invalid format spec: {self}")

    @property
    def is_image(self) -> bool:
        """Runs as an engine over pixels (``predict``, ``evaluate``, ``benchmark``)."""
        return self.engine is not None

    def unavailable_reason(self, purpose: str = "inference") -> str | None:
        """Why this machine cannot export or run the format, or ``None`` when it can."""
        reasons = [reason for need in self.requires if (reason := need.missing(purpose))]
        return "; ".join(reasons) or None


_FORMATS: dict[str, FormatSpec] = {}


def register_format(spec: FormatSpec) -> FormatSpec:
    """Add ``spec`` to the registry; names and files must be new."""
    if spec.name in _FORMATS:
        raise RegistryError(f"format '{spec.name}' is already registered")
    taken = {name for other in _FORMATS.values() for name in (other.file, *other.companions)}
    clash = sorted(taken & {spec.file, *spec.companions})
    if clash:
        raise RegistryError(
            f"format '{spec.name}': {noun_form(len(clash), 'file')} {', '.join(clash)} "
            "already taken"
        )
    _FORMATS[spec.name] = spec
    return spec


def registered_formats() -> tuple[FormatSpec, ...]:
    """Every registered format, in registration order."""
    return tuple(_FORMATS.values())


def format_names() -> tuple[str, ...]:
    """The names ``clip-har export --formats`` accepts."""
    return tuple(_FORMATS)


def engine_formats() -> tuple[str, ...]:
    """The names ``predict``, ``evaluate`` and ``benchmark`` accept: torch + image exports."""
    return (REFERENCE_FORMAT, *(spec.name for spec in _FORMATS.values() if spec.is_image))


RUNTIME_NAMES: dict[str, str] = {
    "onnxruntime": "ONNX Runtime",
    "torchscript": "TorchScript",
    "tensorrt": "TensorRT",
}


def format_rows() -> list[dict[str, str]]:
    """One row per registered format: what `clip-har formats` shows and the docs table holds."""
    return [
        {
            "format": spec.name,
            "file": " + ".join((spec.file, *spec.companions)),
            "precision": " / ".join(spec.precisions),
            "runtime": RUNTIME_NAMES.get(spec.runtime, spec.runtime),
            "needs": ", ".join(need.name for need in spec.requires),
            "how": spec.summary,
        }
        for spec in _FORMATS.values()
    ]


def formats_markdown() -> str:
    """The registry as a Markdown table (docs/export.md embeds it; a test keeps it current)."""
    rows = format_rows()
    head = list(rows[0])
    lines = [_markdown_row(head), "|" + "---|" * len(head)]
    for row in rows:
        cells = [row[key] for key in head]
        cells[0] = f"`{row['format']}`"
        cells[1] = " + ".join(f"`{name}`" for name in row["file"].split(" + "))
        lines.append(_markdown_row(cells))
    return "\n".join(lines) + "\n"


def _markdown_row(cells: list[str]) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def check_format_names(names: Sequence[str], choices: Sequence[str], what: str) -> list[str]:
    """``names`` stripped and de-duplicated, each one of ``choices``; otherwise a
    :class:`RegistryError` that lists the choices (``what`` names the list in the message)."""
    picked = list(dict.fromkeys(name.strip() for name in names if name.strip()))
    listed = ", ".join(choices)
    if not picked:
        raise RegistryError(f"no {what} given (choose from {listed})")
    unknown = [name for name in picked if name not in choices]
    if unknown:
        raise RegistryError(
            f"unknown {noun_form(len(unknown), what)} {', '.join(unknown)} (choose from {listed})"
        )
    return picked


def get_format(name: str) -> FormatSpec:
    """The spec of ``name``; an unknown name lists the registered ones."""
    spec = _FORMATS.get(name)
    if spec is None:
        raise RegistryError(f"unknown format '{name}' (registered: {', '.join(_FORMATS)})")
    return spec


# --- the built-in formats ----------------------------------------------------------------
# Engine factories import their runtime only when called.


def _onnx_engine(path: Path, format: str, options: EngineOptions) -> Engine:
    from clip_har.inference.onnx_engine import OnnxEngine

    return OnnxEngine(
        path, format, threads=options.threads, device=options.device, providers=options.providers
    )


def _torchscript_engine(path: Path, format: str, options: EngineOptions) -> Engine:
    from clip_har.inference.torchscript_engine import TorchScriptEngine

    return TorchScriptEngine(path, threads=options.threads, device=options.device)


def _tensorrt_engine(path: Path, format: str, options: EngineOptions) -> Engine:
    from clip_har.inference.tensorrt_engine import TensorRTEngine

    return TensorRTEngine(path, device=parse_device(options.device).cuda_index)


def _tensorrt_missing(purpose: str) -> str | None:
    from clip_har.inference.tensorrt_engine import tensorrt_unavailable_reason

    return tensorrt_unavailable_reason(purpose)


CUDA_TENSORRT = Requirement("CUDA + TensorRT", _tensorrt_missing)

for _spec in (
    FormatSpec(
        "onnx",
        "model.onnx",
        ("fp32",),
        "onnxruntime",
        engine=_onnx_engine,
        summary=(
            "`torch.onnx.export` (TorchScript-based exporter), opset ≥ 17, `onnx.checker` (full "
            "check)"
        ),
    ),
    FormatSpec(
        "onnx-opt",
        "model.opt.onnx",
        ("fp32",),
        "onnxruntime",
        engine=_onnx_engine,
        summary=(
            'ONNX Runtime transformer optimiser (`model_type="clip"`): fused `Attention`, '
            "`SkipLayerNormalization`, `QuickGelu`"
        ),
    ),
    FormatSpec(
        "onnx-int8",
        "model.int8.onnx",
        ("int8",),
        "onnxruntime",
        engine=_onnx_engine,
        summary=(
            "ORT dynamic quantisation: int8 weights of constant-weight MatMuls, activations "
            "quantised per call"
        ),
    ),
    FormatSpec(
        "onnx-int8-static",
        "model.int8-static.onnx",
        ("int8",),
        "onnxruntime",
        engine=_onnx_engine,
        summary=(
            "ORT static QDQ, symmetric signed int8, weights per channel, activation ranges "
            "calibrated on `--calibration` images (MinMax, Entropy or Percentile)"
        ),
    ),
    FormatSpec(
        "onnx-fp16",
        "model.fp16.onnx",
        ("fp16",),
        "onnxruntime",
        engine=_onnx_engine,
        summary=(
            "the optimised graph converted to fp16 with fp32 inputs and outputs (for "
            "CUDA/TensorRT providers)"
        ),
    ),
    FormatSpec(
        "torchscript",
        "model.torchscript.pt",
        ("fp32",),
        "torchscript",
        engine=_torchscript_engine,
        summary="`torch.jit.trace` of the same module",
    ),
    FormatSpec(
        "tensorrt",
        "model.plan",
        ("fp16", "int8"),
        "tensorrt",
        engine=_tensorrt_engine,
        requires=(CUDA_TENSORRT,),
        summary=(
            "TensorRT Python API from the fp32 ONNX (fp16, the default) or from the static QDQ "
            "ONNX (int8, explicit quantisation; `--tensorrt-precision`); one optimisation "
            "profile, batch 1/8/32"
        ),
    ),
    FormatSpec(
        TEXT_FORMAT,
        "text_encoder.onnx",
        ("fp32",),
        "onnxruntime",
        signature=TEXT_SIGNATURE,
        companions=(TOKENIZER_FILE,),
        summary=(
            "the text tower (`input_ids`, `attention_mask` → normalised `text_embeddings`) and "
            "the fast tokenizer file; not an image engine: it serves open-vocabulary labels "
            "behind an ONNX image engine"
        ),
    ),
):
    register_format(_spec)


def best_served_format(bundle: Bundle) -> str:
    """The first of :data:`SERVING_PREFERENCE` that ``bundle`` has, passed its parity gate and
    is unchanged on disk; else the bundle's own classifier (``torch``), which always works."""
    for name in SERVING_PREFERENCE:
        if name not in bundle.manifest.exports:
            continue
        try:
            bundle.export_file(name)
        except BundleError as exc:
            logger.info("not serving the '%s' export: %s", name, exc)
            continue
        return name
    return REFERENCE_FORMAT
