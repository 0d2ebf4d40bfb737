"""``clip-har export``: write the requested artifacts into a bundle's ``exports/``, check each
against torch fp32 (the parity gate) and record format, hash, opset, precision and parity
in the manifest. A format that cannot be built here (TensorRT without CUDA) is reported
and the others are still exported."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from clip_har.config import ExportSettings, ParitySettings
from clip_har.errors import ClipHarError
from clip_har.export.images import sample_pixels
from clip_har.export.onnx import (
    ImageExport,
    export_image_onnx,
    export_text_onnx,
    optimize_onnx,
)
from clip_har.export.parity import check_parity, limit_for
from clip_har.export.quantize import (
    CalibrationName,
    convert_fp16,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from clip_har.export.torchscript import export_torchscript
from clip_har.inference.engines import (
    ARTIFACT_ENGINES,
    IMAGE_FORMATS,
    TEXT_FORMAT,
    EngineOptions,
)
from clip_har.io import file_sha256
from clip_har.models.bundle import (
    EXPORTS_DIR,
    Bundle,
    ExportRecord,
    ParityInfo,
    open_bundle,
    record_exports,
)
from clip_har.models.classifier import TextEmbeddingCache, zero_shot_weights

log = logging.getLogger(__name__)

EXPORT_FORMATS = (*(f for f in IMAGE_FORMATS if f != "torch"), TEXT_FORMAT)
FILES = {
    "onnx": "model.onnx",
    "onnx-opt": "model.opt.onnx",
    "onnx-int8": "model.int8.onnx",
    "onnx-int8-static": "model.int8-static.onnx",
    "onnx-fp16": "model.fp16.onnx",
    "torchscript": "model.torchscript.pt",
    "tensorrt": "model.plan",
    TEXT_FORMAT: "text_encoder.onnx",
}
TOKENIZER_FILE = "tokenizer.json"
_PRECISION: dict[str, Literal["fp32", "fp16", "int8"]] = {
    "onnx": "fp32",
    "onnx-opt": "fp32",
    "onnx-int8": "int8",
    "onnx-int8-static": "int8",
    "onnx-fp16": "fp16",
    "torchscript": "fp32",
    TEXT_FORMAT: "fp32",
}
_PARITY_BATCH = 8

Details = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class ExportOptions:
    """How to export: opset, parity images and gates, calibration, TensorRT precision."""

    opset: int = 17
    parity: ParitySettings = field(default_factory=ParitySettings)
    parity_data: Path | None = None
    parity_count: int = 32
    calibration: Path | None = None
    calibration_method: CalibrationName = "minmax"
    calibration_count: int = 64
    tensorrt_precision: Literal["fp16", "int8"] = "fp16"
    threads: int | None = None
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: ExportSettings, **overrides: Any) -> ExportOptions:
        """Options from the ``export`` section of params.yaml; ``overrides`` win."""
        values: dict[str, Any] = {
            "opset": settings.opset,
            "parity": settings.parity,
            "parity_count": settings.parity_images,
            "calibration_method": settings.calibration,
            "calibration_count": settings.calibration_images,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class ExportSummary:
    """What was exported (with parity) and what could not be, with the reason."""

    bundle: Bundle
    records: dict[str, ExportRecord] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def gate_failures(self) -> list[str]:
        return [name for name, record in self.records.items() if not record.passed]


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """``"onnx,onnx-int8"`` -> a checked, de-duplicated list."""
    items = text.split(",") if isinstance(text, str) else list(text)
    formats = list(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not formats:
        raise ClipHarError(f"no export formats given (choose from {', '.join(EXPORT_FORMATS)})")
    unknown = [name for name in formats if name not in EXPORT_FORMATS]
    if unknown:
        raise ClipHarError(
            f"unknown export format(s) {', '.join(unknown)} "
            f"(choose from {', '.join(EXPORT_FORMATS)})"
        )
    return formats


class _Exporter:
    """One bundle's export session: the classifier, the parity images and their torch
    reference, and the intermediate fp32 graphs that several formats build on."""

    def __init__(self, bundle: Bundle, options: ExportOptions, work: Path) -> None:
        self.bundle = bundle
        self.options = options
        self.work = work
        self.backbone = bundle.load_backbone()
        self.classifier = bundle.load_classifier(self.backbone)
        config = bundle.manifest.preprocessing
        self.pixels, self.real_photos = sample_pixels(
            config, options.parity_data, options.parity_count, options.seed
        )
        with torch.inference_mode():
            probs, embeddings = ImageExport(self.classifier)(torch.from_numpy(self.pixels))
        self.reference = probs.numpy()
        self.reference_embeddings = embeddings.numpy()
        self.sample = torch.from_numpy(self.pixels[:2].copy())

    @cached_property
    def base_onnx(self) -> Path:
        path = self.work / ("base-" + FILES["onnx"])
        export_image_onnx(self.classifier, path, self.sample, self.options.opset)
        return path

    @cached_property
    def optimized_onnx(self) -> tuple[Path, dict[str, int]]:
        path = self.work / ("base-" + FILES["onnx-opt"])
        return path, optimize_onnx(self.base_onnx, path, self.backbone)

    @cached_property
    def static_int8_onnx(self) -> tuple[Path, Details]:
        if self.options.calibration is None:
            raise ClipHarError(
                "onnx-int8-static needs calibration images: pass --calibration with a data "
                "manifest directory or an image folder"
            )
        pixels, _ = sample_pixels(
            self.bundle.manifest.preprocessing,
            self.options.calibration,
            self.options.calibration_count,
            self.options.seed,
        )
        path = self.work / ("base-" + FILES["onnx-int8-static"])
        details = quantize_static_int8(
            self.base_onnx, path, pixels, self.options.calibration_method
        )
        return path, dict(details)

    def build(self, format: str, target: Path) -> Details:
        """Write ``format`` to ``target``; return its manifest details."""
        if format == "onnx":
            shutil.copyfile(self.base_onnx, target)
            return {}
        if format == "onnx-opt":
            path, fused = self.optimized_onnx
            shutil.copyfile(path, target)
            return {f"fused_{name}": count for name, count in fused.items()}
        if format == "onnx-int8":
            return dict(quantize_dynamic_int8(self.base_onnx, target))
        if format == "onnx-int8-static":
            path, details = self.static_int8_onnx
            shutil.copyfile(path, target)
            return details
        if format == "onnx-fp16":
            return dict(convert_fp16(self.optimized_onnx[0], target))
        if format == "torchscript":
            export_torchscript(self.classifier, target, self.sample)
            return {}
        if format == "tensorrt":
            return self._build_tensorrt(target)
        if format == TEXT_FORMAT:
            return self._build_text(target)
        raise ClipHarError(f"unknown export format '{format}'")

    def _build_tensorrt(self, target: Path) -> Details:
        from clip_har.export.tensorrt import build_tensorrt_engine

        int8 = self.options.tensorrt_precision == "int8"
        source = self.static_int8_onnx[0] if int8 else self.base_onnx
        return build_tensorrt_engine(source, target, precision=self.options.tensorrt_precision)

    def _build_text(self, target: Path) -> Details:
        export_text_onnx(self.backbone, target, self.options.opset)
        source = Path(self.backbone.source_dir) / TOKENIZER_FILE
        if not source.is_file():
            raise ClipHarError(
                f"{source}: the text export needs the fast tokenizer's {TOKENIZER_FILE}"
            )
        tokenizer = target.with_name(TOKENIZER_FILE)
        shutil.copyfile(source, tokenizer)
        fast = self.backbone.tokenizer
        return {
            "tokenizer": f"{EXPORTS_DIR}/{TOKENIZER_FILE}",
            "tokenizer_sha256": file_sha256(tokenizer),
            "max_length": int(min(fast.model_max_length, 4096)),
            "pad_id": int(fast.pad_token_id),
            "pad_to_max_length": self.backbone.model_type.startswith("siglip"),
            "logit_scale": self.backbone.logit_scale,
        }

    def outputs(self, format: str, path: Path) -> np.ndarray:
        """The artifact's probabilities on the parity images."""
        engine = ARTIFACT_ENGINES[format](path, format, EngineOptions(threads=self.options.threads))
        return np.concatenate(
            [
                engine.predict(self.pixels[i : i + _PARITY_BATCH])
                for i in range(0, len(self.pixels), _PARITY_BATCH)
            ]
        )

    def parity(self, format: str, path: Path, precision: str, details: Details) -> ParityInfo:
        limit = limit_for(self.options.parity, precision)
        if format == TEXT_FORMAT:
            candidate, reference = self._open_vocabulary_outputs(path, details)
        else:
            candidate, reference = self.outputs(format, path), self.reference
        return check_parity(reference, candidate, limit, real_photos=self.real_photos)

    def _open_vocabulary_outputs(
        self, path: Path, details: Details
    ) -> tuple[np.ndarray, np.ndarray]:
        """Zero-shot probabilities over the bundle's classes from ONNX text embeddings and
        from torch text embeddings, both on the torch image embeddings."""
        from clip_har.inference.onnx_engine import OnnxTextEncoder, class_text_weights

        encoder = OnnxTextEncoder(
            path,
            path.with_name(TOKENIZER_FILE),
            max_length=int(details["max_length"]),
            pad_id=int(details["pad_id"]),
            pad_to_max_length=bool(details["pad_to_max_length"]),
            threads=self.options.threads,
        )
        manifest = self.bundle.manifest
        onnx_weights = class_text_weights(encoder, manifest.class_names, manifest.prompts)
        cache = TextEmbeddingCache(self.backbone)
        torch_weights = zero_shot_weights(manifest.class_names, manifest.prompts, cache).numpy()
        scale = float(details["logit_scale"])
        embeddings = torch.from_numpy(self.reference_embeddings)
        onnx_probs, torch_probs = (
            (scale * embeddings @ torch.from_numpy(weights).T).softmax(dim=-1).numpy()
            for weights in (onnx_weights, torch_weights)
        )
        return onnx_probs, torch_probs


