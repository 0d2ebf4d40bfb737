"""``clip-har registry register|list|show|compare`` against a real SQLite MLflow store, and
the registered pyfunc model predicting exactly what its bundle predicts (issue 14,
acceptance 2)."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from clip_har.inference.predictor import Predictor
from clip_har.registry.store import (
    TAG_BACKBONE,
    TAG_DATA_VERSION,
    TAG_EVALUATION_PATH,
    TAG_FORMAT,
    TAG_GIT_COMMIT,
    TAG_METRIC,
    TAG_PARITY,
    TAG_TRAINING_RUN,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with onnx and onnx-int8 exports, and lineage a user would have."""
    from conftest import make_photo

    root = tmp_path_factory.mktemp("registry")
    photos = root / "photos"
    photos.mkdir()
    for index, size in enumerate([(120, 90), (64, 200), (300, 300), (50, 40)]):
        make_photo(photos / f"p{index}.png", size, seed=index)
    bundle = Path(shutil.copytree(tiny_bundle, root / "bundle"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["lineage"].update(data_version="md5:0123abcd", git_commit="a" * 40)
    manifest["metrics"] = {"val_accuracy": 0.5, "zero_shot_val_accuracy": 0.25}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    done = run_cli(
        "export", str(bundle), "-o", str(root / "exported"),
        "--formats", "onnx,onnx-int8", "--parity-data", str(photos),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root / "exported"


def _evaluate(bundle: Path, root: Path, photos_per_class: int) -> Path:
    """A real `clip-har evaluate` output of ``bundle`` on generated labelled photos."""
    from conftest import make_photo

    for offset, label in enumerate(("running", "sitting")):
        (root / "photos" / label).mkdir(parents=True)
        for index in range(photos_per_class):
            make_photo(root / "photos" / label / f"{index}.jpg", seed=index + 10 * offset)
    done = run_cli("data", "import", str(root / "photos"), "-o", str(root / "manifest"))
    assert done.returncode == 0, done.stderr
    done = run_cli(
        "evaluate", "-b", str(bundle), "-d", str(root / "manifest"), "-o", str(root / "eval"),
        "--split", "all", "--tracking", "none", "--bootstrap", "20",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root / "eval"


@pytest.fixture(scope="module")
def evaluations(exported: Path) -> tuple[Path, Path]:
    """Two evaluations (4 and 3 photos a class) of the bundle `exported` was exported from:
    what the pipeline registers with models/exported."""
    bundle = exported.parent / "bundle"
    return (
        _evaluate(bundle, exported.parent / "eval-a", 4),
        _evaluate(bundle, exported.parent / "eval-b", 3),
    )


def _photos(exported: Path) -> list[Path]:
    return sorted((exported.parent / "photos").iterdir())


def test_register_show_list_compare_and_the_pyfunc_predicts_like_the_bundle(
    exported: Path, tmp_path: Path, clip_har_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {"MLFLOW_TRACKING_URI": store}
    record = tmp_path / "registered.json"
    first = run_cli(
        "registry", "register", str(exported), "--name", "har", "--record", str(record),
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "models:/har/1" in first.stdout and "onnx-int8" in first.stdout
    assert "registry promote har 1" in first.stdout  # what to run next
    written = json.loads(record.read_text())
    assert written["registered"] is True and written["uri"] == "models:/har/1"
    assert written["format"] == "onnx-int8" and written["promotion"] is None

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    version = client.get_model_version("har", "1")
    tags = version.tags
    assert tags[TAG_FORMAT] == "onnx-int8"  # the best export that passed its parity gate
    assert tags[TAG_DATA_VERSION] == "md5:0123abcd" and tags[TAG_GIT_COMMIT] == "a" * 40
    assert tags[TAG_BACKBONE].startswith("sha256:")
    assert tags[TAG_TRAINING_RUN] == "untracked"
    assert float(tags[f"{TAG_METRIC}val_accuracy"]) == 0.5
    assert json.loads(tags[TAG_PARITY])["onnx"]["passed"] is True
    assert version.run_id and client.get_run(version.run_id).info.status == "FINISHED"

    again = run_cli("registry", "register", str(exported), "--name", "har", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["version"] == 2

    shown = run_cli("registry", "show", "models:/har/1", env=env)
    assert shown.returncode == 0, shown.stderr
    for needed in ("md5:0123abcd", "a" * 40, "onnx-int8", "val_accuracy", "parity onnx"):
        assert needed in shown.stdout, shown.stdout
    versions = run_cli("registry", "show", "har", "--json", env=env)
    assert [row["version"] for row in json.loads(versions.stdout)] == [1, 2]

    client.set_registered_model_alias("har", "production", "2")
    listed = run_cli("registry", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (model,) = json.loads(listed.stdout)
    assert model["latest_version"] == 2 and model["aliases"]["production"]["version"] == 2
    compared = run_cli("registry", "compare", "har/1", "har/2", env=env)
    assert compared.returncode == 0, compared.stderr
    assert "val_accuracy" in compared.stdout and "+0.0000" in compared.stdout
    assert "--evaluation" in compared.stderr  # why there is no paired test

    # acceptance 2: the alias loads as a pyfunc model that predicts what the bundle does
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    model_uri = "models:/har@production"
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    photos = _photos(exported)
    reference = list(Predictor.from_bundle(exported, format="onnx-int8").predict_files(photos))
    expected = np.stack([r.prediction.probabilities for r in reference if r.prediction])
    inputs = {
        "path": pd.DataFrame({"path": [str(p) for p in photos]}),
        "image": pd.DataFrame(
            {"image": [base64.b64encode(p.read_bytes()).decode() for p in photos]}
        ),
    }
    for column, frame in inputs.items():
        out = pyfunc.predict(frame)
        labels = [r.prediction.label for r in reference if r.prediction]
        assert list(out["label"]) == labels, column
        np.testing.assert_allclose(np.stack(out["probabilities"]), expected, atol=1e-5)

    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="row 0") as bad:
        pyfunc.predict(pd.DataFrame({"image": ["not base64!"]}))
    assert bad.value.error_code == "INVALID_PARAMETER_VALUE"


def test_register_errors_are_clear(exported: Path, tmp_path: Path, clip_har_cache: Path) -> None:
    from conftest import free_port

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}"}
    damaged = Path(shutil.copytree(exported, tmp_path / "damaged"))
    onnx = damaged / "exports" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-100])
    refused = run_cli("registry", "register", str(damaged), "--name", "har", env=env)
    assert refused.returncode == 1 and "model.onnx" in refused.stderr
    assert "damaged" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "mlruns.db").exists()  # refused before touching the store
    bad_name = run_cli("registry", "register", str(exported), "--name", "no spaces", env=env)
    assert bad_name.returncode == 2 and "invalid registered model name" in bad_name.stderr
    unknown = run_cli("registry", "show", "nothing@production", env=env)
    assert unknown.returncode == 1 and "no model registry" in unknown.stderr
    down = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    unreachable = run_cli("registry", "list", env=down, timeout=60)
    assert unreachable.returncode == 1 and "unreachable" in unreachable.stderr
    disabled = tmp_path / "skipped.json"
    skipped = run_cli(
        "registry", "register", str(exported), "--if-enabled", "--record", str(disabled),
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert skipped.returncode == 0, skipped.stderr
    assert json.loads(disabled.read_text())["registered"] is False


def test_each_version_keeps_its_own_evaluation_and_compares_with_itself(
    exported: Path, evaluations: tuple[Path, Path], tmp_path: Path, clip_har_cache: Path
) -> None:
    """Two versions logged into the same training run, each with its evaluation: the
    first version's evaluation (and so its comparison) is not overwritten by the second."""
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {"MLFLOW_TRACKING_URI": store}
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    artifacts = (tmp_path / "artifacts").as_uri()  # MLflow's default is ./mlruns of the cwd
    training = client.create_run(client.create_experiment("training", artifacts)).info.run_id
    client.set_terminated(training)
    trained = Path(shutil.copytree(exported, tmp_path / "trained"))
    manifest = json.loads((trained / "manifest.json").read_text())
    manifest["lineage"]["run_id"] = training
    (trained / "manifest.json").write_text(json.dumps(manifest))
    for evaluation in evaluations:
        done = run_cli("registry", "register", str(trained), "--name", "har",
                       "--evaluation", str(evaluation), env=env, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "CloudPickle" not in done.stderr and "Downloading" not in done.stderr
    versions = [client.get_model_version("har", str(n)) for n in (1, 2)]
    assert {v.run_id for v in versions} == {training}
    paths = [v.tags[TAG_EVALUATION_PATH] for v in versions]
    assert paths[0] != paths[1]
    for path, evaluation in zip(paths, evaluations, strict=True):
        logged = Path(client.download_artifacts(training, path, str(tmp_path / path)))
        assert (logged / "metrics.json").read_bytes() == (evaluation / "metrics.json").read_bytes()

    compared = run_cli("registry", "compare", "har/1", "har/2", "--json", env=env)
    assert compared.returncode == 0, compared.stderr
    assert "Downloading" not in compared.stderr
    report = json.loads(compared.stdout)
    assert report["paired"] is not None, report["note"]  # each version's own evaluation
    assert {r["metric"]: r["first"] for r in report["metrics"]}["n_evaluated"] == 8

    client.set_registered_model_alias("har", "production", "1")
    itself = run_cli("registry", "compare", "har/1", "har@production", "--json", env=env)
    assert itself.returncode == 0, itself.stderr
    same = json.loads(itself.stdout)
    assert same["metrics"] and all(row["delta"] == 0 for row in same["metrics"])
    assert same["paired"] is None and "itself" in same["note"]

    shown = run_cli("registry", "show", "har/2", "--json", env=env)
    assert json.loads(shown.stdout)["evaluation_path"] == paths[1]


def test_an_evaluation_of_another_model_is_refused(
    exported: Path, evaluations: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The evaluation of the zero-shot bundle is not the evaluation of a tip-adapter one
    (same classes and backbone); an older evaluation that recorded less is accepted with a
    warning for what cannot be checked."""
    from clip_har.errors import EvaluationError
    from clip_har.evaluation.record import read_evaluation
    from clip_har.models.bundle import open_bundle

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}"}
    other = Path(shutil.copytree(exported, tmp_path / "tip"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["lineage"]["strategy"] = "tip-adapter"
    (other / "manifest.json").write_text(json.dumps(manifest))
    refused = run_cli("registry", "register", str(other), "--name", "har",
                      "--evaluation", str(evaluations[0]), env=env)  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "evaluated another model" in refused.stderr and "tip-adapter" in refused.stderr
    assert "Traceback" not in refused.stderr

    own = open_bundle(exported).manifest
    read_evaluation(evaluations[0], own)  # the exported copy of the evaluated bundle
    head = own.head.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(EvaluationError, match="head sha256"):
        read_evaluation(evaluations[0], own.model_copy(update={"head": head}))

    older = Path(shutil.copytree(evaluations[0], tmp_path / "older"))
    metrics = json.loads((older / "metrics.json").read_text())
    for key in ("backbone_fingerprint", "head_sha256", "encoder_sha256"):
        del metrics["source"][key]
    (older / "metrics.json").write_text(json.dumps(metrics))
    with caplog.at_level("WARNING"):
        record = read_evaluation(older, own)
    assert record.source is not None and "head sha256" in caplog.text

    empty = run_cli("registry", "register", str(exported), "--name", "", env=env)
    assert empty.returncode == 2 and "--name" in empty.stderr
