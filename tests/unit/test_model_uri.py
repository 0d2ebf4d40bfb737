"""``models:/`` references resolve to a verified local copy of the registered bundle: downloaded
once per version, reused after, re-fetched when an alias moves, and never kept when damaged."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

from clip_har.errors import ModelRegistryError, UsageError
from clip_har.models.bundle import open_bundle, verify_bundle
from clip_har.registry.resolve import cache_path, resolve_bundle, resolve_registered
from clip_har.registry.store import BUNDLE_ARTIFACT, TAG_FORMAT

NAME = "har"


class _Echo(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """Only the artifacts matter here: resolve reads the bundle, never the Python model."""

    def predict(self, context: Any, model_input: list[Any], params: Any = None) -> list[Any]:
        return model_input


@dataclass(frozen=True)
class Store:
    uri: str
    sound: Path  # the bundle versions 1 and 2 of NAME hold


def _register(uri: str, experiment: str, name: str, artifacts: dict[str, str]) -> None:
    # MLflow's own scoped URI: set_tracking_uri(previous) would pin the URI for the rest of
    # this worker process, and later tests that set MLFLOW_TRACKING_URI would not be heard
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri), mlflow.start_run(experiment_id=experiment):
        mlflow.pyfunc.log_model(
            name="model",
            python_model=_Echo(),
            artifacts=artifacts,
            pip_requirements=[],
            registered_model_name=name,
        )


@pytest.fixture(scope="module")
def store(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A SQLite registry: NAME versions 1 and 2 (sound, @production on 1, 2 tagged as
    serving onnx) and 3 (a head whose bytes no longer match the manifest's sha256), and a
    model without a bundle."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlruns.db'}"
    damaged = Path(shutil.copytree(tiny_bundle, root / "damaged"))
    head = damaged / json.loads((damaged / "manifest.json").read_text())["head"]["file"]
    head.write_bytes(head.read_bytes()[:-8] + b"tampered")
    client = MlflowClient(uri)
    experiment = client.create_experiment("models", (root / "artifacts").as_uri())
    for bundle in (tiny_bundle, tiny_bundle, damaged):
        _register(uri, experiment, NAME, {BUNDLE_ARTIFACT: str(bundle)})
    _register(uri, experiment, "not-clip-har", {"weights": str(tiny_bundle)})
    client.set_registered_model_alias(NAME, "production", "1")
    client.set_model_version_tag(NAME, "2", TAG_FORMAT, "onnx")
    return Store(uri, tiny_bundle)


@pytest.fixture
def registry(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    return store


def test_a_path_passes_through_unchanged(tmp_path: Path) -> None:
    assert resolve_bundle("some/bundle", cache_dir=tmp_path) == Path("some/bundle")
    assert resolve_bundle(Path("models:/x"), cache_dir=tmp_path) == Path("models:/x")
    assert not (tmp_path / "registry").exists()


def test_a_version_is_downloaded_once_verified_and_reused(registry: Store, tmp_path: Path) -> None:
    first = resolve_bundle("models:/har/1", cache_dir=tmp_path)
    assert first == cache_path(tmp_path, registry.uri, NAME, 1)
    assert all(verdict.ok for verdict in verify_bundle(first))
    assert open_bundle(first).class_names == open_bundle(registry.sound).class_names
    stamp = first.stat()
    # the alias names the same version: the cached copy, not a second download
    again = resolve_bundle("models:/har@production", cache_dir=tmp_path)
    assert again == first
    after = again.stat()
    assert (after.st_ino, after.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)
    assert sorted(p.name for p in first.parent.iterdir()) == ["1"]  # no staging left over


def test_a_moved_alias_fetches_the_new_version(registry: Store, tmp_path: Path) -> None:
    client = MlflowClient(registry.uri)
    assert resolve_bundle("models:/har@production", cache_dir=tmp_path).name == "1"
    client.set_registered_model_alias(NAME, "production", "2")
    try:
        moved = resolve_bundle("models:/har@production", cache_dir=tmp_path)
    finally:
        client.set_registered_model_alias(NAME, "production", "1")
    assert moved == cache_path(tmp_path, registry.uri, NAME, 2)
    assert all(verdict.ok for verdict in verify_bundle(moved))


def test_a_damaged_download_is_refused_and_not_kept(registry: Store, tmp_path: Path) -> None:
    with pytest.raises(ModelRegistryError, match=r"har/3.*damaged.*head\.safetensors"):
        resolve_bundle("models:/har/3", cache_dir=tmp_path)
    folder = cache_path(tmp_path, registry.uri, NAME, 3)
    assert not folder.exists() and list(folder.parent.iterdir()) == []


def test_a_damaged_cached_copy_is_replaced_by_a_fresh_download(
    registry: Store, tmp_path: Path
) -> None:
    cached = resolve_bundle("models:/har/1", cache_dir=tmp_path)
    head = cached / open_bundle(cached).manifest.head.file
    head.unlink()
    inode = cached.stat().st_ino
    again = resolve_bundle("models:/har/1", cache_dir=tmp_path)
    assert again == cached and again.stat().st_ino != inode and head.is_file()
    assert all(verdict.ok for verdict in verify_bundle(again))


def test_a_cached_copy_changed_in_place_is_replaced_by_a_fresh_download(
    registry: Store, tmp_path: Path
) -> None:
    """One byte flipped, same size: it still opens, but its sha256 no longer matches."""
    cached = resolve_bundle("models:/har/1", cache_dir=tmp_path)
    head = cached / open_bundle(cached).manifest.head.file
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0xFF
    head.write_bytes(bytes(data))
    assert not all(verdict.ok for verdict in verify_bundle(cached))
    again = resolve_bundle("models:/har/1", cache_dir=tmp_path)
    assert again == cached
    assert all(verdict.ok for verdict in verify_bundle(again))
    assert head.read_bytes() != bytes(data)


def test_a_version_runs_the_format_it_serves_unless_one_is_asked_for(
    registry: Store, tmp_path: Path
) -> None:
    served = resolve_registered("models:/har/2", cache_dir=tmp_path)
    assert served.path == cache_path(tmp_path, registry.uri, NAME, 2)
    assert served.served_format == "onnx"
    assert served.format_for(None) == "onnx"  # what `mlflow models serve` runs
    assert served.format_for("torch") == "torch"  # an explicit --format wins
    assert "serves onnx" in (served.format_note("torch") or "")
    untagged = resolve_registered("models:/har@production", cache_dir=tmp_path)
    assert untagged.served_format is None and untagged.format_for(None) == "torch"
    plain = resolve_registered("some/bundle", cache_dir=tmp_path)
    assert plain.path == Path("some/bundle") and plain.format_for(None) == "torch"
    assert plain.format_note("torch") is None


def test_unknown_references_are_clear_errors(registry: Store, tmp_path: Path) -> None:
    with pytest.raises(ModelRegistryError, match="no registered model 'nope'"):
        resolve_bundle("models:/nope@production", cache_dir=tmp_path)
    with pytest.raises(ModelRegistryError, match="has no alias @staging"):
        resolve_bundle("models:/har@staging", cache_dir=tmp_path)
    with pytest.raises(ModelRegistryError, match="has no version 9"):
        resolve_bundle("models:/har/9", cache_dir=tmp_path)
    with pytest.raises(ModelRegistryError, match="not a clip-har model"):
        resolve_bundle("models:/not-clip-har/1", cache_dir=tmp_path)
    with pytest.raises(UsageError, match="not a registered model reference"):
        resolve_bundle("models:/har", cache_dir=tmp_path)


def test_a_missing_local_store_is_named_and_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    with pytest.raises(ModelRegistryError, match="no model registry at"):
        resolve_bundle("models:/har@production", cache_dir=tmp_path / "cache")
    assert not database.exists()


def test_an_unreachable_server_fails_fast_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(ModelRegistryError, match="unreachable"):
        resolve_bundle("models:/har@production", cache_dir=tmp_path)