def export_bundle(
    directory: str | Path,
    formats: str | Sequence[str],
    options: ExportOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ExportSummary:
    """Export ``formats`` into ``directory/exports`` and record them in the manifest.

    Each artifact is written next to its final name and moved into place only once it
    is complete; the manifest is rewritten atomically at the end."""
    options = options or ExportOptions()
    names = parse_formats(formats)
    bundle = open_bundle(directory)
    exports = bundle.directory / EXPORTS_DIR
    exports.mkdir(exist_ok=True)
    summary = ExportSummary(bundle)
    work = Path(tempfile.mkdtemp(prefix=".work-", dir=exports))
    try:
        exporter = _Exporter(bundle, options, work)
        for done, name in enumerate(names):
            if progress is not None:
                progress(name, done, len(names))
            try:
                summary.records[name] = _export_one(exporter, name, exports)
            except ClipHarError as exc:
                summary.failures[name] = str(exc)
            except Exception as exc:  # onnx/onnxruntime/torch raise many types; keep going
                log.debug("export of %s failed", name, exc_info=True)
                summary.failures[name] = f"{type(exc).__name__}: {exc}"
            if name in summary.failures:
                log.info("%s: not exported: %s", name, summary.failures[name])
        if progress is not None:
            progress("done", len(names), len(names))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if summary.records:
        summary.bundle = record_exports(bundle, list(summary.records.values()))
    return summary


def copy_bundle(source: str | Path, target: Path, *, overwrite: bool = False) -> Path:
    """Copy a bundle without its exports (for a pipeline stage that must not modify its
    input); the copy appears complete or not at all."""
    bundle = open_bundle(source)
    if target.exists() and not overwrite:
        raise ClipHarError(f"{target} already exists (use --force to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        shutil.copytree(bundle.directory, staging / "b", ignore=shutil.ignore_patterns(EXPORTS_DIR))
        record_exports(open_bundle(staging / "b"), [], replace=True)
        if target.exists():
            shutil.rmtree(target)
        (staging / "b").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _export_one(exporter: _Exporter, name: str, exports: Path) -> ExportRecord:
    started = time.perf_counter()
    target = exports / FILES[name]
    staging = exporter.work / FILES[name]
    details = exporter.build(name, staging)
    precision = _PRECISION.get(name) or exporter.options.tensorrt_precision
    parity = exporter.parity(name, staging, precision, details)
    staging.replace(target)
    if name == TEXT_FORMAT:
        staging.with_name(TOKENIZER_FILE).replace(exports / TOKENIZER_FILE)
    record = ExportRecord(
        format=name,
        file=f"{EXPORTS_DIR}/{FILES[name]}",
        sha256=file_sha256(target),
        bytes=target.stat().st_size,
        precision=precision,
        opset=exporter.options.opset if "onnx" in name else None,
        parity=parity,
        created_at=datetime.now(timezone.utc),
        details={**details, "export_seconds": round(time.perf_counter() - started, 2)},
    )
    log.info(
        "%s: %s, %.1f MB, max |Δp| %.2e, top-1 agreement %.1f%% — %s",
        name,
        record.file,
        record.bytes / 1e6,
        parity.max_abs_diff,
        100 * parity.top1_agreement,
        "passed" if parity.passed else "FAILED the parity gate",
    )
    return record
