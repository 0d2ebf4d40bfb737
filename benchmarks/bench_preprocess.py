"""Preprocessing throughput: clip_har's Preprocessor vs transformers' CLIPImageProcessorPil.

    .venv/bin/python benchmarks/bench_preprocess.py [--data DIR] [--repeats N]

Side by side in one run, single-threaded, on real JPEGs held in memory:

* end to end: file bytes -> normalised float32 ``[N, 3, 224, 224]`` (JPEG decode by
  Pillow on both sides), in batches as a predictor would call it, and one image per call;
* transform only: the same, from images decoded beforehand;
* multi-worker (ours): a thread pool and a process pool;
* parity: max abs difference between the two outputs over every image.

Runs alternate which side goes first and each ratio is the median of the per-repeat
ratios, so slow drift on a shared machine cancels. Writes
``benchmarks/results/preprocess.{json,md}``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import print_ratios, write_results
from PIL import Image
from transformers import CLIPImageProcessorPil

from clip_har.imaging import ImageConfig, Preprocessor, kernels, load_image, to_rgb

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "har" / "dev" / "images"
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
GOALS = {"ours_vs_hf_single_thread": 3.0, "parity_margin": 1.0}
PARITY_TOLERANCE = 1e-4


# ---------------------------------------------------------------- pipelines


def hf_end_to_end(processor: Any, blobs: Sequence[bytes]) -> np.ndarray:
    images = [Image.open(io.BytesIO(blob)) for blob in blobs]
    pixels: np.ndarray = np.asarray(processor(images, return_tensors="np")["pixel_values"])
    return pixels


def ours_end_to_end(preprocessor: Preprocessor, blobs: Sequence[bytes]) -> np.ndarray:
    pixels: np.ndarray = preprocessor.batch([load_image(blob) for blob in blobs])
    return pixels


_WORKER: Preprocessor | None = None


def _init_worker(config: dict[str, Any]) -> None:
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = Preprocessor(ImageConfig.model_validate(config))


def _worker_batch(blobs: list[bytes]) -> np.ndarray:
    assert _WORKER is not None
    return ours_end_to_end(_WORKER, blobs)


# ---------------------------------------------------------------- timing


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(
    repeats: int, hf: Callable[[], object], ours: Callable[[], object]
) -> tuple[list[float], list[float]]:
    """Interleaved timings; the side that goes first alternates."""
    hf(), ours()  # warm-up: imports, caches, allocator
    hf_times: list[float] = []
    our_times: list[float] = []
    for repeat in range(repeats):
        if repeat % 2 == 0:
            hf_times.append(timed(hf))
            our_times.append(timed(ours))
        else:
            our_times.append(timed(ours))
            hf_times.append(timed(hf))
    return hf_times, our_times


def row(
    impl: str, mode: str, calls: str, workers: int, images: int, times: list[float]
) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "impl": impl,
        "mode": mode,
        "calls": calls,
        "workers": workers,
        "images": images,
        "images_per_s": round(images / median, 1),
        "images_per_s_best": round(images / min(times), 1),
        "ms_per_image": round(median / images * 1e3, 4),
        "repeats": len(times),
    }


def ratio(hf_times: list[float], our_times: list[float]) -> float:
    """Best against best: the least disturbed run of each side (like ``timeit``)."""
    return round(min(hf_times) / min(our_times), 3)


def median_ratio(hf_times: list[float], our_times: list[float]) -> float:
    """Median of the per-repeat ratios of the interleaved runs (the conservative view)."""
    return round(statistics.median(h / o for h, o in zip(hf_times, our_times, strict=True)), 3)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of images")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="for the multi-worker rows")
    args = parser.parse_args(argv)

    files = sorted(p for p in args.data.glob("*") if p.suffix.lower() in SUFFIXES)
    if not args.data.is_dir() or not files:
        print(
            f"error: no images in {args.data} (pass --data DIR; the default is the HAR dev set "
            f"at {DEFAULT_DATA})",
            file=sys.stderr,
        )
        return 2

    torch.set_num_threads(1)
    blobs = [path.read_bytes() for path in files]
    n = len(blobs)
    batches = chunks(blobs, args.batch_size)
    hf = CLIPImageProcessorPil()
    config = ImageConfig.from_hf(hf.to_dict())
    ours = Preprocessor(config)
    print(f"{n} images from {args.data}, batch {args.batch_size}, {args.repeats} repeats")

    # parity, untimed
    worst, mean_abs, over = 0.0, 0.0, 0
    for batch in batches:
        diff = np.abs(hf_end_to_end(hf, batch).astype(np.float64) - ours_end_to_end(ours, batch))
        per_image = diff.reshape(len(batch), -1).max(axis=1)
        worst = max(worst, float(per_image.max()))
        over += int((per_image > PARITY_TOLERANCE).sum())
        mean_abs += float(diff.mean()) * len(batch)
    mean_abs /= n
    print(f"parity: max abs diff {worst:.3g}, mean {mean_abs:.3g}, images over 1e-4: {over}")

    results: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}

    # end to end, batched
    hf_t, our_t = paired(
        args.repeats,
        lambda: [hf_end_to_end(hf, b) for b in batches],
        lambda: [ours_end_to_end(ours, b) for b in batches],
    )
    results += [row("hf", "end_to_end", f"batch_{args.batch_size}", 1, n, hf_t)]
    results += [row("ours", "end_to_end", f"batch_{args.batch_size}", 1, n, our_t)]
    ratios["ours_vs_hf_single_thread"] = ratio(hf_t, our_t)
    ratios["ours_vs_hf_single_thread_median"] = median_ratio(hf_t, our_t)
    hf_e2e_best = min(hf_t)

    # end to end, one image per call (each output dropped as a consumer would)
    def hf_per_image() -> None:
        for blob in blobs:
            hf(Image.open(io.BytesIO(blob)), return_tensors="np")

    def ours_per_image() -> None:
        for blob in blobs:
            ours(load_image(blob))

    hf_t, our_t = paired(args.repeats, hf_per_image, ours_per_image)
    results += [row("hf", "end_to_end", "per_image", 1, n, hf_t)]
    results += [row("ours", "end_to_end", "per_image", 1, n, our_t)]
    ratios["ours_vs_hf_single_thread_per_image"] = ratio(hf_t, our_t)
    ratios["ours_vs_hf_single_thread_per_image_median"] = median_ratio(hf_t, our_t)

    # transform only (decoded beforehand, the same image objects on both sides)
    decoded = [load_image(b) for b in blobs]
    decoded_batches = chunks(decoded, args.batch_size)
    hf_t, our_t = paired(
        args.repeats,
        lambda: [hf(list(b), return_tensors="np") for b in decoded_batches],
        lambda: [ours.batch(b) for b in decoded_batches],
    )
    results += [row("hf", "transform_only", f"batch_{args.batch_size}", 1, n, hf_t)]
    results += [row("ours", "transform_only", f"batch_{args.batch_size}", 1, n, our_t)]
    ratios["ours_vs_hf_transform_only"] = ratio(hf_t, our_t)
    ratios["ours_vs_hf_transform_only_median"] = median_ratio(hf_t, our_t)

    # where our time goes (per image, best of repeats, single thread)
    rgb = [to_rgb(im) for im in decoded]
    resized = [ours.resized_uint8(im) for im in rgb]
    out = np.empty((3, *config.output_size), dtype=np.float32)

    scale, shift = ours._scale, ours._offset

    def normalise_all() -> None:
        for pixels in resized:
            kernels.normalise_into(pixels, scale, shift, out)

    def each(fn: Callable[[Any], object], items: Sequence[Any]) -> Callable[[], None]:
        def run() -> None:
            for item in items:
                fn(item)  # result dropped: no first-touch cost of fresh memory

        return run

    stages = {
        "decode (Image.open + load)": each(lambda b: Image.open(io.BytesIO(b)).load(), blobs),
        "load_image (decode + checks + EXIF)": each(load_image, blobs),
        "to_rgb": each(to_rgb, decoded),
        "resize + crop (exact Pillow kernels)": each(ours.resized_uint8, rgb),
        "normalise (uint8 -> float32)": normalise_all,
        "ours transform (all of the above but decode)": each(ours, decoded),
        "hf transform": each(lambda im: hf(im, return_tensors="np"), decoded),
    }
    stage_ms: dict[str, float] = {}
    for stage, fn in stages.items():
        stage_ms[stage] = min(timed(fn) for _ in range(args.repeats)) / n * 1e3
        results.append({"impl": "stage", "mode": stage, "ms_per_image": round(stage_ms[stage], 4)})

    # multi-worker (ours), and transformers in the same thread pool for comparison
    def pool_run(executor: Executor, fn: Callable[[Any], object], work: list[Any]) -> float:
        return timed(lambda: list(executor.map(fn, work)))

    with ThreadPoolExecutor(args.workers) as pool:
        pool_run(pool, lambda b: ours_end_to_end(ours, b), batches)  # warm-up
        our_threads = [
            pool_run(pool, lambda b: ours_end_to_end(ours, b), batches) for _ in range(args.repeats)
        ]
        hf_threads = [
            pool_run(pool, lambda b: hf_end_to_end(hf, b), batches) for _ in range(args.repeats)
        ]
    results += [row("ours", "end_to_end", "threads", args.workers, n, our_threads)]
    results += [row("hf", "end_to_end", "threads", args.workers, n, hf_threads)]
    with ProcessPoolExecutor(
        args.workers, initializer=_init_worker, initargs=(config.model_dump(),)
    ) as procs:
        pool_run(procs, _worker_batch, [list(b) for b in batches])  # warm-up
        our_procs = [
            pool_run(procs, _worker_batch, [list(b) for b in batches]) for _ in range(args.repeats)
        ]
    results += [row("ours", "end_to_end", "processes", args.workers, n, our_procs)]
    ratios[f"ours_{args.workers}threads_vs_hf_single_thread"] = round(
        hf_e2e_best / min(our_threads), 3
    )
    ratios[f"ours_{args.workers}processes_vs_hf_single_thread"] = round(
        hf_e2e_best / min(our_procs), 3
    )
    ratios[f"ours_vs_hf_{args.workers}threads_each"] = round(min(hf_threads) / min(our_threads), 3)

    ratios["parity_margin"] = round(PARITY_TOLERANCE / max(worst, 1e-12), 3)
    results.append(
        {
            "impl": "parity",
            "mode": "ours vs hf, all images",
            "images": n,
            "max_abs_diff": worst,
            "mean_abs_diff": mean_abs,
            "images_over_1e-4": over,
        }
    )
    notes = (
        f"{n} images from {args.data} held in memory; torch threads = 1; cores = "
        f"{os.cpu_count()}. End to end = bytes -> float32 [N,3,224,224] with Pillow decoding "
        "on both sides (transformers: Image.open + CLIPImageProcessorPil(return_tensors='np'); "
        "ours: load_image (size guards, full decode, EXIF) + Preprocessor.batch). Runs are "
        "interleaved (the side going first alternates); a ratio is best time / best time, and "
        "NAME_median is the median of the per-repeat ratios (this 2-core VM is noisy: kernel "
        "time for page faults and transparent-huge-page compaction swings from run to run). "
        "parity_margin = 1e-4 / max abs diff. "
        "The uint8 pixels after resize+crop are bit-identical to transformers' (our kernels "
        "reproduce Pillow's fixed-point resampling exactly, computing only the pixels that "
        "survive the centre crop); the remaining difference is float32 rounding of the fused "
        "normalisation. Decode is a cost both sides share "
        f"({stage_ms['decode (Image.open + load)']:.3f} ms/img). Batch rows pay for a fresh "
        "[32,3,224,224] output per call (page faults are expensive on this VM); "
        "Preprocessor.batch(out=...) can reuse one."
    )
    json_path, md_path = write_results("preprocess", results, ratios, GOALS, notes)

    for r in results:
        if "images_per_s" in r:
            print(
                f"  {r['impl']:5s} {r['mode']:15s} {r['calls']:10s} workers={r['workers']} "
                f"{r['images_per_s']:8.1f} img/s  ({r['ms_per_image']:.3f} ms/img)"
            )
        elif r["impl"] == "stage":
            print(f"  stage {r['mode']:38s} {r['ms_per_image']:.3f} ms/img")
    print_ratios(ratios, GOALS, (json_path, md_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
