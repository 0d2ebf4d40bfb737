"""``registry compare NAME/A NAME/B``: the metric deltas of two registered versions, and
the paired comparison of ``evaluate compare`` when both were registered with their
evaluation. See docs/registry.md#inspecting-versions."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_har.errors import ModelRegistryError
from clip_har.registry.lineage import evaluation_artifact, version_metrics
from clip_har.registry.store import ModelRef, get_version

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

NO_PAIRED = (
    "the paired comparison (McNemar, bootstrap) needs both versions registered with "
    "--evaluation (`clip-har registry register BUNDLE --evaluation EVAL_DIR`)"
)


def metric_deltas(first: ModelVersion, second: ModelVersion) -> list[dict[str, Any]]:
    """Every metric both versions have: first, second and second minus first."""
    a, b = version_metrics(first), version_metrics(second)
    return [
        {"metric": key, "first": a[key], "second": b[key], "delta": b[key] - a[key]}
        for key in sorted(a.keys() & b.keys())
    ]


SAME_VERSION = "{ref} compared with itself: every delta is zero"


def _download(client: MlflowClient, version: ModelVersion, target: Path) -> Path | None:
    """The version's own evaluation (``evaluation_artifact``), downloaded into the new
    folder ``target``; None when it was registered without one."""
    artifact = evaluation_artifact(version)
    if artifact is None or not version.run_id:
        return None
    target.mkdir(parents=True)
    try:
        path = client.download_artifacts(version.run_id, artifact, str(target))
    except Exception as exc:  # mlflow raises many types: a lost run, artifacts, the server
        raise ModelRegistryError(
            f"cannot fetch the evaluation of {version.name}/{version.version} "
            f"(run {version.run_id}): {exc}"
        ) from None
    return Path(path)


def compare_versions(
    client: MlflowClient, first: ModelRef, second: ModelRef, *, seed: int = 0
) -> dict[str, Any]:
    """Metric deltas of ``second`` against ``first``; ``paired`` holds the comparison of
    their evaluations (``evaluate compare``'s row) or None, with ``note`` saying why."""
    from clip_har.evaluation.compare_runs import compare_evaluations

    versions = [get_version(client, ref) for ref in (first, second)]
    report: dict[str, Any] = {
        "first": f"{versions[0].name}/{versions[0].version}",
        "second": f"{versions[1].name}/{versions[1].version}",
        "metrics": metric_deltas(*versions),
        "paired": None,
        "note": None,
    }
    if report["first"] == report["second"]:
        report["note"] = SAME_VERSION.format(ref=report["first"])
        return report
    with tempfile.TemporaryDirectory(prefix="clip-har-compare-") as scratch:
        folders = [
            _download(client, v, Path(scratch) / f"{index}-v{v.version}")
            for index, v in enumerate(versions)
        ]
        if None in folders:
            report["note"] = NO_PAIRED
            return report
        result = compare_evaluations(
            [str(folder) for folder in folders if folder is not None],
            Path(scratch) / "report",
            seed=seed,
        )
    row = result["comparisons"][0]
    row.update(baseline=report["first"], model=report["second"])
    report["paired"] = row
    report["warnings"] = result["warnings"]
    return report
