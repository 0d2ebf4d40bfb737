"""``clip-har ui``: the Streamlit app, on a running service (``--api-url``) or on a bundle
served inside it (``--bundle``). It runs ``streamlit run`` on ``clip_har/ui/app.py`` as a
child process and stops it on Ctrl-C (exit 130) or SIGTERM (exit 0)."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from urllib.parse import urlsplit

import typer
from rich.markup import escape

from clip_har.cli.common import check_port_free, client_url, err_console, run_forwarding_signals
from clip_har.errors import ClipHarError, UsageError

log = logging.getLogger(__name__)

APP_SCRIPT = Path(__file__).resolve().parent.parent / "ui" / "app.py"
DEFAULT_API_URL = "http://127.0.0.1:8000"


def ui(
    api_url: str | None = typer.Option(
        None,
        "--api-url",
        metavar="URL",
        help=f"A running clip-har service (default {DEFAULT_API_URL}). The API key comes "
        "from CLIP_HAR_API_KEY.",
    ),
    bundle: str | None = typer.Option(
        None,
        "--bundle",
        metavar="DIR|models:/…",
        help="Serve this bundle inside the UI instead (a folder, or models:/NAME@ALIAS).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the UI listens on."),
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port the UI listens on."),
    state_dir: Path | None = typer.Option(
        None,
        "--state-dir",
        metavar="DIR",
        help="With --bundle: where the prediction log and feedback are kept "
        "(default $XDG_STATE_HOME/clip-har/ui).",
    ),
    evaluation: Path | None = typer.Option(
        None,
        "--evaluation",
        metavar="DIR",
        help="With --bundle: its `clip-har evaluate` output, shown on the Model page "
        "(a models:/ version shows its registered one).",
    ),
) -> None:
    """The web UI: predict, open vocabulary, batch, model, monitoring and live camera
    pages. Runs until Ctrl-C."""
    if api_url is not None and bundle is not None:
        raise UsageError("give --api-url or --bundle, not both")
    if evaluation is not None and bundle is None:
        raise UsageError("--evaluation goes with --bundle (a running service serves its own)")
    if state_dir is not None and bundle is None:
        raise UsageError("--state-dir goes with --bundle (a running service keeps its own store)")
    if importlib.util.find_spec("streamlit") is None:
        raise ClipHarError("clip-har ui needs the [ui] extra: pip install 'clip-har[ui]'")
    backend: list[str]
    if bundle is not None:
        backend = ["--bundle", _checked_bundle(bundle)]
        if state_dir is not None:
            backend += ["--state-dir", str(state_dir.absolute())]
        if evaluation is not None:
            backend += ["--evaluation", _checked_evaluation(bundle, evaluation)]
        where = f"bundle {bundle} (served in-process)"
    else:
        api_url = _checked_url(api_url or DEFAULT_API_URL)
        backend = ["--api-url", api_url]
        where = api_url
    check_port_free(host, port)
    command = [
        *(sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT)),
        *("--server.headless", "true", "--server.address", host, "--server.port", str(port)),
        *("--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"),
        *("--client.toolbarMode", "minimal"),  # no "Deploy" button: this is a served app
        "--",
        *backend,
    ]
    err_console.print(
        f"clip-har UI at [bold]{escape(client_url(host, port))}[/bold] on "
        f"{escape(where)}; Ctrl-C stops it."
    )
    log.info("running %s", " ".join(command))
    raise typer.Exit(run_forwarding_signals(command, "UI"))


def _checked_url(url: str) -> str:
    """``url`` without a trailing slash, if it is an http or https URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise UsageError(
            f"--api-url {url}: give the service's http or https URL, e.g. {DEFAULT_API_URL}"
        )
    return url.rstrip("/")


def _checked_bundle(bundle: str) -> str:
    """An absolute bundle folder that opens, or a ``models:/`` URI (the service resolves it)."""
    if bundle.startswith("models:/"):
        return bundle
    from clip_har.models.bundle import open_bundle

    path = Path(bundle)
    if not path.is_dir():
        raise ClipHarError(f"--bundle {bundle}: no such folder")
    open_bundle(path)  # a damaged manifest fails here, with its reason
    return str(path.absolute())


def _checked_evaluation(bundle: str, evaluation: Path) -> str:
    """The absolute ``evaluation`` folder, checked to be an ``evaluate`` output of the
    bundle folder (of a models:/ version: checked when the UI loads it)."""
    from clip_har.serving.evaluation import check_evaluation_option

    check_evaluation_option(bundle, evaluation)
    return str(evaluation.absolute())
