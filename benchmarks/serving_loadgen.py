"""Closed-loop HTTP load generator for ``bench_serving.py`` (run as its own process, so
the client's CPU shows apart from the server's).

    python benchmarks/serving_loadgen.py --url URL --kind v1|mlflow|bentoml --image FILE
        --concurrency N --warmup S --duration S

N workers each send one request, wait for its answer, then send the next, for ``warmup``
seconds (not recorded) and then ``duration`` seconds (recorded). A request counts when its
answer (2xx) arrives inside the recorded window, whenever it was sent. Prints one JSON
line: requests, errors (with a few samples), images/s, latency percentiles and this
process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REQUEST_TIMEOUT_S = 120.0


def request_spec(kind: str, image: bytes) -> dict[str, Any]:
    """The ``httpx`` keyword arguments of one request to the server ``kind``."""
    if kind == "v1":  # clip-har serve: POST /v1/predict, multipart field `file`
        return {"files": {"file": ("photo.jpg", image, "image/jpeg")}}
    if kind == "mlflow":  # mlflow models serve: /invocations, the pyfunc's `image` column
        body = {
            "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image).decode()]]}
        }
        return {
            "content": json.dumps(body).encode(),
            "headers": {"Content-Type": "application/json"},
        }
    if kind == "bentoml":  # the benchmark's BentoML service: a batchable list of images
        return {"files": [("images", ("photo.jpg", image, "image/jpeg"))]}
    raise ValueError(f"unknown kind {kind!r}")


async def run(
    url: str, kind: str, image: bytes, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    """Drive ``url`` with ``concurrency`` closed-loop workers; the recorded figures."""
    spec = request_spec(kind, image)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    record_from, stop_at = start + warmup, start + warmup + duration

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop_at:
            sent = time.perf_counter()
            try:
                answer = await client.post(url, **spec)
                ok = answer.is_success
                problem = "" if ok else f"HTTP {answer.status_code}: {answer.text[:200]}"
            except httpx.HTTPError as exc:
                ok, problem = False, f"{type(exc).__name__}: {exc}"
            done = time.perf_counter()
            if record_from <= done <= stop_at:  # answered inside the recorded window
                if ok:
                    latencies.append(done - sent)
                else:
                    errors.append(problem)
            elif not ok and done <= record_from:
                await asyncio.sleep(0.05)  # a failing warm-up must not spin

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    values = np.asarray(latencies) * 1000.0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    wall = time.perf_counter() - start

    def pct(q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if values.size else None

    return {
        "requests": int(values.size),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "seconds": duration,
        "images_per_s": round(values.size / duration, 3),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "mean_ms": round(float(values.mean()), 2) if values.size else None,
        "client_cpu_s": round(cpu, 2),
        "client_cpu_pct": round(100.0 * cpu / wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", choices=("v1", "mlflow", "bentoml"), required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    figures = asyncio.run(
        run(
            args.url,
            args.kind,
            args.image.read_bytes(),
            args.concurrency,
            args.warmup,
            args.duration,
        )
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
