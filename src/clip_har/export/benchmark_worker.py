"""Peak memory of one engine, measured in a process of its own.

Prints one JSON line for :func:`clip_har.export.benchmark.run_benchmark`, which cannot tell
formats apart inside one process holding them all. See docs/export.md#peak-memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark, in MiB.

    On Linux it is ``VmHWM`` from ``/proc/self/status``: ``getrusage``'s ``ru_maxrss``
    survives ``execve`` and a forked child starts from its parent's peak, so a child of a
    benchmark holding five engines would report the parent's gigabytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, else kB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Peak RSS of one clip-har engine.")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--format", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ignore-parity", action="store_true")
    args = parser.parse_args(argv)

    import numpy as np

    from clip_har.inference.engines import EngineOptions, create_engine
    from clip_har.models.bundle import open_bundle

    bundle = open_bundle(args.bundle)
    height, width = bundle.manifest.preprocessing.output_size
    rng = np.random.default_rng(args.seed)
    pixels = rng.standard_normal((args.batch_size, 3, height, width), dtype=np.float32)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    options = EngineOptions(threads=args.threads, device=args.device, force=args.ignore_parity)
    engine = create_engine(bundle, args.format, options)
    load_s = time.perf_counter() - start
    engine.predict(pixels)
    report = {
        "format": args.format,
        "batch_size": args.batch_size,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_after_imports_mb": round(baseline, 1),
        "load_s": round(load_s, 3),
    }
    print(json.dumps(report), flush=True)  # noqa: T201 - the parent reads this line
    return 0


if __name__ == "__main__":
    sys.exit(main())
