"""Contract 5 — engines: ``Engine.predict(pixels) -> probabilities`` for every runtime.

:func:`create_engine` is the one entry point. See docs/inference.md#engines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clip_har.errors import ClipHarError, UsageError
from clip_har.inference.formats import (
    REFERENCE_FORMAT,
    Engine,
    EngineOptions,
    engine_formats,
    get_format,
)

if TYPE_CHECKING:
    from clip_har.inference.torch_engine import TorchEngine
    from clip_har.models.bundle import Bundle

__all__ = ["Engine", "EngineOptions", "TorchEngine", "create_engine"]


def __getattr__(name: str) -> Any:
    """``TorchEngine`` is imported on first use, so exported formats never load torch."""
    if name == "TorchEngine":
        from clip_har.inference.torch_engine import TorchEngine

        return TorchEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_engine(
    bundle: Bundle, format: str = REFERENCE_FORMAT, options: EngineOptions | None = None
) -> Engine:
    """The engine for ``format`` over ``bundle``; unknown formats list the known ones."""
    options = options or EngineOptions()
    if format != REFERENCE_FORMAT and options.precision != "fp32":
        raise UsageError(
            f"precision {options.precision} applies to the {REFERENCE_FORMAT} format only: an "
            f"export's precision is fixed when it is built (e.g. onnx-int8), not '{format}'"
        )
    if format == REFERENCE_FORMAT:
        from clip_har.inference.torch_engine import TorchEngine

        return TorchEngine.from_bundle(bundle, options)
    factory = get_format(format).engine if format in engine_formats() else None
    if factory is None:
        raise ClipHarError(
            f"unknown engine format '{format}' (available: {', '.join(engine_formats())})"
        )
    path, _ = bundle.export_file(format, force=options.force)
    return factory(path, format, options)
