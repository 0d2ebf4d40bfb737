"""Child-process supervision for ``clip-har up``: services started in order, each in its
own session, waited for until healthy, watched, and stopped in reverse order.

A child is started in a new session (so a Ctrl-C in the terminal reaches only the
supervisor, which stops the children in order) and, on Linux, with a parent-death signal:
if the supervisor is killed outright (SIGKILL), every child still gets SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from clip_har.errors import ClipHarError
from clip_har.io import write_json_atomic

log = logging.getLogger(__name__)

POLL_S = 0.25  # between health probes, and between checks that children still run
PROBE_TIMEOUT_S = 2.0
TAIL_LINES = 25
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


@dataclass(frozen=True)
class Service:
    """One service: how to start it, where it logs and the URL that answers 200 when healthy."""

    name: str
    command: list[str]
    health_url: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)


class ServiceError(ClipHarError):
    """A service exited or did not become healthy; ``tail`` is the end of its log."""

    def __init__(self, service: Service, problem: str) -> None:
        super().__init__(f"{service.name} {problem} (its log: {service.log})")
        self.service = service
        self.tail = log_tail(service.log)


class Stopped(Exception):  # noqa: N818 - a request, not an error
    """The supervisor got SIGINT or SIGTERM (``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """SIGINT and SIGTERM handling: the first one raises :class:`Stopped` in the main thread
    (unless raising is deferred, e.g. while a child is being spawned: then it is raised as the
    deferral ends); later ones only count, and tell :meth:`Child.stop` to hurry."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._armed = True
        self._deferred = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SignalGuard:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self._armed and not self._deferred:
            self._armed = False
            raise Stopped(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold back :class:`Stopped` inside the block; raise it after, if a signal came."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False
        if self.received and self._armed:
            self._armed = False
            raise Stopped(self.received[0])

    def disarm(self) -> None:
        """From now on signals are only counted (the stack is stopping)."""
        self._armed = False

    @property
    def hurry(self) -> bool:
        """A second signal came: stop without waiting for grace."""
        return len(self.received) > 1


class Child:
    """A started service: a process leading its own session, with its output in a log file."""

    def __init__(self, service: Service) -> None:
        self.service = service
        service.log.parent.mkdir(parents=True, exist_ok=True)
        with service.log.open("wb") as out:  # each run's log starts empty
            self.process = subprocess.Popen(
                service.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **service.env},
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),  # spawned with no other thread running
            )
        log.info("started %s (pid %d): %s", service.name, self.pid, " ".join(service.command))

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def wait_healthy(self, timeout: float) -> None:
        """Return once the health URL answers 200; :class:`ServiceError` if the process
        exits first or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=PROBE_TIMEOUT_S, trust_env=False) as client:
            while True:
                code = self.poll()
                if code is not None:
                    raise ServiceError(self.service, f"exited with code {code} while starting")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.service.health_url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise ServiceError(
                        self.service,
                        f"did not answer 200 on {self.service.health_url} within {timeout:.0f} s",
                    )
                time.sleep(POLL_S)

    def stop(self, grace: float, hurry: Callable[[], bool]) -> None:
        """SIGTERM the session's process group (and any descendant that left it), wait up to
        ``grace`` seconds (less once ``hurry()``), then SIGKILL whatever is left."""
        tree = [self.pid, *descendants(self.pid)]
        if self.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _any_alive(self, tree) and time.monotonic() < deadline and not hurry():
            time.sleep(0.1)
        if _any_alive(self, tree):
            log.warning("%s did not stop within %.0f s: killing it", self.service.name, grace)
            _signal_group(self.pid, signal.SIGKILL)
            for pid in tree[1:]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)


def start_in_order(
    services: list[Service],
    children: list[Child],
    *,
    timeout: float,
    guard: SignalGuard,
    status: Callable[[str], contextlib.AbstractContextManager[object]],
    started: Callable[[Child, float], None],
) -> None:
    """Start each service once the one before is healthy, appending each to ``children``
    (so the caller can stop what was started if this raises). ``status(text)`` shows a
    spinner while one starts; ``started(child, seconds)`` reports it healthy."""
    for service in services:
        begun = time.monotonic()
        with guard.deferred():  # no Stopped between fork and bookkeeping: no lost child
            children.append(Child(service))
        with status(f"starting {service.name} (waiting for {service.health_url})"):
            children[-1].wait_healthy(timeout)
        started(children[-1], time.monotonic() - begun)


def watch(children: list[Child]) -> None:
    """Block until a child exits (then :class:`ServiceError`) or a signal stops this."""
    while True:
        for child in children:
            code = child.poll()
            if code is not None:
                raise ServiceError(child.service, f"exited with code {code}")
        time.sleep(POLL_S)


def stop_all(children: list[Child], grace: float, guard: SignalGuard) -> None:
    """Stop every child in reverse start order (each waits for the one after it)."""
    guard.disarm()
    for child in reversed(children):
        child.stop(grace, lambda: guard.hurry)


def write_pids(path: Path, children: list[Child]) -> None:
    """Record who runs: the supervisor and each child (the leader of its process group)."""
    write_json_atomic(
        path, {"up": os.getpid(), "services": {c.service.name: c.pid for c in children}}
    )


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" when there is none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from ``/proc``; empty
    where there is no ``/proc``."""
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _stat(int(entry.name))
                if stat is not None:
                    parents[int(entry.name)] = stat[1]
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in found]
        found += children
        frontier += children
    return found


def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, parent pid)`` of ``pid`` from ``/proc/PID/stat``; None if it has gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and ")"
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    if Path("/proc").is_dir():
        stat = _stat(pid)
        return stat is not None and stat[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _any_alive(child: Child, tree: list[int]) -> bool:
    return child.poll() is None or any(_alive(pid) for pid in tree[1:])


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when ``parent`` dies (None
    elsewhere). Run in the child between fork and exec, so it only calls into libc."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return set_death_signal
