"""``clip-har export``: write the requested artifacts into a bundle's ``exports/``, check each
against torch fp32 (the parity gate) and record format, hash, opset, precision and parity
in the manifest. A format that cannot be built here (TensorRT without CUDA) is reported
and the others are still exported."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch

from clip_har.config import CalibrationName, ExportSettings, ParitySettings
from clip_har.errors import ClipHarError, RegistryError
from clip_har.export.images import sample_pixels
from clip_har.export.onnx import (
    ImageExport,
    export_image_onnx,
    export_text_onnx,
    optimize_onnx,
)
from clip_har.export.parity import check_parity, limit_for
from clip_har.export.quantize import (
    convert_fp16,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from clip_har.export.torchscript import export_torchscript
from clip_har.inference.formats import (
    TEXT_FORMAT,
    TOKENIZER_FILE,
    EngineOptions,
    FormatSpec,
    Precision,
    check_format_names,
    format_names,
    get_format,
)
from clip_har.io import file_sha256, plural, replace_directory, staging_directory
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

_PARITY_BATCH = 8

Details = dict[str, str | int | float | bool]


_DEFAULTS = ExportSettings()  # every default below is the params.yaml default


@dataclass(frozen=True)
class ExportOptions:
    """How to export: opset, parity images and gates, calibration, TensorRT precision."""

    opset: int = _DEFAULTS.opset
    parity: ParitySettings = field(default_factory=ParitySettings)
    parity_data: Path | None = None
    parity_count: int = _DEFAULTS.parity_images
    calibration: Path | None = None
    calibration_method: CalibrationName = _DEFAULTS.calibration
    calibration_count: int = _DEFAULTS.calibration_images
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


def parse_formats(names: Sequence[str]) -> list[str]:
    """``export.formats`` -> a checked, de-duplicated list of registered format names."""
    return check_format_names(names, format_names(), "export format")


class ExportSession:
    """One bundle's export session: the classifier, the parity images and their torch
    reference, and the intermediate fp32 graphs that several formats build on.

    Creating one loads the model and the parity images, checking those inputs before
    anything is written; :attr:`work`, the scratch folder, is set once it exists."""

    work: Path

    def __init__(self, bundle: Bundle, options: ExportOptions) -> None:
        self.bundle = bundle
        self.options = options
        self.stage: Callable[[str], None] = lambda step: None  # names the current step
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
        path = self.work / ("base-" + get_format("onnx").file)
        export_image_onnx(self.classifier, path, self.sample, self.options.opset)
        return path

    @cached_property
    def optimized_onnx(self) -> tuple[Path, dict[str, int]]:
        path = self.work / ("base-" + get_format("onnx-opt").file)
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
        path = self.work / ("base-" + get_format("onnx-int8-static").file)
        self.stage(f"calibrating on {plural(len(pixels), 'image')}")
        details = quantize_static_int8(
            self.base_onnx, path, pixels, self.options.calibration_method
        )
        return path, dict(details)

    def parity(
        self, spec: FormatSpec, path: Path, precision: Precision, details: Details
    ) -> ParityInfo:
        """The parity gate of the artifact at ``path`` (see :mod:`clip_har.export.parity`)."""
        limit = limit_for(self.options.parity, precision)
        candidate, reference = EXPORTERS[spec.name].compare(self, spec, path, details)
        return check_parity(reference, candidate, limit, real_photos=self.real_photos)


# --- one exporter per registered format ----------------------------------------------------
# build(session, target) writes the artifact and returns its manifest details;
# compare(session, spec, path, details) returns (candidate, reference) probabilities.
Build: TypeAlias = Callable[[ExportSession, Path], Details]
Compare: TypeAlias = Callable[
    [ExportSession, FormatSpec, Path, Details], tuple[np.ndarray, np.ndarray]
]


def image_outputs(
    session: ExportSession, spec: FormatSpec, path: Path, details: Details
) -> tuple[np.ndarray, np.ndarray]:
    """The artifact's probabilities on the parity images through the format's own engine,
    and torch fp32's."""
    if spec.engine is None:
        raise ClipHarError(f"format '{spec.name}' has no engine: its exporter needs a compare")
    engine = spec.engine(path, spec.name, EngineOptions(threads=session.options.threads))
    pixels = session.pixels
    candidate = np.concatenate(
        [
            engine.predict(pixels[i : i + _PARITY_BATCH])
            for i in range(0, len(pixels), _PARITY_BATCH)
        ]
    )
    return candidate, session.reference


@dataclass(frozen=True)
class Exporter:
    """How a registered format is written and what its parity gate compares."""

    build: Build
    compare: Compare = image_outputs


def _onnx(session: ExportSession, target: Path) -> Details:
    shutil.copyfile(session.base_onnx, target)
    return {}


def _onnx_opt(session: ExportSession, target: Path) -> Details:
    path, fused = session.optimized_onnx
    shutil.copyfile(path, target)
    return {f"fused_{name}": count for name, count in fused.items()}


def _onnx_int8(session: ExportSession, target: Path) -> Details:
    return dict(quantize_dynamic_int8(session.base_onnx, target))


def _onnx_int8_static(session: ExportSession, target: Path) -> Details:
    path, details = session.static_int8_onnx
    shutil.copyfile(path, target)
    return details


def _onnx_fp16(session: ExportSession, target: Path) -> Details:
    return dict(convert_fp16(session.optimized_onnx[0], target))


def _torchscript(session: ExportSession, target: Path) -> Details:
    export_torchscript(session.classifier, target, session.sample)
    return {}


def _tensorrt(session: ExportSession, target: Path) -> Details:
    from clip_har.export.tensorrt import build_tensorrt_engine

    precision = session.options.tensorrt_precision
    source = session.static_int8_onnx[0] if precision == "int8" else session.base_onnx
    return build_tensorrt_engine(source, target, precision=precision)


def _text_onnx(session: ExportSession, target: Path) -> Details:
    backbone = session.backbone
    export_text_onnx(backbone, target, session.options.opset)
    source = Path(backbone.source_dir) / TOKENIZER_FILE
    if not source.is_file():
        raise ClipHarError(f"{source}: the text export needs the fast tokenizer's {TOKENIZER_FILE}")
    tokenizer = target.with_name(TOKENIZER_FILE)
    shutil.copyfile(source, tokenizer)
    fast = backbone.tokenizer
    return {
        "tokenizer": f"{EXPORTS_DIR}/{TOKENIZER_FILE}",
        "tokenizer_sha256": file_sha256(tokenizer),
        "max_length": int(min(fast.model_max_length, 4096)),
        "pad_id": int(fast.pad_token_id),
        "pad_to_max_length": backbone.model_type.startswith("siglip"),
        "logit_scale": backbone.logit_scale,
    }


def _open_vocabulary_outputs(
    session: ExportSession, spec: FormatSpec, path: Path, details: Details
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
        threads=session.options.threads,
    )
    manifest = session.bundle.manifest
    onnx_weights = class_text_weights(encoder, manifest.class_names, manifest.prompts)
    cache = TextEmbeddingCache(session.backbone)
    torch_weights = zero_shot_weights(manifest.class_names, manifest.prompts, cache).numpy()
    scale = float(details["logit_scale"])
    embeddings = torch.from_numpy(session.reference_embeddings)
    onnx_probs, torch_probs = (
        (scale * embeddings @ torch.from_numpy(weights).T).softmax(dim=-1).numpy()
        for weights in (onnx_weights, torch_weights)
    )
    return onnx_probs, torch_probs


# Keyed by the names in clip_har.inference.formats; a test checks every format has one.
EXPORTERS: dict[str, Exporter] = {
    "onnx": Exporter(_onnx),
    "onnx-opt": Exporter(_onnx_opt),
    "onnx-int8": Exporter(_onnx_int8),
    "onnx-int8-static": Exporter(_onnx_int8_static),
    "onnx-fp16": Exporter(_onnx_fp16),
    "torchscript": Exporter(_torchscript),
    "tensorrt": Exporter(_tensorrt),
    TEXT_FORMAT: Exporter(_text_onnx, compare=_open_vocabulary_outputs),
}


def register_exporter(name: str, exporter: Exporter) -> Exporter:
    """Attach the exporter of a format registered with
    :func:`clip_har.inference.formats.register_format`."""
    get_format(name)  # raises for an unregistered name
    if name in EXPORTERS:
        raise RegistryError(f"format '{name}' already has an exporter")
    EXPORTERS[name] = exporter
    return exporter


