"""Acceptance 4 of issue 15: every acknowledged feedback write survives a SIGKILL.

A real ``clip-har serve`` answers predictions, then 8 client threads post feedback until
at least 400 got a 2xx, while the test SIGKILLs the server once in the middle and starts it
again on the same port and database; clients retry on connection errors. Afterwards every
feedback id (and prediction id) that was acknowledged is in the database, read directly.
Run on SQLite (the default store) and on a real PostgreSQL the test starts itself, as an
unprivileged user on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import free_port, make_photo
from feedback_server import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

CLIENTS = 8
TARGET = 400  # acknowledged feedback rows at least
KILL_AFTER = 150  # acknowledged rows before the SIGKILL: the middle of the run
PREDICTIONS = 12
RUN_S = 360  # the feedback phase must finish within this (restart included)
PG_START_S = 60


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL bin folder with the server tools, if installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=_version_key)
    return found[-1].parent if found else None


def _version_key(path: Path) -> int:
    version = path.parent.parent.name
    return int(version) if version.isdigit() else 0


def _unprivileged_user() -> str | None:
    """The user to run PostgreSQL as: ``None`` (ourselves) unless we are root, who
    PostgreSQL refuses; then ``postgres`` or ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        if subprocess.run(["id", "-u", name], capture_output=True, check=False).returncode == 0:
            return name
    pytest.skip("running as root and neither a 'postgres' nor a 'nobody' user exists")
    return None  # unreachable


def _as(user: str | None, *command: str) -> list[str]:
    return ["runuser", "-u", user, "--", *command] if user else list(command)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (initdb in a temporary folder, run as an
    unprivileged user) and the URL of a fresh database on it; stopped afterwards."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres)")
    if shutil.which("runuser") is None and os.geteuid() == 0:
        pytest.skip("running as root without runuser: cannot start PostgreSQL unprivileged")
    user = _unprivileged_user()
    owner = user or os.environ.get("USER") or "postgres"
    # not under pytest's tmp_path: its folders are private to root
    root = Path(tempfile.mkdtemp(prefix="clip-har-pg-", dir="/tmp"))
    data, log = root / "data", root / "server.log"
    if user:
        shutil.chown(root, user=user)
    root.chmod(0o700)
    port = free_port()
    server: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            _as(user, str(bin_dir / "initdb"), "-D", str(data), "-U", owner, "--auth=trust"),
            check=True,
            capture_output=True,
            timeout=120,
        )
        with log.open("ab") as stream:
            server = subprocess.Popen(
                _as(
                    user,
                    *(str(bin_dir / "postgres"), "-D", str(data), "-k", str(root)),
                    *("-p", str(port), "-c", "listen_addresses=127.0.0.1"),
                ),
                stdout=subprocess.DEVNULL,
                stderr=stream,
                start_new_session=True,
            )
        ready = [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", owner]
        deadline = time.monotonic() + PG_START_S
        while subprocess.run(ready, capture_output=True, check=False).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", owner, "har"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"postgresql+psycopg://{owner}@127.0.0.1:{port}/har"
    finally:
        if server is not None and server.poll() is None:
            subprocess.run(
                _as(user, str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast"),
                capture_output=True,
                check=False,
                timeout=60,
            )
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- the run


class Tally:
    """What the clients were told, shared between their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acknowledged: list[str] = []
        self.retries = 0
        self.unexpected: list[str] = []

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def create_predictions(url: str, folder: Path) -> dict[str, str]:
    """prediction id -> predicted label, from real /v1/predict calls."""
    labels: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for seed in range(PREDICTIONS):
            photo = make_photo(folder / f"photo_{seed}.jpg", seed=seed)
            answer = client.post(
                "/v1/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}
            )
            assert answer.status_code == 200, answer.text
            body = answer.json()
            labels[body["prediction_id"]] = body["label"]
    return labels


def feedback_client(
    url: str, predictions: dict[str, str], tally: Tally, index: int, stop: threading.Event
) -> None:
    """Post feedback until the tally reaches the target; retry what got no answer."""
    ids = list(predictions)
    attempt = index
    with httpx.Client(base_url=url, timeout=30) as client:
        while tally.count() < TARGET and not stop.is_set():
            attempt += CLIENTS
            prediction = ids[attempt % len(ids)]
            body: dict[str, object] = {"prediction_id": prediction, "correct": True}
            if attempt % 3 == 0:
                body = {**body, "correct": False, "label": f"not-{predictions[prediction]}"}
            try:
                answer = client.post("/v1/feedback", json=body)
            except httpx.TransportError:  # the server is down (or went down mid-request)
                with tally.lock:
                    tally.retries += 1
                time.sleep(0.05)
                continue
            with tally.lock:
                if answer.status_code == 201:
                    tally.acknowledged.append(answer.json()["feedback_id"])
                elif answer.status_code == 503:  # starting or draining: retry
                    tally.retries += 1
                else:
                    tally.unexpected.append(f"{answer.status_code} {answer.text[:200]}")


def run_durability(tiny_onnx_bundle: Path, tmp_path: Path, database_url: str) -> None:
    port = free_port()
    server = ServeProcess(
        tiny_onnx_bundle,
        port,
        tmp_path / "serve.log",
        {"CLIP_HAR_SERVE_DATABASE_URL": database_url, "CLIP_HAR_SERVE_MAX_WAIT_MS": "2"},
    )
    tally, stop = Tally(), threading.Event()
    threads: list[threading.Thread] = []
    try:
        server.start()
        predictions = create_predictions(server.url, tmp_path)
        threads = [
            threading.Thread(
                target=feedback_client, args=(server.url, predictions, tally, i, stop), daemon=True
            )
            for i in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + RUN_S
        while tally.count() < KILL_AFTER:
            assert time.monotonic() < deadline, f"only {tally.count()} acknowledged before the kill"
            assert not tally.unexpected, tally.unexpected[:5]
            time.sleep(0.02)
        server.kill()
        killed_at = tally.count()
        server.start()  # same port, same database
        for thread in threads:
            thread.join(timeout=max(1.0, deadline - time.monotonic()))
        stop.set()
        assert tally.count() >= TARGET, f"{tally.count()} acknowledged in {RUN_S}s"
        assert killed_at < TARGET
        assert tally.retries > 0  # clients ran into the dead server and retried
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        server.stop()
    assert not tally.unexpected, tally.unexpected[:5]
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            stored = set(connection.execute(sa.text("SELECT id FROM feedback")).scalars())
            logged = set(connection.execute(sa.text("SELECT id FROM predictions")).scalars())
    finally:
        engine.dispose()
    lost = set(tally.acknowledged) - stored
    assert not lost, f"{len(lost)} of {len(tally.acknowledged)} acknowledged feedback rows lost"
    assert set(predictions) <= logged
    assert len(set(tally.acknowledged)) == len(tally.acknowledged)  # no id answered twice


def test_acknowledged_feedback_survives_sigkill_on_sqlite(
    tiny_onnx_bundle: Path, tmp_path: Path
) -> None:
    run_durability(tiny_onnx_bundle, tmp_path, f"sqlite:///{tmp_path / 'serving.db'}")


def test_acknowledged_feedback_survives_sigkill_on_postgresql(
    tiny_onnx_bundle: Path, tmp_path: Path, postgres_url: str
) -> None:
    run_durability(tiny_onnx_bundle, tmp_path, postgres_url)
