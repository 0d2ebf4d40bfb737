"""``clip-har serve`` as a real process on 127.0.0.1: readiness follows loading, a reload
under load fails no request, and SIGTERM under load fails no accepted request and exits 0.

"Accepted" is precise here: a request whose connection was open and whose bytes were sent
before SIGTERM. Every such request must get a 2xx. Requests sent after SIGTERM may be
refused (connection refused, or a 503 ``draining``/``not_ready``), never a 5xx other than 503.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import CLI, free_port, run_cli, stop_process_group
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ADMIN_KEY = "lifecycle-admin-key-0123456789"
CLIENTS = 8
STARTUP_S = 180  # bounded: a cold start imports the stack and loads the model


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(small).resize((96, 72), Image.Resampling.BICUBIC).save(buffer, "JPEG")
    return buffer.getvalue()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _start(bundle: Path, tmp_path: Path, *args: str) -> Server:
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    env = {
        **os.environ,
        # JSON list: settings.py's comma form fails on env (reported to the lead)
        "CLIP_HAR_SERVE_ADMIN_API_KEYS": ADMIN_KEY,
        "CLIP_HAR_SERVE_DATABASE_URL": f"sqlite:///{tmp_path / 'serving.db'}",
        "CLIP_HAR_SERVE_DRAIN_GRACE_S": "20",
    }
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [CLI, "serve", "--bundle", str(bundle), "--port", str(port), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return Server(process, f"http://127.0.0.1:{port}", log)


def _wait_ready(server: Server) -> list[int]:
    """Poll readiness until 200; the statuses seen on the way."""
    seen: list[int] = []
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.output()
        try:
            answer = httpx.get(f"{server.url}/v2/health/ready", timeout=5)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        seen.append(answer.status_code)
        if answer.status_code == 200:
            return seen
        assert answer.status_code == 503, answer.text
        assert answer.json()["status"] == "loading", answer.text
        time.sleep(0.05)
    raise AssertionError(f"not ready within {STARTUP_S} s:\n{server.output()}")


@pytest.fixture
def server(tiny_onnx_bundle: Path, tmp_path: Path) -> Iterator[Server]:
    started = _start(tiny_onnx_bundle, tmp_path, "--max-batch-size", "8", "--max-wait-ms", "20")
    try:
        yield started
    finally:
        stop_process_group(started.process)


@dataclass
class Load:
    """``CLIENTS`` threads posting /v1/predict until ``stop`` is set."""

    url: str
    keep_alive: bool = True
    stop: threading.Event = field(default_factory=threading.Event)
    busy: list[bool] = field(default_factory=lambda: [False] * CLIENTS)
    outcomes: list[tuple[bool, int | str, dict[str, Any] | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def run(self, index: int) -> None:
        image = _jpeg(index)
        headers = {} if self.keep_alive else {"Connection": "close"}
        with httpx.Client(base_url=self.url, timeout=60, headers=headers) as client:
            while not self.stop.is_set():
                self.busy[index] = True
                sent_before_stop = not self.stop.is_set()
                try:
                    answer = client.post(
                        "/v1/predict", files={"file": ("p.jpg", image, "image/jpeg")}
                    )
                    body = answer.json() if answer.content else None
                    outcome: int | str = answer.status_code
                except httpx.TransportError as exc:
                    outcome, body = type(exc).__name__, None
                finally:
                    self.busy[index] = False
                with self.lock:
                    self.outcomes.append((sent_before_stop, outcome, body))

    def __enter__(self) -> Load:
        self.threads = [
            threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(CLIENTS)
        ]
        for thread in self.threads:
            thread.start()
        return self

    def wait_for_traffic(self, answers: int) -> None:
        deadline = time.monotonic() + 120
        while len(self.outcomes) < answers:
            assert time.monotonic() < deadline, "no traffic"
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


def test_readiness_is_503_while_loading_then_200(server: Server) -> None:
    seen = _wait_ready(server)
    assert seen[-1] == 200
    assert set(seen) <= {200, 503}
    assert httpx.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
    index = httpx.get(f"{server.url}/", timeout=5).json()
    assert index["docs"] == "/docs"


def test_reload_under_load_fails_no_request(
    server: Server, tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    _wait_ready(server)
    other = tmp_path / "other-bundle"
    shutil.copytree(tiny_onnx_bundle, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["name"] = "tiny-har-other"
    (other / "manifest.json").write_text(json.dumps(manifest))
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    versions = []
    with Load(server.url) as load:
        load.wait_for_traffic(CLIENTS)
        for source in (other, tiny_onnx_bundle):
            answer = httpx.post(
                f"{server.url}/v1/admin/reload",
                json={"source": str(source)},
                headers=admin,
                timeout=120,
            )
            assert answer.status_code == 200, answer.text
            versions.append(answer.json()["model"]["version"])
            load.wait_for_traffic(len(load.outcomes) + CLIENTS)
    failed = [outcome for _, outcome, _ in load.outcomes if outcome != 200]
    assert failed == [], f"{len(failed)} of {len(load.outcomes)} requests failed: {failed[:5]}"
    served = {body["model"]["version"] for _, _, body in load.outcomes if body}
    assert set(versions) <= served  # both models answered requests
    assert versions[0] != versions[1]


def test_sigterm_under_load_fails_no_accepted_request_and_exits_0(
    tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    # requests wait up to 200 ms in the batcher, so many are in flight when SIGTERM arrives
    server = _start(tiny_onnx_bundle, tmp_path, "--max-batch-size", "16", "--max-wait-ms", "200")
    try:
        _wait_ready(server)
        with Load(server.url, keep_alive=False) as load:
            load.wait_for_traffic(CLIENTS)
            deadline = time.monotonic() + 60
            while not all(load.busy):  # every client has a request on its way
                assert time.monotonic() < deadline
                time.sleep(0.001)
            load.stop.set()  # nothing new starts after this
            time.sleep(0.05)  # let the requests on their way reach the server (they wait 200 ms)
            os.killpg(server.process.pid, signal.SIGTERM)
            code = server.process.wait(timeout=60)
    finally:
        stop_process_group(server.process)
    assert code == 0, server.output()
    before = [outcome for sent_before, outcome, _ in load.outcomes if sent_before]
    assert before, "no request was in flight"
    failed = [outcome for outcome in before if outcome != 200]
    assert failed == [], f"accepted requests failed: {failed}\n{server.output()}"
    statuses = {outcome for _, outcome, _ in load.outcomes if isinstance(outcome, int)}
    assert statuses <= {200, 503}


def test_serve_refuses_a_missing_bundle_before_starting(tmp_path: Path) -> None:
    result = run_cli("serve", "--bundle", str(tmp_path / "nope"), "--port", str(free_port()))
    assert result.returncode == 1
    assert "nope" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_port_in_use(tiny_onnx_bundle: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--bundle", str(tiny_onnx_bundle), "--port", str(port))
    assert result.returncode == 1
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr
