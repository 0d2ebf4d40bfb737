"""Shared fixtures: real HAR photo folders, the tiny backbone, bundles and generated images."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clip_har.models.backbone import Backbone, load_backbone
from clip_har.models.bundle import save_bundle
from clip_har.models.classifier import build_zero_shot_classifier
from clip_har.models.prompts import load_class_names, load_prompt_set

HAR_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "har"


def _har_folder(name: str) -> Path:
    folder = HAR_DATA / name
    if not (folder / "images").is_dir():
        pytest.skip(f"real HAR photos not available: {folder} is absent")
    return folder


@pytest.fixture(scope="session")
def har_sample_dir() -> Path:
    """``shared/data/har/sample`` (155 photos + labels.csv); skips when absent."""
    return _har_folder("sample")


@pytest.fixture(scope="session")
def har_dev_dir() -> Path:
    """``shared/data/har/dev`` (904 photos + labels.csv); skips when absent."""
    return _har_folder("dev")


@pytest.fixture(scope="session")
def clip_har_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for the whole session (presets are built once), exported for subprocesses."""
    cache = tmp_path_factory.mktemp("clip-har-cache")
    previous = os.environ.get("CLIP_HAR_CACHE")
    os.environ["CLIP_HAR_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("CLIP_HAR_CACHE", None)
    else:
        os.environ["CLIP_HAR_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_backbone(clip_har_cache: Path) -> Backbone:
    """The ``tiny`` preset, built on disk and loaded through the real loading code."""
    return load_backbone("tiny", cache_dir=clip_har_cache)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_backbone: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zero-shot bundle over the 15 HAR classes on the tiny backbone."""
    prompts = load_prompt_set("actions")
    classifier = build_zero_shot_classifier(tiny_backbone, load_class_names("har15"), prompts)
    directory = tmp_path_factory.mktemp("bundles") / "tiny-har"
    save_bundle(directory, classifier=classifier, backbone=tiny_backbone, prompts=prompts)
    return directory


@pytest.fixture(scope="session")
def tiny_onnx_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``tiny_bundle`` exported to onnx, onnx-int8 and text-onnx (parity checked)."""
    from clip_har.export.run import ExportOptions, export_bundle

    directory = tmp_path_factory.mktemp("bundles") / "tiny-har-onnx"
    shutil.copytree(tiny_bundle, directory)
    export_bundle(directory, ["onnx", "onnx-int8", "text-onnx"], ExportOptions(parity_count=4))
    return directory


def make_photo(path: Path, size: tuple[int, int] = (120, 90), seed: int = 0) -> Path:
    """A smooth random colour image saved in the format named by the suffix."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path)
    return path


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Five good generated photos of assorted sizes and formats."""
    folder = tmp_path / "photos"
    folder.mkdir()
    sizes = [(120, 90), (64, 200), (300, 300), (50, 40), (257, 181)]
    for index, size in enumerate(sizes):
        make_photo(folder / f"good_{index}.{'png' if index % 2 else 'jpg'}", size, seed=index)
    return folder


@pytest.fixture
def mixed_folder(photo_folder: Path) -> Path:
    """Good photos plus the four classic bad files."""
    (photo_folder / "empty.jpg").write_bytes(b"")
    good = (photo_folder / "good_0.jpg").read_bytes()
    (photo_folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (photo_folder / "notes.jpg").write_text("this is not an image\n")
    Image.new("RGB", (1, 1), (255, 0, 0)).save(photo_folder / "pixel.png")
    return photo_folder


CLI = shutil.which("clip-har", path=str(Path(sys.executable).parent)) or "clip-har"


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``clip-har`` console script as a user would."""
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM the process group of a server started with ``start_new_session=True``;
    SIGKILL it if it has not gone within ``grace`` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


def wait_ready(client: Any, timeout: float = 120) -> None:
    """Wait until an in-process service (a ``TestClient`` over ``create_app``) answers
    ``GET /readyz`` with 200: its model loads and warms up after startup."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the model did not become ready"
        time.sleep(0.1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def runnable_commands(app: Any) -> dict[str, Any]:
    """Every runnable command of a Typer app by its words (``"data split"``): the leaves,
    and the groups that run on their own (``train``, ``evaluate``)."""
    from typer.main import get_command

    def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
        if getattr(command, "commands", None) is None:
            yield " ".join(path), command
            return
        if path and command.invoke_without_command:
            yield " ".join(path), command
        for name, sub in sorted(subcommands(command).items()):
            yield from walk(sub, (*path, name))

    return dict(walk(get_command(app), ()))


def subcommands(command: Any) -> dict[str, Any]:
    """The commands of a Click group by name, loading the lazily registered ones (the root
    imports each command's module on first use); ``{}`` for a plain command."""
    if getattr(command, "commands", None) is None:
        return {}
    ctx = command.make_context(command.name, [], resilient_parsing=True)
    return {name: command.get_command(ctx, name) for name in command.list_commands(ctx)}
