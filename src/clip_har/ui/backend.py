"""Where the UI's service is: an API URL, or a bundle served in-process.

Either way the pages talk to it through one :class:`~clip_har.client.HARClient`. With a
bundle, the client's HTTP transport is a Starlette ``TestClient`` around the real app of
``clip-har serve`` (``create_app``), so predictions, the prediction log, feedback and the
statistics run the service's own code, with a SQLite store in the UI's state folder.

The choice comes from the script's arguments (``streamlit run app.py -- --bundle DIR``) or
from the environment (``CLIP_HAR_UI_API_URL``, ``CLIP_HAR_UI_BUNDLE``,
``CLIP_HAR_UI_EVALUATION``, ``CLIP_HAR_UI_STATE_DIR``); arguments win. ``--evaluation DIR``
serves a bundle's evaluation with it (``clip-har serve --evaluation``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from clip_har.client import HARClient
from clip_har.errors import ClipHarError

if TYPE_CHECKING:
    from starlette.testclient import TestClient

logger = logging.getLogger(__name__)

ENV_API_URL = "CLIP_HAR_UI_API_URL"
ENV_BUNDLE = "CLIP_HAR_UI_BUNDLE"
ENV_STATE_DIR = "CLIP_HAR_UI_STATE_DIR"
ENV_EVALUATION = "CLIP_HAR_UI_EVALUATION"
DEFAULT_API_URL = "http://127.0.0.1:8000"  # where `clip-har serve` listens by default
IN_PROCESS_URL = "http://in-process"
READY_TIMEOUT_S = 600.0  # a big model on a slow machine; the spinner shows meanwhile
DATABASE_FILE = "serving.db"


@dataclass(frozen=True)
class BackendConfig:
    """``api_url`` (a running service) or ``bundle`` (served in-process, its prediction log
    and feedback in ``state_dir``, with ``evaluation`` when given)."""

    api_url: str | None
    bundle: str | None
    state_dir: Path
    evaluation: str | None = None

    @property
    def in_process(self) -> bool:
        return self.bundle is not None

    @property
    def where(self) -> str:
        """The service in words, for messages."""
        return f"the bundle {self.bundle} (in-process)" if self.bundle else str(self.api_url)


@dataclass(frozen=True)
class Backend:
    """The UI's connection to the service."""

    config: BackendConfig
    client: HARClient


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/clip-har/ui`` (default ``~/.local/state/clip-har/ui``)."""
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "clip-har" / "ui"


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> BackendConfig:
    """The backend named by ``argv`` (default: the script's arguments) or ``environ``;
    neither: the service at :data:`DEFAULT_API_URL`."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--api-url")
    parser.add_argument("--bundle")
    parser.add_argument("--state-dir")
    parser.add_argument("--evaluation")
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    api_url = args.api_url or None
    bundle = args.bundle or None
    if api_url is None and bundle is None:
        api_url = environ.get(ENV_API_URL) or None
        bundle = environ.get(ENV_BUNDLE) or None
    if api_url is None and bundle is None:
        api_url = DEFAULT_API_URL
    state_dir = args.state_dir or environ.get(ENV_STATE_DIR)
    evaluation = args.evaluation or environ.get(ENV_EVALUATION) or None
    return BackendConfig(
        api_url=None if bundle else api_url,
        bundle=bundle,
        state_dir=Path(state_dir) if state_dir else default_state_dir(environ),
        evaluation=evaluation if bundle else None,
    )


def current_backend() -> Backend:
    """This app's backend, opened once per process and shared by every session."""
    config = parse_config()
    client = _open_client(config.api_url, config.bundle, str(config.state_dir), config.evaluation)
    return Backend(config, client)


def _close_client(client: HARClient) -> None:
    """Release a cached client: stop the in-process service (drain, close the store)."""
    in_process = _IN_PROCESS.pop(id(client), None)
    client.close()
    if in_process is not None:
        in_process.__exit__(None, None, None)


# the TestClient behind each in-process HARClient, to stop it when the cache releases it
_IN_PROCESS: dict[int, TestClient] = {}


@st.cache_resource(show_spinner="Connecting to the service…", on_release=_close_client)
def _open_client(
    api_url: str | None, bundle: str | None, state_dir: str, evaluation: str | None = None
) -> HARClient:
    """A client of ``api_url``, or of ``bundle`` served in-process (loaded and warmed, with
    ``evaluation`` when given)."""
    if bundle is None:
        assert api_url is not None
        return HARClient(api_url, retries=2, backoff=0.25)
    service = _start_in_process(bundle, Path(state_dir), evaluation)
    client = HARClient(IN_PROCESS_URL, http=service)
    _IN_PROCESS[id(client)] = service
    return client


def _start_in_process(bundle: str, state_dir: Path, evaluation: str | None = None) -> TestClient:
    """The real service for ``bundle`` (and its ``evaluation``), its lifespan entered, once
    its model is ready."""
    from starlette.testclient import TestClient

    from clip_har.serving.app import create_app
    from clip_har.serving.settings import ServeSettings

    state_dir.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {"bundle": bundle}
    if evaluation is not None:
        overrides["evaluation"] = Path(evaluation)
    if not (os.environ.get("CLIP_HAR_SERVE_DATABASE_URL") or os.environ.get("DATABASE_URL")):
        overrides["database_url"] = f"sqlite:///{(state_dir / DATABASE_FILE).absolute()}"
    settings = ServeSettings(**overrides)
    service = TestClient(
        create_app(settings), base_url=IN_PROCESS_URL, raise_server_exceptions=False
    )
    service.__enter__()
    try:
        _wait_ready(service, bundle)
    except BaseException:
        service.__exit__(None, None, None)
        raise
    logger.info("serving %s in-process (store %s)", bundle, settings.database_url)
    return service


def _wait_ready(service: TestClient, bundle: str) -> None:
    """Wait until readiness answers 200; a failed load raises with the service's reason."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        answer = service.get("/readyz")
        if answer.status_code == 200:
            return
        status = str(answer.json().get("status", answer.status_code))
        if status.startswith("failed"):
            raise ClipHarError(f"the bundle {bundle} did not load: {status}")
        if time.monotonic() > deadline:
            raise ClipHarError(f"the bundle {bundle} was not ready after {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.1)
