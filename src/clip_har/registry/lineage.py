"""What ``registry list`` and ``registry show`` print: registered models, their versions,
and one version's lineage (run, params, data, code, backbone, metrics, parity, bundle).

Everything is read from the version's tags (set by ``register``) and its run.
See docs/registry.md#inspecting-versions.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from clip_har.registry.store import (
    TAG_BACKBONE,
    TAG_DATA_VERSION,
    TAG_EVALUATION_PATH,
    TAG_FORMAT,
    TAG_GIT_COMMIT,
    TAG_HAS_EVALUATION,
    TAG_METRIC,
    TAG_PARENT_BUNDLE,
    TAG_PARITY,
    TAG_TRAINING_RUN,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

RUN_PARAM_PREFIXES = ("model.", "train.")  # the training params `show` prints


def evaluation_artifact(version: ModelVersion) -> str | None:
    """The run artifact path of the evaluation registered with ``version`` (its own
    folder; the run's ``evaluation/`` for versions registered before that was recorded),
    None when it was registered without one."""
    from clip_har.registry.register import EVALUATION_ARTIFACT

    tags = version.tags or {}
    if tags.get(TAG_HAS_EVALUATION) != "true" or not version.run_id:
        return None
    return tags.get(TAG_EVALUATION_PATH) or EVALUATION_ARTIFACT


def version_metrics(version: ModelVersion) -> dict[str, float]:
    """The metrics ``register`` tagged the version with (bundle + evaluation)."""
    metrics = {}
    for key, value in (version.tags or {}).items():
        if key.startswith(TAG_METRIC):
            try:
                metrics[key.removeprefix(TAG_METRIC)] = float(value)
            except ValueError:
                continue  # a tag someone else set by hand
    return dict(sorted(metrics.items()))


def created_at(version: ModelVersion) -> str:
    """The version's creation time, ISO 8601 in UTC to the second."""
    stamp = datetime.fromtimestamp((version.creation_timestamp or 0) / 1000, tz=timezone.utc)
    return stamp.isoformat(timespec="seconds")


def all_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """Every version of the registered model ``name``, oldest first."""
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda v: int(v.version))


def _aliases(client: MlflowClient, name: str) -> dict[str, int]:
    """alias -> version of the registered model ``name``."""
    model = client.get_registered_model(name)
    return {alias: int(version) for alias, version in sorted((model.aliases or {}).items())}


def list_models(client: MlflowClient, primary_metric: str) -> list[dict[str, Any]]:
    """Every registered model: its latest version, and each alias with its holder's
    ``primary_metric`` (None when the holder has none)."""
    rows = []
    for model in sorted(client.search_registered_models(), key=lambda m: m.name):
        versions = {int(v.version): v for v in all_versions(client, model.name)}
        aliases = {
            alias: {
                "version": number,
                primary_metric: version_metrics(versions[number]).get(primary_metric)
                if number in versions
                else None,
            }
            for alias, number in _aliases(client, model.name).items()
        }
        rows.append(
            {
                "name": model.name,
                "versions": len(versions),
                "latest_version": max(versions, default=None),
                "aliases": aliases,
                "description": model.description or "",
            }
        )
    return rows


def version_rows(client: MlflowClient, name: str, primary_metric: str) -> list[dict[str, Any]]:
    """One row per version of ``name``: created, format, primary metric, aliases, data."""
    holders: dict[int, list[str]] = {}
    for alias, number in _aliases(client, name).items():
        holders.setdefault(number, []).append(alias)
    rows = []
    for version in all_versions(client, name):
        tags = version.tags or {}
        rows.append(
            {
                "version": int(version.version),
                "created": created_at(version),
                "format": tags.get(TAG_FORMAT),
                primary_metric: version_metrics(version).get(primary_metric),
                "aliases": holders.get(int(version.version), []),
                "data_version": tags.get(TAG_DATA_VERSION),
            }
        )
    return rows


def version_lineage(client: MlflowClient, version: ModelVersion) -> dict[str, Any]:
    """Everything known about where ``version`` came from."""
    from mlflow.exceptions import MlflowException

    tags = version.tags or {}
    params: dict[str, str] = {}
    run_status = None
    if version.run_id:
        try:
            run = client.get_run(version.run_id)
        except MlflowException:
            run_status = "not found in this store"
        else:
            run_status = run.info.status
            params = {
                key: value
                for key, value in sorted(run.data.params.items())
                if key.startswith(RUN_PARAM_PREFIXES)
            }
    try:
        parity = json.loads(tags.get(TAG_PARITY, "{}"))
    except json.JSONDecodeError:
        parity = {}
    number = int(version.version)
    return {
        "name": version.name,
        "version": number,
        "uri": f"models:/{version.name}/{number}",
        "created": created_at(version),
        "description": version.description or "",
        "aliases": sorted(a for a, v in _aliases(client, version.name).items() if v == number),
        "format": tags.get(TAG_FORMAT),
        "run_id": version.run_id,
        "run_status": run_status,
        "training_run_id": tags.get(TAG_TRAINING_RUN),
        "params": params,
        "data_version": tags.get(TAG_DATA_VERSION),
        "git_commit": tags.get(TAG_GIT_COMMIT),
        "backbone_fingerprint": tags.get(TAG_BACKBONE),
        "parent_bundle": tags.get(TAG_PARENT_BUNDLE),
        "has_evaluation": tags.get(TAG_HAS_EVALUATION) == "true",
        "evaluation_path": evaluation_artifact(version),
        "metrics": version_metrics(version),
        "parity": parity if isinstance(parity, dict) else {},
    }
