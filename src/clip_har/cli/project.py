"""``clip-har project init|summary``: a fresh reproducible project (its own git repository,
DVC, and the pipeline ``dvc.yaml`` + ``params.yaml``) on a data folder, and a summary of
what its pipeline produced. See docs/registry.md "The whole lifecycle"."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from clip_har.cli.common import choice_metavar, console, err_console, one_of
from clip_har.cli.outputs import force_option, prepare_output
from clip_har.config import load_settings
from clip_har.data.versioning import run_dvc
from clip_har.errors import ClipHarError, ConfigError, UsageError
from clip_har.io import git_output, publish_directory
from clip_har.registry.store import check_name
from clip_har.resources import project_template_dir
from clip_har.tracking.mlflow_backend import DEFAULT_DB
from clip_har.training.strategies import STRATEGIES

logger = logging.getLogger(__name__)

app = typer.Typer(
    help="A reproducible project: the pipeline (dvc.yaml + params.yaml) on your data, in its "
    "own git repository with DVC; and a summary of what the pipeline produced.",
    no_args_is_help=True,
)

GITIGNORE = """\
# local stores and scratch output of a clip-har project: never committed
mlruns.db
mlartifacts/
mlruns/
wandb/
dvc_plots/
"""

# a commit needs an identity; used only for what git has not configured
FALLBACK_IDENTITY = {"user.name": "clip-har", "user.email": "clip-har@localhost"}

# the results of `dvc repro` (dvc.lock, the metrics) into git: the baseline `dvc exp run`
# and `dvc exp show` compare against is the last commit, so commit them before
COMMIT_RESULTS = "git add -A && git commit -m 'pipeline results'"

# what each pipeline output is, which stage writes it
TRAIN_METRICS = "models/metrics.json"
EVAL_METRICS = "reports/eval/metrics.json"
EXPORT_MANIFEST = "models/exported/manifest.json"
REGISTERED = "models/registered.json"
STAGE_OF = {
    TRAIN_METRICS: "train",
    EVAL_METRICS: "evaluate",
    EXPORT_MANIFEST: "export",
    REGISTERED: "register",
}
REPORTS = (
    "reports/eval/report.html",
    "reports/eval/report.md",
    "reports/eval/metrics_full.json",
    "reports/eval/predictions.csv",
)


# --------------------------------------------------------------------------- init


@app.command("init")
def init(
    directory: Path = typer.Argument(..., metavar="DIR", help="The project folder to create."),
    data: Path = typer.Option(
        ...,
        "--data",
        help="The photos: a folder (labels.csv + images/, or one sub-folder per class) or a "
        ".csv file. It stays where it is: the pipeline reads it by absolute path and DVC "
        "records its content.",
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="model.spec: hub id, folder or preset (default: params')."
    ),
    strategy: str | None = typer.Option(
        None,
        "--strategy",
        "-s",
        parser=one_of(list(STRATEGIES)),
        metavar=choice_metavar(list(STRATEGIES)),
        help="train.strategy (default: params').",
    ),
    register: str | None = typer.Option(
        None,
        "--register",
        metavar="NAME",
        help="Switch the register stage on (registry.enabled) under this registered model name.",
    ),
    force: bool = force_option(),
) -> None:
    """Make DIR a fresh reproducible project on the photos at --data: a git repository with
    DVC, the pipeline (dvc.yaml) and its settings (params.yaml), committed. Then `cd DIR &&
    dvc repro` runs import -> validate -> split -> embed -> train -> evaluate -> export ->
    register. Nothing outside DIR is changed."""
    source = data.expanduser().resolve()
    if not source.exists():
        raise ClipHarError(f"--data {data} does not exist: give a local folder or .csv file")
    if register is not None:
        check_name(register)
    prepare_output(directory, kind="dir", inputs=[source], force=force, option="DIR")
    values: dict[tuple[str, str], Any] = {("data", "source"): str(source)}
    if model is not None:
        values["model", "spec"] = model
    if strategy is not None:
        values["train", "strategy"] = strategy
    if register is not None:
        values["registry", "enabled"] = True
        values["registry", "name"] = register
    template = project_template_dir()
    with publish_directory(directory) as staging:
        (staging / "dvc.yaml").write_bytes((template / "dvc.yaml").read_bytes())
        params = set_params((template / "params.yaml").read_text(encoding="utf-8"), values)
        (staging / "params.yaml").write_text(params, encoding="utf-8")
        try:
            load_settings(staging / "params.yaml")
        except ConfigError as exc:
            raise UsageError(str(exc).replace(str(staging), str(directory))) from None
        (staging / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
        _git(staging, "init", "--quiet")
        run_dvc(["init", "--quiet"], staging)
        run_dvc(["config", "core.analytics", "false"], staging)
        _git(staging, "add", "-A")
        _git(staging, *_identity(staging), "commit", "--quiet", "-m", "clip-har project init")
    commit = (git_output("rev-parse", "--short", "HEAD", cwd=directory) or "").strip()
    registry = f"on, as '{register}'" if register is not None else "off (registry.enabled)"
    console.print(
        f"project {escape(str(directory))} (git commit {commit}): data {escape(str(source))}, "
        f"registry {escape(registry)}",
        soft_wrap=True,
    )
    err_console.print(  # `dvc exp show` compares experiments against the last commit
        f"next: cd {escape(shlex.quote(str(directory)))} && dvc repro && {COMMIT_RESULTS}   "
        "(then `clip-har project summary .`; commit before each `dvc exp run`, or the "
        "baseline shows no metrics)",
        soft_wrap=True,
    )


def set_params(text: str, values: Mapping[tuple[str, str], Any]) -> str:
    """``text`` (a params.yaml) with each ``(section, key)`` of ``values`` set, every other
    line (comments included) kept as it is. A key the file lacks is a ConfigError."""
    lines = text.splitlines(keepends=True)
    for (section, key), value in values.items():
        index = _key_line(lines, section, key)
        match = re.match(r"^(\s+[^:#]+:)(\s*)([^#\n]*?)(\s*#.*)?(\n?)$", lines[index])
        if match is None:  # pragma: no cover - _key_line matched the same shape
            raise ConfigError(f"cannot set {section}.{key} in the params template")
        head, space, old, comment, end = match.groups()
        new = f"{head} {_yaml_scalar(value)}"
        if comment:  # keep the comment's column when the new value leaves room for it
            column = len(head) + len(space) + len(old) + len(comment) - len(comment.lstrip())
            new = new.ljust(column - 1) + " " + comment.lstrip()
        lines[index] = new + end
    updated = "".join(lines)
    loaded = yaml.safe_load(updated)
    for (section, key), value in values.items():
        if loaded.get(section, {}).get(key) != value:
            raise ConfigError(f"cannot set {section}.{key} to {value!r} in the params template")
    return updated


def _key_line(lines: Sequence[str], section: str, key: str) -> int:
    """The index of ``  KEY:`` directly under the top-level ``SECTION:``."""
    inside = False
    for index, line in enumerate(lines):
        if re.match(r"^\S", line) and not line.startswith("#"):
            inside = re.match(rf"^{re.escape(section)}:\s*(#.*)?$", line) is not None
        elif inside and re.match(rf"^ {{2}}{re.escape(key)}:(\s|$)", line):
            return index
    raise ConfigError(f"the params template has no {section}.{key}")


def _yaml_scalar(value: Any) -> str:
    """``value`` as a one-line YAML scalar (quoted only when YAML needs it)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def _git(cwd: Path, *args: str) -> str:
    """``git ARGS`` in ``cwd``; a failure raises with git's words."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except OSError as exc:
        raise ClipHarError(f"cannot run git: {exc} (install git)") from None
    if done.returncode != 0:
        words = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise ClipHarError(f"git {args[0]} failed: " + " ".join(words[-3:]))
    return done.stdout


def _identity(cwd: Path) -> list[str]:
    """``-c user.name=… -c user.email=…`` for whichever git has not configured."""
    return [
        option
        for key, fallback in FALLBACK_IDENTITY.items()
        if not (git_output("config", key, cwd=cwd) or "").strip()
        for option in ("-c", f"{key}={fallback}")
    ]


# --------------------------------------------------------------------------- summary


@app.command("summary")
def summary(
    directory: Path = typer.Argument(Path(), metavar="[DIR]", help="The project folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """What the project's pipeline produced: zero-shot vs trained accuracy, the test
    evaluation, each export with its parity, the registered version and its alias, the
    report paths, and the next commands (serve it, open the MLflow UI, run an experiment).
    A stage that has not run yet is named."""
    if not (directory / "dvc.yaml").is_file():
        raise ClipHarError(
            f"{directory} is not a clip-har project (no dvc.yaml): "
            "create one with `clip-har project init DIR --data PHOTOS`"
        )
    report = project_summary(directory)
    if as_json:
        console.print_json(json.dumps(report))
    else:
        _print_summary(report)


def project_summary(directory: Path) -> dict[str, Any]:
    """The summary of the project at ``directory`` as plain data (what ``--json`` prints)."""
    root = directory.resolve()
    found = {name: _read_json(root / name) for name in STAGE_OF}
    report: dict[str, Any] = {
        "project": str(root),
        "training": _training(found[TRAIN_METRICS]),
        "evaluation": _evaluation(found[EVAL_METRICS]),
        "model": _model(found[EXPORT_MANIFEST]),
        "exports": _exports(found[EXPORT_MANIFEST]),
        "registry": _registered(found[REGISTERED]),
        "reports": [name for name in REPORTS if (root / name).is_file()],
        "not_run": [
            {"stage": stage, "missing": name}
            for name, stage in STAGE_OF.items()
            if found[name] is None
        ],
    }
    report["next"] = _next_commands(root, report["registry"])
    return report


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClipHarError(f"cannot read {path}: {exc}") from None
    if not isinstance(loaded, dict):
        raise ClipHarError(f"{path}: expected a JSON object")
    return loaded


def _training(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {
        "zero_shot_val_accuracy": metrics.get("zero_shot_val_accuracy"),
        "val_accuracy": metrics.get("val_accuracy"),
    }


def _evaluation(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {
        key: metrics.get(key)
        for key in ("accuracy", "f1_macro", "n_evaluated")
        if metrics.get(key) is not None
    }


def _model(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    if manifest is None:
        return None
    backbone = manifest.get("backbone") or {}
    lineage = manifest.get("lineage") or {}
    return {
        "backbone": backbone.get("spec"),
        "random_weights": bool(backbone.get("random_weights")),
        "strategy": lineage.get("strategy"),
        "data_version": lineage.get("data_version"),
    }


def _exports(manifest: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    if manifest is None:
        return None
    rows = []
    for name, record in (manifest.get("exports") or {}).items():
        parity = record.get("parity") or {}
        rows.append(
            {
                "format": name,
                "precision": record.get("precision"),
                "passed": bool(record.get("passed", parity.get("passed"))),
                "max_abs_diff": parity.get("max_abs_diff"),
                "top1_agreement": parity.get("top1_agreement"),
            }
        )
    return rows


def _registered(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    promotion = record.get("promotion")
    alias = (promotion or {}).get("alias") if isinstance(promotion, dict) else None
    promoted = bool(isinstance(promotion, dict) and promotion.get("promoted"))
    return {
        "registered": bool(record.get("registered")),
        "reason": record.get("reason"),
        "name": record.get("name"),
        "version": record.get("version"),
        "uri": record.get("uri"),
        "format": record.get("format"),
        "alias": alias,
        "promoted": promoted,
        "promotion_message": (promotion or {}).get("message")
        if isinstance(promotion, dict)
        else None,
    }


def _next_commands(root: Path, registry: dict[str, Any] | None) -> list[dict[str, str]]:
    """The commands to run next, in a shell, from anywhere."""
    here = shlex.quote(str(root))
    store = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / DEFAULT_DB}"
    steps: list[dict[str, str]] = []
    if registry and registry["registered"]:
        ref = (
            f"models:/{registry['name']}@{registry['alias']}"
            if registry["promoted"]
            else f"models:/{registry['name']}/{registry['version']}"
        )
        env = f"MLFLOW_TRACKING_URI={shlex.quote(store)}"
        steps += [
            {
                "what": "serve it (REST + Open Inference Protocol, follows the alias)",
                "command": f"{env} clip-har serve --bundle {ref}",
            },
            {
                "what": "or with MLflow's pyfunc server",
                "command": f"{env} mlflow models serve -m {ref} --env-manager local",
            },
            {
                "what": "predict with it",
                "command": f"{env} clip-har predict IMAGES --bundle {ref}",
            },
            {
                "what": "open the MLflow UI (runs and the registered model)",
                "command": f"cd {here} && clip-har mlflow serve",
            },
        ]
    if (git_output("status", "--porcelain", cwd=root) or "?").strip():
        steps.append(  # uncommitted results (or no git): the baseline would show no metrics
            {
                "what": "commit the results before `dvc exp run` (experiments are "
                "compared with the last commit: uncommitted, the baseline shows no metrics)",
                "command": f"cd {here} && {COMMIT_RESULTS}",
            }
        )
    if registry is not None and not registry["registered"]:
        steps.append(
            {
                "what": "register it (the register stage is off)",
                "command": f"cd {here} && dvc exp run -S registry.enabled=true",
            }
        )
    steps += [
        {
            "what": "run a comparable experiment",
            "command": f"cd {here} && dvc exp run -S train.strategy=tip-adapter",
        },
        {"what": "compare the experiments", "command": f"cd {here} && dvc exp show"},
    ]
    return steps


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def _print_summary(report: dict[str, Any]) -> None:
    """The summary for a person: a few lines, one table, the next commands."""
    lines = [f"[bold]project[/bold] {escape(report['project'])}"]
    model = report["model"]
    if model is not None:
        weights = (
            " (RANDOM WEIGHTS: predictions are meaningless)" if model["random_weights"] else ""
        )
        lines.append(
            f"model {escape(str(model['backbone']))}{weights}, strategy "
            f"{escape(str(model['strategy']))}, data version {escape(str(model['data_version']))}"
        )
    training = report["training"]
    if training is not None:
        lines.append(
            f"validation accuracy: zero-shot {_number(training['zero_shot_val_accuracy'])} -> "
            f"trained {_number(training['val_accuracy'])}"
        )
    evaluation = report["evaluation"]
    if evaluation is not None:
        lines.append(
            f"test: accuracy {_number(evaluation.get('accuracy'))}, macro F1 "
            f"{_number(evaluation.get('f1_macro'))} on {evaluation.get('n_evaluated', '?')} images"
        )
    console.print("\n".join(lines))
    if report["exports"] is not None:
        table = Table(title="exports (parity against torch fp32)")
        for column in ("format", "precision", "parity", "max |Δp|", "top-1 agreement"):
            table.add_column(column, no_wrap=True, justify="left" if column[0] in "fp" else "right")
        for row in report["exports"]:
            diff = row["max_abs_diff"]
            table.add_row(
                row["format"],
                str(row["precision"] or "-"),
                "passed" if row["passed"] else "[bold red]failed[/bold red]",
                f"{diff:.2e}" if isinstance(diff, int | float) else "-",
                _number(row["top1_agreement"]),
            )
        console.print(table)
    console.print(_registry_line(report["registry"]))
    for item in report["not_run"]:
        console.print(
            f"[yellow]not run yet:[/yellow] stage {item['stage']} ({item['missing']} is missing)"
        )
    if report["reports"]:
        console.print("reports: " + ", ".join(escape(name) for name in report["reports"]))
    console.print("[bold]next[/bold]")
    for step in report["next"]:
        console.print(f"  # {escape(step['what'])}\n  {escape(step['command'])}", soft_wrap=True)


def _registry_line(registry: dict[str, Any] | None) -> str:
    if registry is None:
        return "registry: the register stage has not run"
    if not registry["registered"]:
        reason = f" ({registry['reason']})" if registry["reason"] else ""
        return escape(f"registry: nothing registered{reason}")
    line = f"registry: {registry['name']} version {registry['version']}"
    if registry["format"]:
        line += f" (serves {registry['format']})"
    if registry["alias"] is None:
        line += ", not promoted"
    elif registry["promoted"]:
        line += f", promoted to @{registry['alias']}"
    else:
        line += f", not promoted to @{registry['alias']}"
        if registry["promotion_message"]:
            line += f": {registry['promotion_message']}"
    return escape(line)
