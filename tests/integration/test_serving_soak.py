"""Acceptance 6 of issue 15: a bounded soak of a real ``clip-har serve`` at concurrency 64.

The server runs with a small queue (``--max-queue 8``, ``--max-batch-size 4``) so load
shedding really happens even on a slow CI machine, a 2 MB upload cap, and a request deadline
far beyond the soak, so a 504 would be a bug. After a warm-up of the same mix (so allocator
arenas, thread pools and store connections exist), the server's RSS (``VmRSS``) and open
file descriptors are recorded. Then 64 concurrent clients send a fixed rotation of good
requests (JPEG and PNG predicts, a batch with one bad image, open-vocabulary classify, v2
infer with BYTES and FP32 inputs, feedback), bad ones (zero bytes, truncated JPEG, a text
file, invalid base64, a wrong content type, a PNG whose header claims 30000x30000 pixels, a
body just over the cap) and requests the client cancels mid-flight, for ``SOAK_S`` seconds
or ``SOAK_MAX_REQUESTS`` requests, whichever comes first.

Load is 40 seconds: CI has 2 cores shared by client and server, and 40 s at concurrency 64
is thousands of requests, enough for a leak of a buffer, a socket or a store connection per
request to show; with start-up and warm-up the test stays under 2 minutes.

It asserts: no 5xx other than 503 (counted; each with ``Retry-After`` and a JSON body), every
4xx a JSON error body of its protocol, each request kind only its documented statuses, no
client-side transport error; the server's own request metrics count no 5xx but 503 either
(a client that went away is not a server error) and its log holds no traceback; once the
queue is empty, RSS within 10% of the baseline, the fd count back to the baseline (+2 for
files opened lazily, e.g. a store connection opened by a late request), and a good predict
still answered 200.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import os
import random
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import free_port
from feedback_server import ServeProcess
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from clip_har.serving.v2_codec import HEADER_LENGTH, encode_request

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONCURRENCY = 64
SOAK_S = 40.0  # seconds of load (see the module docstring)
SOAK_MAX_REQUESTS = 20_000
WARMUP_REQUESTS = 400
MAX_UPLOAD_BYTES = 2_000_000
MAX_QUEUE = 8
RSS_GROWTH = 0.10
FD_SLACK = 2  # lazily opened files (a store connection a late request opened)
SETTLE_S = 30.0  # bounded wait for the queue to empty and sockets to close

GOOD = frozenset({200, 503})  # a request that reaches the batcher may be shed


def _photo(fmt: str, seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(buffer, fmt)
    return buffer.getvalue()


def _png_bomb_header() -> bytes:
    """A PNG whose IHDR claims 30000 x 30000 pixels (900 megapixels) with a token IDAT: the
    pixel limit must refuse it from the header, before any decoding."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class Call:
    """One HTTP request of the mix, and the statuses it may be answered with."""

    kind: str
    path: str
    expected: frozenset[int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    cancel_after_s: float | None = None  # the client disconnects mid-flight


@dataclass
class Tally:
    """What the soak saw: statuses by request kind, problems, prediction ids for feedback."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    cancelled: int = 0
    problems: list[str] = field(default_factory=list)
    prediction_ids: list[str] = field(default_factory=list)

    def by_status(self) -> Counter[int]:
        counts: Counter[int] = Counter()
        for (_, status), n in self.statuses.items():
            counts[status] += n
        return counts

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())


class Mix:
    """A fixed rotation of good, bad, oversized and cancelled requests."""

    def __init__(self, model: dict[str, Any], tally: Tally) -> None:
        self.model_name = model["name"]
        self.classes = model["classes"]
        height, width = model["image_size"]
        self.tally = tally
        self.jpegs = [_photo("JPEG", seed) for seed in range(8)]
        self.pngs = [_photo("PNG", seed, (80, 120)) for seed in range(8, 12)]
        self.truncated = self.jpegs[0][: len(self.jpegs[0]) // 2]
        self.bomb = _png_bomb_header()
        self.oversized = b"\xff\xd8\xff" + b"\x00" * (MAX_UPLOAD_BYTES + 1_000)
        pixels = np.random.default_rng(0).standard_normal((1, 3, height, width)).astype("<f4")
        self.v2_pixels = encode_request([("pixels", "FP32", pixels.shape, pixels)])
        self.v2_images = [
            encode_request([("image", "BYTES", [1], [jpeg])]) for jpeg in self.jpegs[:4]
        ]
        self.makers: list[Callable[[int], Call]] = [
            self.predict_jpeg,
            self.feedback,
            self.predict_png_json,
            self.empty,
            self.classify,
            self.predict_jpeg,
            self.truncated_jpeg,
            self.batch,
            self.v2_bytes,
            self.text_file,
            self.predict_jpeg,
            self.invalid_base64,
            self.v2_fp32,
            self.wrong_content_type,
            self.cancelled,
            self.classify,
            self.bomb_header,
            self.predict_png_json,
            self.oversized_body,
            self.feedback,
        ]

    def calls(self) -> Iterator[Call]:
        for index in itertools.count():
            yield self.makers[index % len(self.makers)](index)

    # ------------------------------------------------------------------ good requests

    def predict_jpeg(self, i: int) -> Call:
        files = {"file": ("p.jpg", self.jpegs[i % len(self.jpegs)], "image/jpeg")}
        return Call("predict-jpeg", "/v1/predict", GOOD, {"files": files})

    def predict_png_json(self, i: int) -> Call:
        image = base64.b64encode(self.pngs[i % len(self.pngs)]).decode()
        return Call("predict-png-json", "/v1/predict", GOOD, {"json": {"image_base64": image}})

    def batch(self, i: int) -> Call:
        parts = [("files", (f"{n}.jpg", self.jpegs[(i + n) % 8], "image/jpeg")) for n in range(3)]
        parts.append(("files", ("cut.jpg", self.truncated, "image/jpeg")))
        return Call("batch", "/v1/predict/batch", GOOD, {"files": parts})

    def classify(self, i: int) -> Call:
        files = {"file": ("p.jpg", self.jpegs[i % len(self.jpegs)], "image/jpeg")}
        data = {"labels": "running,cycling,sleeping", "top_k": "2"}
        return Call("classify", "/v1/classify", GOOD, {"files": files, "data": data})

    def v2_bytes(self, i: int) -> Call:
        body, length = self.v2_images[i % len(self.v2_images)]
        headers = {HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"}
        path = f"/v2/models/{self.model_name}/infer"
        return Call("v2-bytes", path, GOOD, {"content": body, "headers": headers})

    def v2_fp32(self, i: int) -> Call:
        body, length = self.v2_pixels
        headers = {HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"}
        path = f"/v2/models/{self.model_name}/infer"
        return Call("v2-fp32", path, GOOD, {"content": body, "headers": headers})

    def feedback(self, i: int) -> Call:
        known = self.tally.prediction_ids
        if not known:  # nothing predicted yet: an unknown id is a 404
            body = {"prediction_id": os.urandom(16).hex(), "correct": True}
            return Call("feedback-unknown", "/v1/feedback", frozenset({404}), {"json": body})
        correct = i % 2 == 0  # a "wrong" verdict names the right label
        label = None if correct else self.classes[i % len(self.classes)]
        body = {"prediction_id": known[i % len(known)], "correct": correct, "label": label}
        return Call("feedback", "/v1/feedback", frozenset({201}), {"json": body})

    def cancelled(self, i: int) -> Call:
        files = {"file": ("p.jpg", self.jpegs[i % len(self.jpegs)], "image/jpeg")}
        delay = random.Random(i).uniform(0.0, 0.05)
        return Call("cancelled", "/v1/predict", GOOD, {"files": files}, cancel_after_s=delay)

    # ------------------------------------------------------------------- bad requests

    def empty(self, i: int) -> Call:
        files = {"file": ("empty.jpg", b"", "image/jpeg")}
        return Call("empty", "/v1/predict", frozenset({400}), {"files": files})

    def truncated_jpeg(self, i: int) -> Call:
        files = {"file": ("cut.jpg", self.truncated, "image/jpeg")}
        return Call("truncated", "/v1/predict", frozenset({400}), {"files": files})

    def text_file(self, i: int) -> Call:
        files = {"file": ("notes.jpg", b"this is not an image\n" * 20, "image/jpeg")}
        return Call("text-file", "/v1/predict", frozenset({415}), {"files": files})

    def invalid_base64(self, i: int) -> Call:
        body = {"image_base64": "not*base64!!" * 10}
        return Call("invalid-base64", "/v1/predict", frozenset({400}), {"json": body})

    def wrong_content_type(self, i: int) -> Call:
        kwargs = {"content": self.jpegs[0], "headers": {"Content-Type": "text/plain"}}
        return Call("wrong-content-type", "/v1/predict", frozenset({415}), kwargs)

    def bomb_header(self, i: int) -> Call:
        files = {"file": ("bomb.png", self.bomb, "image/png")}
        return Call("png-bomb", "/v1/predict", frozenset({413}), {"files": files})

    def oversized_body(self, i: int) -> Call:
        files = {"file": ("big.jpg", self.oversized, "image/jpeg")}
        return Call("oversized", "/v1/predict", frozenset({413}), {"files": files})


def _check_answer(call: Call, answer: httpx.Response, tally: Tally) -> None:
    """Count ``answer`` and note what is wrong with it."""
    status = answer.status_code
    tally.statuses[(call.kind, status)] += 1
    where = f"{call.kind} -> {status}"
    if "x-request-id" not in answer.headers:
        tally.problems.append(f"{where}: no X-Request-ID")
    if status not in call.expected:
        tally.problems.append(f"{where} (expected {sorted(call.expected)}): {answer.text[:300]}")
    if status >= 400:
        try:
            body = answer.json()
        except ValueError:
            tally.problems.append(f"{where}: not a JSON error body: {answer.text[:200]!r}")
            return
        error = body.get("error") if isinstance(body, dict) else None
        if call.path.startswith("/v2"):
            well_formed = isinstance(error, str) and bool(error)
        else:
            well_formed = isinstance(error, dict) and {"code", "message", "request_id"} <= set(
                error
            )
        if not well_formed:
            tally.problems.append(f"{where}: malformed error body {body!r:.200}")
        if status == 503 and not answer.headers.get("retry-after", "").isdigit():
            tally.problems.append(f"{where}: 503 without a Retry-After: {answer.headers}")
        return
    if call.kind == "batch":
        items = answer.json()["predictions"]
        errors = [item for item in items if "error" in item]
        if len(items) != 4 or len(errors) != 1:
            tally.problems.append(f"{where}: batch items {items!r:.300}")
    if call.path.startswith("/v1/predict") or call.kind == "classify":
        body = answer.json()
        ids = [body["prediction_id"]] if "prediction_id" in body else []
        ids += [item["prediction_id"] for item in body.get("predictions", []) if "label" in item]
        tally.prediction_ids.extend(ids[:1])
        if len(tally.prediction_ids) > 1000:
            del tally.prediction_ids[:500]


async def _send(client: httpx.AsyncClient, call: Call, tally: Tally) -> None:
    request = client.post(call.path, **call.kwargs)
    if call.cancel_after_s is not None:
        task = asyncio.ensure_future(request)
        await asyncio.sleep(call.cancel_after_s)
        if not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                tally.cancelled += 1
                return
            except httpx.TransportError:
                tally.cancelled += 1
                return
        request = task
    try:
        answer = await request
    except httpx.TransportError as exc:  # none expected: the server must answer everything
        tally.statuses[(call.kind, -1)] += 1
        tally.problems.append(f"{call.kind}: {type(exc).__name__}: {exc}")
        return
    _check_answer(call, answer, tally)


async def _drive(url: str, mix: Mix, tally: Tally, *, requests: int, seconds: float) -> None:
    """``CONCURRENCY`` workers take the next request of the mix until ``requests`` were sent
    or ``seconds`` passed."""
    calls = mix.calls()
    sent = 0
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def worker() -> None:
            nonlocal sent
            while sent < requests and time.monotonic() < stop_at:
                sent += 1
                await _send(client, next(calls), tally)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def _queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "clip_har_queue_depth":
            return sum(sample.value for sample in family.samples)
    raise AssertionError("no clip_har_queue_depth in /metrics")


def _server_statuses(url: str) -> Counter[int]:
    """Requests by status as the server itself counted them (its latency histogram)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    counts: Counter[int] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "clip_har_request_duration_seconds":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    counts[int(sample.labels["status"])] += int(sample.value)
    return counts


def _settle(url: str, pid: int, fd_limit: int | None) -> int:
    """Wait (bounded) for an empty queue and for the fd count to fall to ``fd_limit`` (or,
    with ``None``, to stop changing); the fd count."""
    deadline = time.monotonic() + SETTLE_S
    previous = -1
    while True:
        depth, fds = _queue_depth(url), _fds(pid)
        settled = fds <= fd_limit if fd_limit is not None else fds == previous
        if (depth == 0 and settled) or time.monotonic() > deadline:
            return fds
        previous = fds
        time.sleep(1.0 if fd_limit is None else 0.5)


def _summary(tally: Tally) -> str:
    lines = [f"answered {tally.answered}, cancelled by the client {tally.cancelled}"]
    lines.append("by status: " + json.dumps(dict(sorted(tally.by_status().items()))))
    by_kind: dict[str, dict[int, int]] = {}
    for (kind, status), n in sorted(tally.statuses.items()):
        by_kind.setdefault(kind, {})[status] = n
    lines += [f"  {kind}: {counts}" for kind, counts in by_kind.items()]
    return "\n".join(lines)


@pytest.fixture
def soak_server(tiny_onnx_bundle: Path, tmp_path: Path) -> Iterator[ServeProcess]:
    env = {
        "CLIP_HAR_SERVE_DATABASE_URL": f"sqlite:///{tmp_path / 'soak.db'}",
        "CLIP_HAR_SERVE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        # far beyond the soak: no request may expire, so a 504 would be a bug
        "CLIP_HAR_SERVE_REQUEST_TIMEOUT_S": "600",
    }
    server = ServeProcess(
        tiny_onnx_bundle,
        free_port(),
        tmp_path / "serve.log",
        env,
        *("--format", "onnx-int8", "--max-queue", str(MAX_QUEUE), "--max-batch-size", "4"),
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_soak_at_concurrency_64_sheds_with_503_and_leaks_no_memory_or_fds(
    soak_server: ServeProcess,
) -> None:
    url = soak_server.url
    assert soak_server.process is not None
    pid = soak_server.process.pid
    model = httpx.get(f"{url}/v1/model", timeout=10).json()

    warm = Tally()
    asyncio.run(_drive(url, Mix(model, warm), warm, requests=WARMUP_REQUESTS, seconds=60))
    assert warm.problems == [], "\n".join(warm.problems[:20])
    _settle(url, pid, fd_limit=None)  # the warm-up's connections close
    rss_before, fds_before = _rss_kb(pid), _fds(pid)
    server_before = _server_statuses(url)
    log_offset = soak_server.log.stat().st_size

    tally = Tally()
    started = time.monotonic()
    asyncio.run(_drive(url, Mix(model, tally), tally, requests=SOAK_MAX_REQUESTS, seconds=SOAK_S))
    load_s = time.monotonic() - started
    fds_after = _settle(url, pid, fd_limit=fds_before + FD_SLACK)
    rss_after = _rss_kb(pid)
    final = httpx.post(
        f"{url}/v1/predict",
        files={"file": ("p.jpg", _photo("JPEG", 99), "image/jpeg")},
        timeout=60,
    )

    by_status = tally.by_status()
    server_counted = _server_statuses(url) - server_before
    with soak_server.log.open(errors="replace") as log:
        log.seek(log_offset)
        server_log = log.read()
    tracebacks = server_log.count("Traceback")
    growth = (rss_after - rss_before) / rss_before
    print(
        f"\nsoak: {load_s:.1f} s at concurrency {CONCURRENCY}, "
        f"{tally.answered / load_s:.0f} answers/s\n{_summary(tally)}\n"
        f"RSS {rss_before / 1024:.1f} MiB -> {rss_after / 1024:.1f} MiB ({growth:+.1%}); "
        f"fds {fds_before} -> {fds_after}; 503s {by_status[503]}\n"
        f"the server's own count by status: {json.dumps(dict(sorted(server_counted.items())))}; "
        f"tracebacks in its log: {tracebacks}"
    )
    assert soak_server.process.poll() is None, soak_server.tail()
    assert tally.problems == [], f"{len(tally.problems)} problems:\n" + "\n".join(
        tally.problems[:30]
    )
    server_errors = {s: n for s, n in by_status.items() if s >= 500 and s != 503}
    assert server_errors == {}, _summary(tally)
    assert by_status[-1] == 0, "client-side transport errors"
    # what the server recorded: a client that went away is no 5xx, and nothing crashed
    counted_errors = {s: n for s, n in server_counted.items() if s >= 500 and s != 503}
    assert counted_errors == {}, f"the server counted 5xx: {counted_errors}"
    first = server_log.find("Traceback")
    assert tracebacks == 0, (
        f"{tracebacks} tracebacks in the server log, the first:\n"
        + (server_log[max(0, first - 300) : first + 3000])
    )
    assert by_status[200] > 0 and by_status[201] > 0 and by_status[413] > 0
    assert growth < RSS_GROWTH, f"RSS grew {growth:.1%}: {rss_before} -> {rss_after} kB"
    assert fds_after <= fds_before + FD_SLACK, f"fds {fds_before} -> {fds_after}"
    assert final.status_code == 200, final.text
