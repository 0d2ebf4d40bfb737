"""A real ``clip-har serve`` process for the feedback integration tests: started in its own
process group on a loopback port, waited for until ready, stopped (or SIGKILLed) whole."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import CLI, stop_process_group

STARTUP_S = 180  # a loaded CI machine takes tens of seconds to load and warm a model


class ServeProcess:
    """``clip-har serve --bundle BUNDLE`` on 127.0.0.1:``port`` with ``env`` added."""

    def __init__(
        self, bundle: Path, port: int, log: Path, env: dict[str, str], *extra: str
    ) -> None:
        self.bundle, self.port, self.log, self.env, self.extra = bundle, port, log, env, extra
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until ``/readyz`` answers 200."""
        command = [
            *(CLI, "serve", "--bundle", str(self.bundle)),
            *("--host", "127.0.0.1", "--port", str(self.port), *self.extra),
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        deadline = time.monotonic() + STARTUP_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"server exited ({self.process.returncode}):\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready in {STARTUP_S}s:\n{self.tail()}")
            time.sleep(0.25)

    def kill(self) -> None:
        """SIGKILL the whole process group (no shutdown code runs)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (then SIGKILL) the whole process group, if it runs."""
        if self.process is not None:
            stop_process_group(self.process)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
