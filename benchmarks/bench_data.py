"""Data platform: validation throughput and near-duplicate search scaling.

    .venv/bin/python benchmarks/bench_data.py [--data DIR] [--repeats N]

* validation: :func:`clip_har.data.validate.validate` (read + sha256 + full decode + EXIF +
  perceptual hash + duplicate report, 2 threads) over the HAR dev photos, images/s;
* near-duplicate search: :class:`clip_har.data.duplicates.HashIndex` (multi-index hashing)
  on 10k, 20k and 40k synthetic 64-bit hashes with planted near duplicates, distance <= 4.
  The index must find exactly the pairs all-pairs finds (checked at 10k); the growth
  exponent is log(t40k / t10k) / log(4); all-pairs time at 40k is estimated from a timed
  sample of rows (vectorised numpy popcount, the strong baseline) and scaled by n^2.

Writes ``benchmarks/results/data.{json,md}``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _results import print_ratios, write_results

from clip_har.data.duplicates import HashIndex, brute_force_pairs
from clip_har.data.manifest import conform
from clip_har.data.validate import WORKERS, validate

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "har" / "dev"
SIZES = (10_000, 20_000, 40_000)
DISTANCE = 4
GOALS = {
    "near_dup_subquadratic_margin": 1.0,  # 2 / growth exponent: > 1 means sub-quadratic
    "index_vs_all_pairs_at_40k": 10.0,  # index at least 10x faster than all pairs at 40k
    "index_matches_brute_force_at_10k": 1.0,
}


def synthetic_hashes(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct hashes: 98% uniform random, 2% planted copies with 1-4 bits flipped."""
    rng = np.random.default_rng(seed)
    planted = n // 50
    base = rng.integers(0, 2**64, size=n - planted, dtype=np.uint64)
    near = base[rng.integers(0, len(base), size=planted)].copy()
    for row in range(planted):
        for bit in rng.choice(64, size=int(rng.integers(1, DISTANCE + 1)), replace=False):
            near[row] ^= np.uint64(1) << np.uint64(bit)
    return np.unique(np.concatenate([base, near]))


def best_time(fn: Any, repeats: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labels.csv + images/")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    results: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    notes: list[str] = []

    labels_csv = args.data / "labels.csv"
    if labels_csv.is_file():
        labels = pd.read_csv(labels_csv)
        images = args.data / "images"
        frame = conform(
            pd.DataFrame(
                {
                    "path": [str((images / name).resolve()) for name in labels["filename"]],
                    "label": labels["label"],
                }
            )
        )
        validate(frame.head(32), classes=None)  # warm-up: imports, page cache
        times = []
        report: dict[str, Any] = {}
        for _ in range(args.repeats):
            start = time.perf_counter()
            report = validate(frame, classes=None).report
            times.append(time.perf_counter() - start)
        n = len(frame)
        results.append(
            {
                "task": "validate (decode + sha256 + phash + report)",
                "items": n,
                "threads": WORKERS,
                "seconds": round(statistics.median(times), 4),
                "images_per_s": round(n / statistics.median(times), 1),
                "images_per_s_best": round(n / min(times), 1),
                "accepted": report["accepted"],
                "exact_duplicate_groups": report["exact_duplicate_groups"],
                "exact_duplicate_extra_copies": report["exact_duplicate_extra_copies"],
                "near_duplicate_groups": report["near_duplicate_groups"],
            }
        )
        notes.append(
            f"Validation over {n} photos from {args.data} ({WORKERS} threads, files in the "
            f"page cache after a warm-up): {report['exact_duplicate_groups']} byte-identical "
            f"duplicate groups ({report['exact_duplicate_extra_copies']} extra copies), "
            f"{report['near_duplicate_groups']} near-duplicate groups of different files."
        )
    else:
        print(f"no {labels_csv}: skipping validation throughput", file=sys.stderr)
        notes.append(f"validation throughput skipped: {labels_csv} not found")

    timings: dict[int, float] = {}
    for size in SIZES:
        hashes = synthetic_hashes(size, seed=size)
        HashIndex(hashes[:1000], DISTANCE).pairs()  # warm-up
        seconds, pairs = best_time(lambda h=hashes: HashIndex(h, DISTANCE).pairs(), args.repeats)
        timings[size] = seconds
        row: dict[str, Any] = {
            "task": "near-duplicate pairs (multi-index hashing)",
            "items": len(hashes),
            "seconds": round(seconds, 5),
            "pairs_found": len(pairs),
            "chunks": HashIndex(hashes, DISTANCE).chunks,
        }
        if size == SIZES[0]:
            brute_seconds, expected = best_time(lambda h=hashes: brute_force_pairs(h, DISTANCE), 1)
            same = bool(np.array_equal(pairs, expected))
            ratios["index_matches_brute_force_at_10k"] = 1.0 if same else 0.0
            row["matches_all_pairs"] = same
            results.append(
                {
                    "task": "near-duplicate pairs (all pairs, numpy popcount)",
                    "items": len(hashes),
                    "seconds": round(brute_seconds, 5),
                    "pairs_found": len(expected),
                }
            )
        results.append(row)
        if size == SIZES[-1]:
            # all pairs at 40k, estimated: time a sample of rows against every hash
            sample = 2048
            start = time.perf_counter()
            for begin in range(0, sample, 512):
                rows = hashes[begin : begin + 512]
                np.nonzero(np.bitwise_count(rows[:, None] ^ hashes[None, :]) <= DISTANCE)
            per_row = (time.perf_counter() - start) / sample
            estimate = per_row * len(hashes) / 2  # each pair once
            results.append(
                {
                    "task": "near-duplicate pairs (all pairs, estimated)",
                    "items": len(hashes),
                    "seconds": round(estimate, 3),
                    "estimated_from_rows": sample,
                }
            )
            ratios["index_vs_all_pairs_at_40k"] = round(estimate / seconds, 2)

    small, large = SIZES[0], SIZES[-1]
    exponent = math.log(timings[large] / timings[small]) / math.log(large / small)
    half = math.log(timings[SIZES[1]] / timings[small]) / math.log(SIZES[1] / small)
    results.append(
        {
            "task": "near-duplicate growth exponent (10k -> 40k)",
            "items": large,
            "exponent": round(exponent, 3),
            "exponent_10k_20k": round(half, 3),
        }
    )
    ratios["near_dup_subquadratic_margin"] = round(2.0 / max(exponent, 1e-6), 3)
    notes.append(
        f"Near-duplicate search: distance <= {DISTANCE}, 98% random hashes + 2% planted near "
        "copies, best of "
        f"{args.repeats}. Growth exponent {exponent:.2f} (all pairs is 2.0); "
        "near_dup_subquadratic_margin = 2 / exponent. The all-pairs baseline is vectorised "
        "numpy (bitwise_count over blocks of 512 rows), timed on 2,048 rows and scaled to "
        "n(n-1)/2 pairs."
    )

    json_path, md_path = write_results("data", results, ratios, GOALS, " ".join(notes))
    for r in results:
        print("  " + ", ".join(f"{k}={v}" for k, v in r.items() if v is not None))
    print_ratios(ratios, GOALS, (json_path, md_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
