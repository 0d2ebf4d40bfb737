"""Side-by-side benchmark of a bundle's engines: latency, throughput, memory, size, parity,
energy.

What is measured and how the timing stays fair: docs/export.md#benchmark.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clip_har.config import split_commas
from clip_har.devices import parse_device
from clip_har.errors import ClipHarError, RegistryError, UsageError
from clip_har.export.energy import EnergyMeter, NvmlMeter, energy_meter
from clip_har.export.images import sample_pixels
from clip_har.inference.engines import EngineOptions, create_engine
from clip_har.inference.formats import REFERENCE_FORMAT, check_format_names, engine_formats
from clip_har.io import atomic_write, json_safe, plural, write_json_atomic, write_text_atomic
from clip_har.models.bundle import Bundle, open_bundle
from clip_har.version import __version__

if TYPE_CHECKING:
    from clip_har.tracking.base import Tracker

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_MAX_SECONDS",
    "OUTPUT_FILES",
    "BenchmarkConfig",
    "BenchmarkResult",
    "Timings",
    "benchmark_pixels",
    "check_formats",
    "interleaved_timings",
    "latency_stats",
    "markdown_table",
    "parse_batch_sizes",
    "percentile",
    "run_benchmark",
    "usable_cores",
    "write_chart",
]

DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_MAX_SECONDS = 90.0  # warm-up + timing of the whole run; see BenchmarkConfig
OUTPUT_FILES = {"json": "benchmark.json", "markdown": "benchmark.md", "chart": "benchmark.png"}
REFERENCE = REFERENCE_FORMAT
WORKER_TIMEOUT_S = 900.0

Progress = Callable[[int, int], None]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)``; every size a positive integer, duplicates dropped
    (a :class:`UsageError` otherwise)."""
    sizes: list[int] = []
    for item in split_commas(text):
        try:
            size = int(item)
        except ValueError:
            raise UsageError(
                f"batch sizes must be positive integers separated by commas, got '{text}'"
            ) from None
        if size < 1:
            raise UsageError(f"batch sizes must be at least 1, got {size} in '{text}'")
        if size not in sizes:
            sizes.append(size)
    if not sizes:
        raise UsageError(f"no batch sizes in '{text}' (e.g. 1,8,32)")
    return tuple(sizes)


