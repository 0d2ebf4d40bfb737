"""The whole lifecycle in a project made by ``clip-har project init``: ``dvc repro`` runs
import -> ... -> export -> register into the project's own MLflow store, the registered
version's data version is the md5 DVC recorded for the split manifest, a second ``dvc repro``
runs nothing, ``project summary`` names the version, and ``dvc exp run -S
train.strategy=tip-adapter`` gives an experiment ``dvc exp show`` lists beside the baseline."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli
from test_dvc_pipeline import CLASSES, dvc, make_photos, ran_stages, sh

from clip_har.data import version
from clip_har.io import file_digest
from clip_har.registry.store import TAG_DATA_VERSION, registry_client
from clip_har.resources import project_template_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = str(Path(sys.executable).parent)
NAME = "har-lifecycle"
STAGES = {"import", "validate", "split", "embed", "train", "evaluate", "export", "register"}


@pytest.fixture
def project_env(tmp_path: Path) -> dict[str, str]:
    """clip-har and dvc on PATH, a private cache, no analytics, no outside MLflow store (the
    project's own ./mlruns.db is the registry), and a git identity only through variables."""
    identity = {
        f"GIT_{who}_{what}": value
        for who in ("AUTHOR", "COMMITTER")
        for what, value in (("NAME", "test"), ("EMAIL", "test@example.com"))
    }
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return {
        **env,
        **identity,
        "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
        "CLIP_HAR_CACHE": str(tmp_path / "cache"),
        "DVC_NO_ANALYTICS": "1",
    }


def tune_params(project: Path) -> None:
    """The generated classes, and a small fast pipeline: tiny backbone, 3 epochs, one
    export format (an int8 export of a random-weight tip-adapter fails its parity gate)."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["data"]["classes"] = ",".join(CLASSES)
    params["prompts"]["set"] = "minimal"
    params["train"]["epochs"] = 3
    params["export"]["formats"] = ["onnx"]
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def exp_rows(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``dvc exp show --json``: each baseline commit and each experiment
    (the workspace row is left out), as DVC's ``{"rev", "name", "data"}`` entries."""
    rows: list[dict[str, Any]] = []

    def add(entry: dict[str, Any]) -> None:
        rows.append(entry)
        for experiment in entry.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                add(rev)

    for entry in shown:
        if entry.get("rev") != "workspace":
            add(entry)
    return rows


def experiments(shown: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{row name or rev: {metrics file: its values}} of ``dvc exp show --json``."""
    return {
        row.get("name") or row["rev"]: {
            path: metrics.get("data") or {}
            for path, metrics in ((row.get("data") or {}).get("metrics") or {}).items()
        }
        for row in exp_rows(shown)
    }


def strategies(shown: list[dict[str, Any]]) -> list[str]:
    """train.strategy of each row of ``dvc exp show --json``."""
    return [
        row["data"]["params"]["params.yaml"]["data"]["train"]["strategy"] for row in exp_rows(shown)
    ]


def test_project_init_repro_registers_with_dvc_data_version_then_noop_and_experiment(
    tmp_path: Path, project_env: dict[str, str]
) -> None:
    env = project_env
    photos = tmp_path / "photos"
    make_photos(photos)
    project = tmp_path / "project"

    made = run_cli(
        "project", "init", str(project), "--data", str(photos), "--model", "tiny",
        "--register", NAME, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    said = " ".join(made.stderr.split())
    assert "dvc repro && git add -A && git commit" in said  # commit before `dvc exp run`
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["data"]["source"] == str(photos.resolve())
    assert params["model"]["spec"] == "tiny"
    assert params["registry"]["enabled"] is True and params["registry"]["name"] == NAME
    assert (project / ".dvc").is_dir() and (project / "dvc.yaml").is_file()
    assert sh("git", "status", "--porcelain", cwd=project, env=env).strip() == ""
    assert "mlruns.db" in (project / ".gitignore").read_text().split()

    tune_params(project)
    sh("git", "commit", "--quiet", "-am", "params for the test photos", cwd=project, env=env)
    first = dvc("repro", cwd=project, env=env)
    assert ran_stages(first) == STAGES

    record = json.loads((project / "models" / "registered.json").read_text())
    assert record["registered"] is True and record["name"] == NAME and record["version"] == 1
    assert record["promotion"]["alias"] == "production" and record["promotion"]["promoted"]
    store = project / "mlruns.db"
    assert store.is_file(), "the registry is the project's own store"

    # ACCEPTANCE 4: the version's data version is the md5 DVC recorded for the manifest
    client = registry_client(f"sqlite:///{store}")
    registered = client.get_model_version(NAME, "1")
    manifest = project / "data" / "split" / "manifest.parquet"
    assert registered.tags[TAG_DATA_VERSION] == version(manifest) == file_digest(manifest, "md5")
    assert str(client.get_model_version_by_alias(NAME, "production").version) == "1"

    summary = run_cli("project", "summary", str(project), cwd=tmp_path, env=env)
    assert summary.returncode == 0, summary.stderr
    text = " ".join(summary.stdout.split())
    assert f"{NAME} version 1" in text and "promoted to @production" in text
    assert f"models:/{NAME}@production" in text and "reports/eval/report.html" in text
    as_json = run_cli("project", "summary", str(project), "--json", cwd=tmp_path, env=env)
    report = json.loads(as_json.stdout)
    assert report["registry"]["version"] == 1 and report["not_run"] == []
    assert [row["format"] for row in report["exports"]] == ["onnx"]
    assert report["exports"][0]["passed"] is True
    commands = [step["command"] for step in report["next"]]
    commit = next(i for i, c in enumerate(commands) if "git add -A && git commit" in c)
    assert commit < min(i for i, c in enumerate(commands) if "dvc exp run" in c)

    # `models:/` runs the format the version serves (as `mlflow models serve` does)
    ref = f"models:/{NAME}@production"
    image = str(photos / CLASSES[0] / "0.png")
    served = run_cli("predict", image, "--bundle", ref, "--print", "json", cwd=project, env=env)
    assert served.returncode == 0, served.stderr
    assert "format onnx, the one this registered version serves" in " ".join(served.stderr.split())
    asked = ("predict", image, "--bundle", ref, "--format", "torch", "--print", "json")
    torch_run = run_cli(*asked, cwd=project, env=env)
    assert torch_run.returncode == 0, torch_run.stderr
    assert "format torch (--format); this registered version serves onnx" in " ".join(
        torch_run.stderr.split()
    )
    evaluated = run_cli(
        "evaluate", "--bundle", ref, "--data", "data/split", "--output", str(tmp_path / "eval"),
        "--bootstrap", "0", "--tracking", "none", cwd=project, env=env,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert "format onnx, the one this registered version serves" in " ".join(
        evaluated.stderr.split()
    )

    again = dvc("repro", cwd=project, env=env)
    assert ran_stages(again) == set() and "up to date" in again
    # the promotion gate's settings do not decide what is registered: no new version
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["registry"]["tolerance"] = 0.5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in dvc("status", cwd=project, env=env)

    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "--quiet", "-m", "baseline", cwd=project, env=env)
    assert sh("git", "status", "--porcelain", cwd=project, env=env).strip() == ""
    ran = dvc("exp", "run", "-S", "train.strategy=tip-adapter", cwd=project, env=env)
    assert {"train", "evaluate", "export", "register"} <= ran_stages(ran)
    assert not ran_stages(ran) & {"import", "validate", "split"}

    shown = json.loads(dvc("exp", "show", "--json", cwd=project, env=env))
    rows = experiments(shown)
    assert len(rows) == 2, rows  # the baseline commit and the experiment
    for metrics in rows.values():
        assert "val_accuracy" in metrics["models/metrics.json"]
        assert "accuracy" in metrics["reports/eval/metrics.json"]
    versions = sorted(m["models/registered.json"]["version"] for m in rows.values())
    assert versions == [1, 2]  # the experiment registered a version of its own
    assert sorted(strategies(shown)) == ["linear-probe", "tip-adapter"]


def test_project_init_replaces_only_with_force_keeps_comments_and_summary_names_what_has_not_run(
    tmp_path: Path, project_env: dict[str, str]
) -> None:
    env = project_env
    photos = tmp_path / "photos"
    make_photos(photos)
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    init = ("project", "init", str(project), "--data", str(photos), "--strategy", "tip-adapter")

    refused = run_cli(*init, cwd=tmp_path, env=env)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert [p.name for p in project.iterdir()] == ["notes.txt"]

    made = run_cli(*init, "--force", cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    assert not (project / "notes.txt").exists()
    template = (project_template_dir() / "params.yaml").read_text().splitlines()
    written = (project / "params.yaml").read_text().splitlines()
    changed = [new for old, new in zip(template, written, strict=True) if old != new]
    assert [line.split("#")[0].split() for line in changed] == [
        ["source:", str(photos.resolve())],
        ["strategy:", "tip-adapter"],
    ]
    comments = [line.partition("#")[2] for line in template]
    assert [line.partition("#")[2] for line in written] == comments  # every comment kept
    assert yaml.safe_load("\n".join(written))["registry"]["enabled"] is False
    assert sh("git", "log", "--format=%s", cwd=project, env=env).strip() == "clip-har project init"
    assert (project / "dvc.yaml").read_bytes() == (project_template_dir() / "dvc.yaml").read_bytes()

    summary = run_cli("project", "summary", str(project), cwd=tmp_path, env=env)
    assert summary.returncode == 0, summary.stderr
    for stage in ("train", "evaluate", "export", "register"):
        assert f"not run yet: stage {stage}" in " ".join(summary.stdout.split())
