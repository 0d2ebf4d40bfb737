"""``clip-har up`` (issue 16, acceptance 6): the MLflow server, the API and the UI start as
real processes on loopback ports; all three health endpoints answer; one SIGINT to ``up``
stops every process it started and frees the ports. A taken port starts nothing, and a
service that dies takes the stack down with exit 1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import CLI, free_port, run_cli, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STARTUP_S = 300  # three servers, one after the other, on a loaded CI machine
STOP_S = 120  # `up` stops them one by one, each within its grace


def _parents() -> dict[int, int]:
    """Every running (not zombie) process and its parent, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, parent = stat[stat.rindex(")") + 2 :].split()[:2]
            if state != "Z":
                found[int(entry.name)] = int(parent)
    return found


def _tree(root: int) -> set[int]:
    """The processes below ``root``: its children, their children, ..."""
    parents = _parents()
    found: set[int] = set()
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = {pid for pid, pp in parents.items() if pp == parent} - found
        found |= children
        frontier += children
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _start_up(
    bundle: Path, ports: list[int], tmp_path: Path, *extra: str
) -> subprocess.Popen[bytes]:
    """``clip-har up`` in ``tmp_path`` (its MLflow store lands there), in its own process
    group, its output in ``tmp_path/up.log``."""
    command = [
        *(CLI, "up", "--bundle", str(bundle), "--state", str(tmp_path / "state")),
        *("--mlflow-port", str(ports[0]), "--api-port", str(ports[1])),
        *extra,
    ]
    with (tmp_path / "up.log").open("wb") as out:
        return subprocess.Popen(
            command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_healthy(process: subprocess.Popen[bytes], urls: list[str], log: Path) -> None:
    """Until every URL answers 200 (fails with ``up``'s output if it exits or times out)."""
    deadline = time.monotonic() + STARTUP_S
    pending = list(urls)
    with httpx.Client(timeout=2, trust_env=False) as client:
        while pending:
            if process.poll() is not None:
                pytest.fail(f"up exited ({process.returncode}):\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"not healthy in {STARTUP_S} s: {pending}\n{log.read_text()[-4000:]}")
            try:
                if client.get(pending[0]).status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.TransportError:
                pass
            time.sleep(0.5)


def _recorded(state: Path, count: int) -> dict[str, int]:
    """The services ``up`` recorded in pids.json, once it has recorded ``count`` of them (it
    does so after its own health check, which may come a moment after the test's)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            services: dict[str, int] = json.loads((state / "pids.json").read_text())["services"]
        except (OSError, ValueError):
            services = {}
        if len(services) >= count or time.monotonic() > deadline:
            return services
        time.sleep(0.2)


def _kill_leftovers(pids: set[int]) -> None:
    """Whatever a failing test left running (each pid only if it still runs)."""
    for pid in pids & set(_parents()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_up_starts_mlflow_api_and_ui_and_one_sigint_stops_every_process(
    tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    ports = _ports(3)
    up = _start_up(tiny_onnx_bundle, ports, tmp_path, "--ui-port", str(ports[2]))
    started: set[int] = set()
    try:
        _wait_healthy(
            up,
            [
                f"http://127.0.0.1:{ports[0]}/health",
                f"http://127.0.0.1:{ports[1]}/readyz",
                f"http://127.0.0.1:{ports[2]}/_stcore/health",
            ],
            tmp_path / "up.log",
        )
        recorded = _recorded(tmp_path / "state", 3)
        started = _tree(up.pid)  # every process `up` started, recorded while they run
        assert set(recorded) == {"mlflow", "api", "ui"}
        assert set(recorded.values()) <= started
        assert len(started) > 3  # the servers' own children (mlflow's workers, streamlit)

        os.kill(up.pid, signal.SIGINT)  # one Ctrl-C, to `up` only
        assert up.wait(timeout=STOP_S) == 130, (tmp_path / "up.log").read_text()[-4000:]

        deadline = time.monotonic() + 10  # orphans just reparented may still be reaped
        while (started & set(_parents())) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not started & set(_parents()), "processes left running after Ctrl-C"
        assert all(_port_free(port) for port in ports)
        assert not (tmp_path / "state" / "pids.json").exists()
        for name in ("mlflow", "api", "ui"):
            assert (tmp_path / "state" / "logs" / f"{name}.log").stat().st_size > 0
    finally:
        stop_process_group(up)
        _kill_leftovers(started)


def test_a_service_that_dies_stops_the_stack_with_its_log(
    tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    ports = _ports(2)
    up = _start_up(tiny_onnx_bundle, ports, tmp_path, "--no-ui")
    started: set[int] = set()
    try:
        _wait_healthy(
            up,
            [f"http://127.0.0.1:{ports[0]}/health", f"http://127.0.0.1:{ports[1]}/readyz"],
            tmp_path / "up.log",
        )
        api = _recorded(tmp_path / "state", 2)["api"]
        started = _tree(up.pid)
        os.killpg(api, signal.SIGKILL)  # the API crashes

        assert up.wait(timeout=STOP_S) == 1
        output = (tmp_path / "up.log").read_text()
        assert "api exited" in output and "api.log" in output
        deadline = time.monotonic() + 10
        while (started & set(_parents())) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not started & set(_parents()), "the MLflow server outlived the API's crash"
        assert _port_free(ports[0])
    finally:
        stop_process_group(up)
        _kill_leftovers(started)


def test_a_port_in_use_is_named_and_nothing_starts(tiny_onnx_bundle: Path, tmp_path: Path) -> None:
    mlflow_port, ui_port = _ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        api_port = taken.getsockname()[1]
        result = run_cli(
            *("up", "--bundle", str(tiny_onnx_bundle), "--state", str(tmp_path / "state")),
            *("--mlflow-port", str(mlflow_port), "--api-port", str(api_port)),
            *("--ui-port", str(ui_port)),
            cwd=tmp_path,
            timeout=120,
        )
    assert result.returncode == 1, result.stderr
    assert f"port {api_port}" in result.stderr and "--api-port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()  # no log, no pid file: nothing was started
    assert not (tmp_path / "mlruns.db").exists()
    assert _port_free(mlflow_port) and _port_free(ui_port)