def export_bundle(
    directory: str | Path,
    formats: Sequence[str],
    options: ExportOptions | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ExportSummary:
    """Export ``formats`` into ``directory/exports`` and record them in the manifest.

    Each artifact is written next to its final name and moved into place only once it
    is complete; the manifest is rewritten atomically at the end. ``progress(name, done,
    total)`` is called before each format and each slow step of one (its name is then
    ``"NAME (step)"``: calibration, the parity check).

    An export that records nothing (bad inputs, every format failed) leaves the bundle as
    it was: an ``exports/`` folder it created is removed again."""
    options = options or ExportOptions()
    names = parse_formats(formats)
    bundle = open_bundle(directory)
    session = ExportSession(bundle, options)  # checks the model and parity data first
    exports = bundle.directory / EXPORTS_DIR
    created = not exports.exists()
    exports.mkdir(exist_ok=True)
    summary = ExportSummary(bundle)
    try:
        _export_all(session, names, exports, summary, progress)
    finally:
        if created and not summary.records:
            with contextlib.suppress(OSError):  # only ever an empty folder
                exports.rmdir()
    if summary.records:
        summary.bundle = record_exports(bundle, list(summary.records.values()))
    return summary


def _export_all(
    session: ExportSession,
    names: Sequence[str],
    exports: Path,
    summary: ExportSummary,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    """Export ``names`` one by one into ``exports``, each result into ``summary``, in a
    scratch folder there that is removed afterwards."""
    session.work = Path(tempfile.mkdtemp(prefix=".work-", dir=exports))
    try:
        for done, name in enumerate(names):
            if progress is not None:
                progress(name, done, len(names))
                session.stage = partial(_report_stage, progress, name, done, len(names))
            try:
                summary.records[name] = _export_one(session, name, exports)
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
        shutil.rmtree(session.work, ignore_errors=True)


def _report_stage(
    progress: Callable[[str, int, int], None], name: str, done: int, total: int, step: str
) -> None:
    """``progress`` for one step of exporting ``name``: "NAME (step)"."""
    progress(f"{name} ({step})", done, total)


def copy_bundle(source: str | Path, target: Path, *, overwrite: bool = False) -> Path:
    """Copy a bundle without its exports (for a pipeline stage that must not modify its
    input); the copy appears complete or not at all."""
    bundle = open_bundle(source)
    if target.exists() and not overwrite:
        raise ClipHarError(f"{target} already exists (use --force to replace it)")
    skipped = shutil.ignore_patterns(EXPORTS_DIR)
    with staging_directory(target) as staging:
        shutil.copytree(bundle.directory, staging, ignore=skipped, dirs_exist_ok=True)
        record_exports(open_bundle(staging), [], replace=True)
        replace_directory(staging, target)
    return target


def _precision(spec: FormatSpec, details: Details) -> Precision:
    """The precision the artifact was built in: the format's only one, or the one its
    exporter chose and recorded in ``details["precision"]``."""
    if len(spec.precisions) == 1:
        return spec.precisions[0]
    for precision in spec.precisions:
        if details.get("precision") == precision:
            return precision
    raise ClipHarError(
        f"the '{spec.name}' exporter recorded precision {details.get('precision')!r}, not one "
        f"of {', '.join(spec.precisions)}"
    )


def _export_one(session: ExportSession, name: str, exports: Path) -> ExportRecord:
    spec = get_format(name)
    unavailable = spec.unavailable_reason("export")
    if unavailable is not None:
        raise ClipHarError(unavailable)
    started = time.perf_counter()
    target = exports / spec.file
    staging = session.work / spec.file
    details = EXPORTERS[name].build(session, staging)
    precision = _precision(spec, details)
    session.stage(f"parity check on {plural(len(session.pixels), 'image')}")
    parity = session.parity(spec, staging, precision, details)
    staging.replace(target)
    for companion in spec.companions:
        staging.with_name(companion).replace(exports / companion)
    record = ExportRecord(
        format=name,
        file=f"{EXPORTS_DIR}/{spec.file}",
        sha256=file_sha256(target),
        bytes=target.stat().st_size,
        precision=precision,
        opset=session.options.opset if spec.runtime == "onnxruntime" else None,
        parity=parity,
        created_at=datetime.now(timezone.utc),
        details={**details, "export_seconds": round(time.perf_counter() - started, 2)},
    )
    log.info(
        "%s: %s, %.1f MB, max |Δp| %.2e, top-1 agreement %.1f%% on %s decided images "
        "(%s near-ties excluded) — %s",
        name,
        record.file,
        record.bytes / 1e6,
        parity.max_abs_diff,
        100 * parity.top1_agreement,
        parity.decided_images,
        parity.excluded_images,
        "passed" if parity.passed else "FAILED the parity gate",
    )
    return record
