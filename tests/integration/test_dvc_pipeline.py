"""The real DVC pipeline (``dvc.yaml`` + ``params.yaml``) in a fresh temporary git repository:
``dvc repro``, no-op re-runs, param-driven partial re-runs, push to a local remote and pull
into a fresh clone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import make_photo, run_cli

from clip_har.data import version
from clip_har.data.manifest import read_manifest
from clip_har.errors import DataVersionError
from clip_har.export.run import parse_formats
from clip_har.io import file_digest
from clip_har.models.bundle import open_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)
CLASSES = ("circle", "square", "stripes")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """clip-har and dvc on PATH, a private cache, git identity, no analytics."""
    identity = {
        f"GIT_{who}_{what}": value
        for who in ("AUTHOR", "COMMITTER")
        for what, value in (("NAME", "test"), ("EMAIL", "test@example.com"))
    }
    return {
        **os.environ,
        **identity,
        "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
        "CLIP_HAR_CACHE": str(tmp_path / "cache"),
        "DVC_NO_ANALYTICS": "1",
    }


def sh(*args: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def dvc(*args: str, cwd: Path, env: dict[str, str]) -> str:
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd, env=env)


def ran_stages(log: str) -> set[str]:
    stages = ("import", "validate", "split", "embed", "train", "evaluate", "export", "register")
    return {stage for stage in stages if f"Running stage '{stage}'" in log}


def files_under(root: Path, *folders: str) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for folder in folders
        for path in sorted((root / folder).rglob("*"))
        if path.is_file() and path.name != ".gitignore"
    }


def params_of(repo: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((repo / "params.yaml").read_text())
    return loaded


def make_project(repo: Path, env: dict[str, str]) -> None:
    """A git repo holding the project's pipeline files and 3 classes x 8 generated photos."""
    sh("git", "init", "--quiet", "-b", "main", cwd=repo, env=env)
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="raw", classes=",".join(CLASSES))
    params["model"]["spec"] = "tiny"
    params["prompts"]["set"] = "minimal"
    params["train"].update(epochs=3, tracking=[])
    params["export"]["formats"] = ["onnx", "onnx-int8", "text-onnx"]  # the rest: tested elsewhere
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    make_photos(repo / "raw")


def make_photos(folder: Path) -> None:
    """3 classes x 8 generated photos of different sizes, one sub-folder per class."""
    for c, label in enumerate(CLASSES):
        (folder / label).mkdir(parents=True)
        for i in range(8):
            make_photo(folder / label / f"{i}.png", size=(64 + 8 * i, 48 + c), seed=c * 10 + i)


def test_dvc_repro_noop_partial_rerun_push_and_pull(tmp_path: Path, env: dict[str, str]) -> None:
    repo = tmp_path / "project"
    repo.mkdir()
    make_project(repo, env)

    tracked = run_cli("data", "track", "raw", cwd=repo, env=env)
    assert tracked.returncode == 0, tracked.stderr
    assert (repo / "raw.dvc").is_file() and (repo / ".dvc").is_dir()
    assert tracked.stdout.strip() == version(repo / "raw")
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "--quiet", "-m", "data", cwd=repo, env=env)

    first = dvc("repro", cwd=repo, env=env)
    assert ran_stages(first) == {
        "import", "validate", "split", "embed", "train", "evaluate", "export", "register"
    }  # fmt: skip
    registered = json.loads((repo / "models" / "registered.json").read_text())
    assert registered["registered"] is False  # registry.enabled is false by default
    exported = open_bundle(repo / "models" / "exported").manifest.exports
    assert set(exported) == set(parse_formats(params_of(repo)["export"]["formats"]))
    assert all(r.passed and r.parity and r.parity.real_photos for r in exported.values())
    assert not (repo / "models" / "bundle" / "exports").exists()
    metrics = dvc("metrics", "show", cwd=repo, env=env)
    assert "val_accuracy" in metrics and "f1_macro" in metrics
    plots = dvc("plots", "show", "--out", "plots", cwd=repo, env=env)
    page = (repo / "plots" / "index.html").read_text()
    assert "confusion_matrix.png" in page and "predictions.csv" in page, plots
    split = read_manifest(repo / "data" / "split")
    assert len(split) == 24 and set(split["split"]) == {"train", "val", "test"}
    locked = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["split"]["params"]
    assert locked["params.yaml"]["split.ratios"] == params_of(repo)["split"]["ratios"]  # a list
    manifest = repo / "data" / "split" / "manifest.parquet"
    data_version = version(manifest)
    assert data_version == file_digest(manifest, "md5")
    printed = run_cli("data", "version", cwd=repo, env=env)
    assert printed.returncode == 0 and printed.stdout.strip() == data_version

    again = dvc("repro", cwd=repo, env=env)
    assert ran_stages(again) == set() and "up to date" in again

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["split"]["seed"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    reseeded = dvc("repro", "split", cwd=repo, env=env)
    assert ran_stages(reseeded) == {"split"}
    assert "Stage 'import' didn't change" in reseeded
    downstream = dvc("repro", cwd=repo, env=env)
    assert ran_stages(downstream) == {"embed", "train", "evaluate", "export", "register"}

    remote = tmp_path / "remote"
    added = run_cli("data", "remote", "add", "store", str(remote), cwd=repo, env=env)
    assert added.returncode == 0, added.stderr
    pushed = run_cli("data", "push", cwd=repo, env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert any(remote.rglob("*")), "nothing was pushed"
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "--quiet", "-m", "pipeline", cwd=repo, env=env)

    clone = tmp_path / "clone"
    sh("git", "clone", "--quiet", str(repo), str(clone), cwd=tmp_path, env=env)
    assert not (clone / "data").exists() or not any((clone / "data").rglob("*.parquet"))
    pulled = run_cli("data", "pull", cwd=clone, env=env)
    assert pulled.returncode == 0, pulled.stderr
    tracked = ("raw", "data", "models", "reports")
    assert files_under(clone, *tracked) == files_under(repo, *tracked)
    assert version(clone / "data" / "split" / "manifest.parquet") == version(manifest)
    paths = read_manifest(clone / "data" / "split")["path"]
    assert all(p.startswith(str(clone)) and Path(p).is_file() for p in paths)
    assert dvc("status", cwd=clone, env=env).strip().endswith("Data and pipelines are up to date.")


def test_data_version_and_track_errors(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(DataVersionError, match="not inside a DVC repository"):
        version(tmp_path / "manifest.parquet")
    outside = run_cli("data", "track", str(tmp_path), cwd=tmp_path, env=env)
    assert outside.returncode == 1 and "not inside a git repository" in outside.stderr
    missing = run_cli("data", "track", str(tmp_path / "nope"), cwd=tmp_path, env=env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