def check_formats(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` without duplicates, each one an engine format (torch or an image export);
    a :class:`UsageError` listing the choices otherwise, so a typo is never skipped."""
    try:
        return tuple(check_format_names(names, engine_formats(), "format"))
    except RegistryError as exc:
        raise UsageError(str(exc)) from None


@dataclass(frozen=True)
class BenchmarkConfig:
    """What to measure and how long.

    ``threads`` None means every usable core. At each batch size, every format is timed
    until it has ``min_iterations`` samples and ``min_seconds`` of timed work, or until its
    share of ``max_seconds`` is spent (it is then marked cut short); ``warmup`` untimed
    calls per format and batch size come first. ``max_seconds`` bounds the warm-up and
    timing of all batch sizes together: each batch size gets what is left divided by the
    batch sizes left (docs/export.md#benchmark).
    """

    formats: tuple[str, ...] = (REFERENCE,)
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    threads: int | None = None
    warmup: int = 2
    min_iterations: int = 5
    min_seconds: float = 3.0
    max_seconds: float = DEFAULT_MAX_SECONDS
    device: str = "cpu"
    data: Path | None = None  # photos (folder or data manifest); None: seeded synthetic images
    ignore_parity: bool = False  # use exports whose parity gate failed or never ran
    seed: int = 0
    measure_memory: bool = True  # peak RSS per format, in a child process each
    energy_seconds: float = 2.0  # per format and batch size, when a power counter exists

    def __post_init__(self) -> None:
        check_formats(self.formats)
        if not self.batch_sizes or any(size < 1 for size in self.batch_sizes):
            raise ClipHarError(f"batch sizes must be at least 1, got {list(self.batch_sizes)}")
        if self.threads is not None and self.threads < 1:
            raise ClipHarError(f"threads must be at least 1, got {self.threads}")
        if self.warmup < 0:
            raise ClipHarError(f"warmup must be 0 or more iterations, got {self.warmup}")
        if self.min_iterations < 1:
            raise ClipHarError(f"min_iterations must be at least 1, got {self.min_iterations}")
        if self.min_seconds < 0 or self.energy_seconds < 0:
            raise ClipHarError("min_seconds and energy_seconds must not be negative")
        if not self.max_seconds >= 0:  # NaN too
            raise ClipHarError(f"max_seconds must be 0 or more, got {self.max_seconds}")
        parse_device(self.device)  # raises UsageError naming the accepted devices

    @property
    def resolved_threads(self) -> int:
        return self.threads if self.threads is not None else usable_cores()

    def to_dict(self) -> dict[str, Any]:
        return {
            "formats": list(self.formats),
            "batch_sizes": list(self.batch_sizes),
            "threads": self.resolved_threads,
            "warmup": self.warmup,
            "min_iterations": self.min_iterations,
            "min_seconds": self.min_seconds,
            "max_seconds": self.max_seconds,
            "device": self.device,
            "data": None if self.data is None else str(self.data),
            "ignore_parity": self.ignore_parity,
            "seed": self.seed,
            "measure_memory": self.measure_memory,
            "energy_seconds": self.energy_seconds,
        }


@dataclass
class BenchmarkResult:
    """Rows (one per format x batch size), skipped formats with reasons, and the files."""

    rows: list[dict[str, Any]]
    skipped: dict[str, str]
    payload: dict[str, Any]  # everything written to benchmark.json
    markdown: str
    paths: dict[str, Path] = field(default_factory=dict)

    def row(self, format: str, batch_size: int) -> dict[str, Any]:
        for row in self.rows:
            if row["format"] == format and row["batch_size"] == batch_size:
                return row
        raise KeyError(f"no result for {format} at batch size {batch_size}")

    def throughput_ratio(self, format: str, baseline: str, batch_size: int) -> float | None:
        """images/s of ``format`` over ``baseline`` at ``batch_size`` (same run)."""
        try:
            ours = self.row(format, batch_size)["images_per_s"]
            theirs = self.row(baseline, batch_size)["images_per_s"]
        except KeyError:
            return None
        return float(ours / theirs) if theirs else None


# --- statistics and scheduling --------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks
    (numpy's default, the same definition as ``statistics.quantiles(method='inclusive')``)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0-100, got {q}")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def latency_stats(seconds: Sequence[float], batch_size: int) -> dict[str, float]:
    """Per-batch latency percentiles in ms, and throughput (images over total seconds)."""
    total = float(sum(seconds))
    return {
        "p50_ms": percentile(seconds, 50) * 1e3,
        "p90_ms": percentile(seconds, 90) * 1e3,
        "p99_ms": percentile(seconds, 99) * 1e3,
        "mean_ms": total / len(seconds) * 1e3,
        "images_per_s": batch_size * len(seconds) / total if total > 0 else float("inf"),
    }


@dataclass(frozen=True)
class Timings:
    """The timed calls of one name in :func:`interleaved_timings` and why it stopped."""

    seconds: list[float]
    cut_short: bool = False  # the time budget stopped it before its minimums were met

    @property
    def total(self) -> float:
        return float(sum(self.seconds))


def interleaved_timings(
    calls: Mapping[str, Callable[[], object]],
    *,
    min_iterations: int,
    min_seconds: float,
    max_seconds: float = math.inf,
    clock: Callable[[], float] = time.perf_counter,
    on_sample: Callable[[str, float], None] | None = None,
    on_stop: Callable[[str, Timings], None] | None = None,
) -> dict[str, Timings]:
    """Time ``calls`` interleaved; every name stops on its own (docs/export.md#benchmark).

    A name stops, with at least one sample, as soon as either holds:

    - it has ``min_iterations`` samples and ``min_seconds`` of timed work (complete);
    - its timed seconds reach its share of ``max_seconds`` (what the names already stopped
      left of it, split evenly over those still running), or ``max_seconds`` of ``clock``
      have passed since the start: it is *cut short*.

    The next call always goes to the running name with the least timed seconds so far
    (ties: fewest samples, then the order of ``calls``), so equal-speed calls run A, B, C,
    A, B, C, ... and the running names are sampled across the same stretch of time. No name
    waits for another: a slow and a fast one both end once each has met its own rule.
    ``on_stop`` is told of each name as it stops.
    """
    names = list(calls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    totals = dict.fromkeys(names, 0.0)
    cut: dict[str, bool] = {}
    running = list(names)
    used_by_stopped = 0.0
    start = clock()

    def stop_reason(name: str, elapsed: float) -> str | None:
        count = len(samples[name])
        if count >= max(min_iterations, 1) and totals[name] >= min_seconds:
            return "complete"
        if count == 0:
            return None
        share = (max_seconds - used_by_stopped) / len(running)
        if totals[name] >= share or elapsed >= max_seconds:
            return "cut short"
        return None

    while running:
        elapsed = clock() - start
        for name in list(running):
            reason = stop_reason(name, elapsed)
            if reason is None:
                continue
            running.remove(name)
            used_by_stopped += totals[name]
            cut[name] = reason == "cut short"
            if on_stop is not None:
                on_stop(name, Timings(samples[name], cut_short=cut[name]))
        if not running:
            break
        name = min(running, key=lambda n: (totals[n], len(samples[n])))
        call = calls[name]
        began = clock()
        call()
        seconds = clock() - began
        samples[name].append(seconds)
        totals[name] += seconds
        if on_sample is not None:
            on_sample(name, seconds)
    return {name: Timings(samples[name], cut_short=cut.get(name, False)) for name in names}


# --- inputs ---------------------------------------------------------------------------------


def benchmark_pixels(bundle: Bundle, data: Path | None, count: int, seed: int = 0) -> np.ndarray:
    """One fixed batch ``[count, 3, H, W]``: up to ``count`` real photos preprocessed by the
    bundle's own preprocessing (repeated to fill the batch), or seeded synthetic images."""
    pixels, _ = sample_pixels(bundle.manifest.preprocessing, data, count, seed=seed)
    if len(pixels) < count:
        reps = -(-count // len(pixels))
        pixels = np.tile(pixels, (reps, 1, 1, 1))[:count]
    return np.ascontiguousarray(pixels, dtype=np.float32)


# --- energy ---------------------------------------------------------------------------------


def _energy_meter(device: str) -> tuple[EnergyMeter | None, dict[str, Any]]:
    """The platform's energy meter (when it has one) and a description for the results."""
    try:
        meter = energy_meter(device)
    except Exception as exc:  # an optional probe: a broken one must not stop the benchmark
        reason = f"energy meter failed: {type(exc).__name__}: {exc}"
        return None, {"available": False, "source": None, "reason": reason}
    info: dict[str, Any] = {
        "available": meter.available,
        "source": meter.source,
        "reason": None if meter.available else meter.reason,
    }
    return (meter if meter.available else None), info


def _measure_energy(
    meter: EnergyMeter, call: Callable[[], object], batch_size: int, min_seconds: float
) -> float | None:
    """Joules per image over one uninterrupted stretch of at least ``min_seconds``."""
    calls = 0
    with meter.measure() as reading:
        start = time.perf_counter()
        while calls < 1 or time.perf_counter() - start < min_seconds:
            call()
            calls += 1
    joules = reading.joules
    return None if joules is None else float(joules) / (calls * batch_size)


# --- memory and size ------------------------------------------------------------------------


def _peak_rss(
    bundle_dir: Path, format: str, batch_size: int, config: BenchmarkConfig
) -> dict[str, Any]:
    """Run the worker in a fresh process; its JSON report, or ``{"error": reason}``."""
    command = [
        sys.executable,
        "-m",
        "clip_har.export.benchmark_worker",
        "--bundle",
        str(bundle_dir),
        "--format",
        format,
        "--batch-size",
        str(batch_size),
        "--threads",
        str(config.resolved_threads),
        "--device",
        config.device,
        "--seed",
        str(config.seed),
        *(["--ignore-parity"] if config.ignore_parity else []),
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {WORKER_TIMEOUT_S:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"memory probe exited {done.returncode}: {tail}"}
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def _torch_files(bundle: Bundle, engine: object) -> list[Path]:
    """What the torch engine reads from disk: the backbone checkpoint (the whole model,
    text tower included) plus the bundle's head and encoder files."""
    files = [bundle.directory / bundle.manifest.head.file]
    if bundle.manifest.encoder is not None:
        files.append(bundle.directory / bundle.manifest.encoder.file)
    backbone = getattr(engine, "backbone", None)
    source = getattr(backbone, "source_dir", None)
    if bundle.manifest.backbone.embedded:
        source = bundle.directory / "backbone"
    if source is not None:
        files += [p for p in sorted(Path(source).iterdir()) if p.suffix in {".safetensors", ".bin"}]
    return [p for p in files if p.is_file()]


def _format_info(bundle: Bundle, format: str, engine: object) -> dict[str, Any]:
    """File size, precision and parity of one format (torch is the fp32 reference)."""
    if format == REFERENCE:
        files = _torch_files(bundle, engine)
        return {
            "file": [str(p) for p in files],
            "file_bytes": sum(p.stat().st_size for p in files),
            "file_note": "backbone checkpoint (incl. text tower) + head",
            "precision": "fp32",
            "parity_max_abs_diff": 0.0,
            "top1_agreement": 1.0,
            "parity_images": None,
            "parity_real_photos": None,
            "parity_passed": True,
        }
    record = bundle.manifest.exports[format]
    parity = record.parity
    return {
        "file": record.file,
        "file_bytes": int(record.bytes),
        "precision": record.precision,
        "parity_max_abs_diff": None if parity is None else float(parity.max_abs_diff),
        "top1_agreement": None if parity is None else float(parity.top1_agreement),
        "parity_images": None if parity is None else int(parity.images),
        "parity_real_photos": None if parity is None else bool(parity.real_photos),
        "parity_passed": None if parity is None else bool(parity.passed),
    }


# --- the run --------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, ClipHarError) else f"{type(exc).__name__}: {text}".rstrip(": ")


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, the versions that decide the numbers, and the GPU when used."""
    cpu = platform.processor() or platform.machine() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "clip_har": __version__,
        **{
            name: _package_version(name)
            for name in ("torch", "onnxruntime", "numpy", "pillow", "transformers")
        },
    }
    parsed = parse_device(device)
    if parsed.is_cuda:
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(parsed.cuda_index)
            info["cuda"] = torch.version.cuda
        for name in ("onnxruntime-gpu", "tensorrt"):
            info[name] = _package_version(name)
    return info


def _cell_count(config: BenchmarkConfig, formats: int) -> int:
    return formats + formats * len(config.batch_sizes) + (formats if config.measure_memory else 0)


def run_benchmark(
    bundle: str | Path | Bundle,
    config: BenchmarkConfig,
    output: Path | None = None,
    *,
    progress: Progress | None = None,
    tracker: Tracker | None = None,
) -> BenchmarkResult:
    """Benchmark ``config.formats`` of ``bundle`` side by side (docs/export.md#benchmark).

    Formats that cannot load or run (no such export, a failed parity gate without
    ``ignore_parity``, no CUDA for TensorRT, ...) are skipped with the reason; the rest still run
    (:class:`~clip_har.errors.ClipHarError` when none can).
    ``output`` receives benchmark.json, .md and .png; ``tracker`` (already started) gets
    the metrics and the three files. Sets torch's intra-op thread count to
    ``config.resolved_threads`` for this process.
    """
    opened = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
    formats = list(dict.fromkeys(config.formats))
    threads = config.resolved_threads
    torch.set_num_threads(threads)
    total_steps = _cell_count(config, len(formats))
    step = 0

    def advance() -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, total_steps)

    largest = max(config.batch_sizes)
    pixels = benchmark_pixels(opened, config.data, largest, seed=config.seed)
    real_photos = config.data is not None
    meter, energy = _energy_meter(config.device)

    options = EngineOptions(threads=threads, device=config.device, force=config.ignore_parity)
    engines: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    for name in formats:
        start = time.perf_counter()
        try:
            engine = create_engine(opened, name, options)
            info[name] = {**_format_info(opened, name, engine)}
        except Exception as exc:  # any runtime may fail to load; the others still run
            skipped[name] = _reason(exc)
            log.warning("skipping %s: %s", name, skipped[name])
        else:
            engines[name] = engine
            info[name]["load_s"] = round(time.perf_counter() - start, 3)
            log.info("loaded %s in %.1f s", name, info[name]["load_s"])
        advance()

    if not engines:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        raise ClipHarError(f"no format could be benchmarked ({reasons})")

    timings: dict[tuple[str, int], Timings] = {}
    joules: dict[tuple[str, int], float | None] = {}
    deadline = time.perf_counter() + config.max_seconds  # warm-up + timing, all batch sizes
    for index, batch_size in enumerate(config.batch_sizes):
        started = time.perf_counter()
        budget = max(deadline - started, 0.0) / (len(config.batch_sizes) - index)
        batch = np.ascontiguousarray(pixels[:batch_size])
        calls: dict[str, Callable[[], object]] = {}
        for name, engine in list(engines.items()):
            try:
                for _ in range(config.warmup):
                    engine.predict(batch)
                out = np.asarray(engine.predict(batch))
                if out.ndim != 2 or out.shape[0] != batch_size:
                    raise ClipHarError(f"returned shape {out.shape} for a batch of {batch_size}")
            except Exception as exc:
                skipped[name] = f"failed at batch size {batch_size}: {_reason(exc)}"
                log.warning("skipping %s: %s", name, skipped[name])
                del engines[name]
                continue
            calls[name] = _bound(engine, batch)
        left = max(budget - (time.perf_counter() - started), 0.0)
        log.info(
            "timing batch size %d for up to %.1f s: %s",
            batch_size,
            left,
            ", ".join(calls) or "nothing",
        )
        samples = interleaved_timings(
            calls,
            min_iterations=config.min_iterations,
            min_seconds=config.min_seconds,
            max_seconds=left,
            on_stop=lambda _name, _timed: advance(),
        )
        for name, timed in samples.items():
            timings[name, batch_size] = timed
            if timed.cut_short:
                log.warning(
                    "%s at batch size %d: cut short by the time bound after %s "
                    "(%.2f s timed); raise --max-seconds for the full minimums",
                    name,
                    batch_size,
                    plural(len(timed.seconds), "batch"),
                    timed.total,
                )
            joules[name, batch_size] = None
            if meter is not None:
                try:
                    joules[name, batch_size] = _measure_energy(
                        meter, calls[name], batch_size, config.energy_seconds
                    )
                except Exception as exc:
                    energy.setdefault("errors", {})[f"{name}@{batch_size}"] = _reason(exc)
        for _ in set(formats) - set(samples):
            advance()

    if isinstance(meter, NvmlMeter):
        meter.close()
    # a format that failed at a later batch size keeps the rows it had (and its reason)
    measured = [name for name in formats if any(key[0] == name for key in timings)]
    running = set(engines)
    engines.clear()
    gc.collect()
    memory: dict[str, dict[str, Any]] = {}
    if config.measure_memory:
        for _ in set(formats) - running:
            advance()
        # one child process per format, as many at a time as there are cores: a child's
        # peak RSS is its own, whatever runs beside it, and most of each is imports
        probed = [name for name in formats if name in running]
        with ThreadPoolExecutor(max_workers=max(1, min(usable_cores(), len(probed)))) as pool:
            futures = {
                pool.submit(_peak_rss, opened.directory, name, largest, config): name
                for name in probed
            }
            for future in as_completed(futures):
                name = futures[future]
                memory[name] = future.result()
                if "error" in memory[name]:
                    log.warning("peak RSS of %s: %s", name, memory[name]["error"])
                advance()

    rows = _rows(measured, config.batch_sizes, timings, joules, info, memory)
    payload: dict[str, Any] = {
        "benchmark": "clip-har export benchmark",
        "bundle": str(opened.directory),
        "bundle_name": opened.manifest.name,
        "backbone": opened.manifest.backbone.spec,
        "random_weights": opened.manifest.backbone.random_weights,
        "input": {
            "size": list(opened.manifest.preprocessing.output_size),
            "real_photos": real_photos,
            "distinct_images": _distinct(pixels),
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(config.device),
        "config": config.to_dict(),
        "rows": rows,
        "formats": {
            name: {**info[name], **{f"memory_{k}": v for k, v in memory.get(name, {}).items()}}
            for name in measured
        },
        "skipped": skipped,
        "energy": energy,
        "speedups_vs_torch": _speedups(rows),
    }
    payload = json_safe(payload)
    markdown = markdown_report(payload)
    result = BenchmarkResult(rows=rows, skipped=skipped, payload=payload, markdown=markdown)
    if output is not None:
        result.paths = write_outputs(payload, markdown, output)
        if tracker is not None:
            _log_to_tracker(tracker, result)
    return result


def _bound(engine: Any, batch: np.ndarray) -> Callable[[], object]:
    def call() -> object:
        return engine.predict(batch)

    return call


def _distinct(pixels: np.ndarray) -> int:
    return len({row.tobytes()[:4096] + row.tobytes()[-4096:] for row in pixels})


def _rows(
    formats: Sequence[str],
    batch_sizes: Sequence[int],
    timings: Mapping[tuple[str, int], Timings],
    joules: Mapping[tuple[str, int], float | None],
    info: Mapping[str, Mapping[str, Any]],
    memory: Mapping[str, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for batch_size in batch_sizes:
        reference = timings.get((REFERENCE, batch_size))
        reference_rate = (
            latency_stats(reference.seconds, batch_size)["images_per_s"] if reference else None
        )
        for name in formats:
            timed = timings.get((name, batch_size))
            if timed is None or not timed.seconds:
                continue
            seconds = timed.seconds
            stats = latency_stats(seconds, batch_size)
            peak = memory.get(name, {}).get("peak_rss_mb")
            rows.append(
                {
                    "format": name,
                    "batch_size": batch_size,
                    "iterations": len(seconds),
                    "timed_s": round(timed.total, 3),
                    "cut_short": timed.cut_short,
                    "p50_ms": round(stats["p50_ms"], 3),
                    "p90_ms": round(stats["p90_ms"], 3),
                    "p99_ms": round(stats["p99_ms"], 3),
                    "images_per_s": round(stats["images_per_s"], 3),
                    "speedup_vs_torch": None
                    if not reference_rate
                    else round(stats["images_per_s"] / reference_rate, 3),
                    "peak_rss_mb": None if peak is None else round(float(peak), 1),
                    "file_mb": round(info[name]["file_bytes"] / 2**20, 2),
                    "precision": info[name]["precision"],
                    "parity_max_abs_diff": info[name]["parity_max_abs_diff"],
                    "top1_agreement": info[name]["top1_agreement"],
                    "joules_per_image": joules.get((name, batch_size)),
                }
            )
    return rows


def _speedups(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    speedups: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["format"] != REFERENCE and row["speedup_vs_torch"] is not None:
            speedups.setdefault(row["format"], {})[str(row["batch_size"])] = row["speedup_vs_torch"]
    return speedups


# --- reports --------------------------------------------------------------------------------

_COLUMNS: list[tuple[str, str]] = [
    ("format", "format"),
    ("batch_size", "batch"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("images_per_s", "images/s"),
    ("speedup_vs_torch", "vs torch"),
    ("peak_rss_mb", "peak RSS MB"),
    ("file_mb", "file MB"),
    ("precision", "precision"),
    ("parity_max_abs_diff", "parity max Δp"),
    ("top1_agreement", "top-1 agreement"),
    ("joules_per_image", "J/image"),
]


def markdown_cell(value: Any) -> str:
    """One Markdown table cell: ``—`` for missing, thousands separators, small floats in
    scientific notation, pipes escaped."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) < 1e-2:
            return f"{value:.1e}"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


CUT_SHORT_MARK = "†"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The results as one Markdown table (latencies are per batch); a row the time bound
    cut short has its format marked ``†``, explained under the table."""
    lines = [
        "| " + " | ".join(title for _, title in _COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
    ]
    for row in rows:
        cells = [markdown_cell(row.get(key)) for key, _ in _COLUMNS]
        if row.get("cut_short"):
            cells[0] += f" {CUT_SHORT_MARK}"
        lines.append("| " + " | ".join(cells) + " |")
    if any(row.get("cut_short") for row in rows):
        lines += [
            "",
            f"{CUT_SHORT_MARK} cut short by the time bound (`--max-seconds`) before its minimum "
            "batches and seconds: fewer samples than asked for.",
        ]
    return "\n".join(lines) + "\n"


def markdown_report(payload: Mapping[str, Any]) -> str:
    """benchmark.md: the table, then how it was measured, what was skipped and why."""
    config, machine, energy = payload["config"], payload["machine"], payload["energy"]
    bound = config.get("max_seconds")  # None: unbounded (JSON has no infinity)
    bound_text = "no time bound" if bound is None else f"a time bound of {bound:g} s"
    lines = [
        f"# Benchmark: {payload['bundle_name']} ({payload['backbone']})",
        "",
        f"{payload['date']} · {machine['cpu']} · {machine.get('gpu') or config['device']} · "
        f"{plural(config['threads'], 'thread')} ({machine['cores_usable']} usable cores) · "
        f"torch {machine['torch']} · onnxruntime {machine['onnxruntime']}",
        "",
        markdown_table(payload["rows"]),
        f"Latency is per batch (ms); images/s = images / timed seconds. Input: "
        f"{'real photos' if payload['input']['real_photos'] else 'seeded synthetic images'} "
        f"({payload['input']['distinct_images']} distinct, "
        f"{'x'.join(map(str, payload['input']['size']))}). Formats were timed interleaved, "
        f"each until it had ≥ {config['min_iterations']} batches and ≥ {config['min_seconds']} s "
        f"per batch size, after {config['warmup']} warm-up batches ({bound_text} on all "
        "warm-up and timing). Peak RSS: a fresh process "
        f"loading one format and running one batch of {max(config['batch_sizes'])}. "
        "File MB: the exported artifact; for torch, the backbone checkpoint (whole model, "
        "text tower included) + head. Parity: from the export record, against torch fp32.",
        "",
    ]
    if payload["random_weights"]:
        lines += ["The backbone has RANDOM WEIGHTS: speed and size are real, predictions not.", ""]
    if energy["available"]:
        lines.append(f"Energy: {energy['source']}.")
    else:
        lines.append(f"Energy per image: unavailable — {energy['reason']}.")
    if payload["skipped"]:
        lines += ["", "Skipped:", ""]
        lines += [f"- **{name}**: {reason}" for name, reason in payload["skipped"].items()]
    return "\n".join(lines).rstrip() + "\n"


def write_outputs(payload: Mapping[str, Any], markdown: str, output: Path) -> dict[str, Path]:
    """benchmark.json, benchmark.md and benchmark.png in ``output``."""
    paths = {kind: output / name for kind, name in OUTPUT_FILES.items()}
    write_json_atomic(paths["json"], payload)
    write_text_atomic(paths["markdown"], markdown)
    config = payload.get("config", {})
    title = (
        f"{payload.get('bundle_name', '')} ({payload.get('backbone', '')}) · "
        f"{config.get('device', 'cpu')}, {config.get('threads', '?')} threads"
    )
    write_chart(payload["rows"], paths["chart"], title=title)
    return paths


def write_chart(rows: Sequence[Mapping[str, Any]], path: Path, *, title: str = "") -> Path:
    """Two panels: throughput per format grouped by batch size, and p50 latency with
    p90-p99 whiskers (log scale); drawn on matplotlib's Agg canvas."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    formats = list(dict.fromkeys(str(row["format"]) for row in rows))
    sizes = sorted({int(row["batch_size"]) for row in rows})
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    throughput, latency = figure.subplots(1, 2)
    colours = colormaps["tab10"]
    width = 0.8 / max(len(formats), 1)
    positions = np.arange(len(sizes))
    by_key = {(str(r["format"]), int(r["batch_size"])): r for r in rows}
    for index, name in enumerate(formats):
        offset = positions - 0.4 + width * (index + 0.5)
        present = [(x, by_key[name, s]) for x, s in zip(offset, sizes, strict=True)
                   if (name, s) in by_key]  # fmt: skip
        if not present:
            continue
        xs = [x for x, _ in present]
        rates = [float(r["images_per_s"]) for _, r in present]
        bars = throughput.bar(xs, rates, width, label=name, color=colours(index % 10))
        labels = [f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in rates]
        throughput.bar_label(bars, labels=labels, fontsize=7, padding=1)
        p50 = np.array([float(r["p50_ms"]) for _, r in present])
        p90 = np.array([float(r["p90_ms"]) for _, r in present])
        p99 = np.array([float(r["p99_ms"]) for _, r in present])
        latency.bar(xs, p50, width, label=name, color=colours(index % 10))
        latency.errorbar(
            xs, p50, yerr=[np.zeros_like(p50), np.maximum(p99 - p50, 0)], fmt="none",
            ecolor="black", elinewidth=0.8, capsize=2,
        )  # fmt: skip
        latency.scatter(xs, p90, marker="_", color="black", s=30, zorder=3)
    axis_labels = (
        (throughput, "images / s (higher is better)"),
        (latency, "ms per batch: p50 bar, p90 tick, p99 whisker (log)"),
    )
    for axis, label in axis_labels:
        axis.set_xticks(positions, [f"batch {s}" for s in sizes])
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
        axis.set_axisbelow(True)
    latency.set_yscale("log")
    latency.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    latency.yaxis.set_minor_formatter(  # label the 2s and 5s between the decades
        FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
    )
    latency.tick_params(axis="y", which="minor", labelsize=7)
    throughput.set_title("Throughput")
    latency.set_title("Latency per batch")
    throughput.legend(fontsize=8, loc="upper left")
    if title:
        figure.suptitle(title)
    with atomic_write(path) as staging:
        figure.savefig(staging, format="png", dpi=110)
    return path


def _log_to_tracker(tracker: Tracker, result: BenchmarkResult) -> None:
    metrics: dict[str, float] = {}
    for row in result.rows:
        prefix = f"{row['format']}.b{row['batch_size']}"
        for key in ("p50_ms", "p90_ms", "p99_ms", "images_per_s", "speedup_vs_torch",
                    "peak_rss_mb", "joules_per_image"):  # fmt: skip
            if row.get(key) is not None:
                metrics[f"{prefix}.{key}"] = float(row[key])
    if metrics:
        tracker.log_metrics(metrics, step=0)
    with tempfile.TemporaryDirectory(prefix="clip-har-benchmark-") as staging:
        for path in result.paths.values():  # one folder: one artifact in every backend
            shutil.copy2(path, Path(staging) / path.name)
        tracker.log_artifact(Path(staging), name="benchmark")
