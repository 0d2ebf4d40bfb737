"""The embedding cache: parity with the encoder, reuse, invalidation, resuming, bad shards."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_photo
from safetensors.torch import save_file

from clip_har.data.manifest import conform
from clip_har.errors import FeatureStoreError
from clip_har.imaging import Preprocessor, load_image
from clip_har.io import file_sha256
from clip_har.models.backbone import Backbone
from clip_har.training.features import (
    STORE_FILE,
    FeatureStore,
    default_store_root,
    preprocessing_hash,
)

SIZES = [(120, 90), (64, 200), (80, 80), (50, 40), (257, 181)]


def photos(folder: Path, count: int, first_seed: int = 0) -> list[Path]:
    """``count`` distinct generated photos of assorted sizes and formats."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        make_photo(
            folder / f"img_{seed}.{'png' if seed % 2 else 'jpg'}", SIZES[seed % 5], seed=seed
        )
        for seed in range(first_seed, first_seed + count)
    ]


def manifest_of(paths: list[Path], sha256: list[str | None] | None = None) -> pd.DataFrame:
    """A manifest over ``paths``; unlabelled rows, sha256 computed unless given."""
    digests = sha256 if sha256 is not None else [file_sha256(p) for p in paths]
    frame = pd.DataFrame({"path": [str(p) for p in paths], "label": None, "sha256": digests})
    return conform(frame)


def reference(backbone: Backbone, paths: list[Path]) -> torch.Tensor:
    """The image encoder on the shared preprocessing, directly."""
    pixels = Preprocessor(backbone.image_config).batch([load_image(p) for p in paths])
    with torch.inference_mode():
        return backbone.image_encoder(torch.from_numpy(pixels)).clone()


def shard_files(store: FeatureStore) -> list[str]:
    return sorted(p.name for p in store.directory.glob("shard-*.safetensors"))


def test_embeddings_match_the_encoder_and_a_second_call_reuses_them(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    paths = photos(tmp_path / "images", 6)
    manifest = manifest_of(paths)
    store = FeatureStore(tmp_path / "store", tiny_backbone)
    features, stats = store.embed(manifest, batch_size=4)

    assert (stats.encoded, stats.reused, stats.skipped) == (6, 0, 0)
    expected = reference(tiny_backbone, paths)
    assert features.embeddings.dtype == torch.float32
    assert features.embeddings.shape == (6, tiny_backbone.embed_dim)
    torch.testing.assert_close(features.embeddings, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(features.embeddings.norm(dim=1), torch.ones(6))
    assert features.present.all()
    assert features.sha256 == list(manifest["sha256"])
    assert not features.embeddings.is_inference()  # usable as input to a trained head

    assert store.directory.parent == tmp_path / "store"
    assert store.directory.name == store.key
    info = json.loads((store.directory / STORE_FILE).read_text())
    assert info["backbone"]["fingerprint"] == tiny_backbone.fingerprint
    assert info["image_config"] == tiny_backbone.image_config.model_dump(mode="json")
    assert shard_files(store) == ["shard-000000.safetensors"]

    # a new store object (a new process) reads the shards: no forward pass at all
    again, stats = FeatureStore(tmp_path / "store", tiny_backbone).embed(manifest)
    assert (stats.encoded, stats.reused, stats.skipped) == (0, 6, 0)
    assert torch.equal(again.embeddings, features.embeddings)
    assert len(store) == 6


def test_images_are_shared_across_manifests_and_encoded_once_per_call(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    old = photos(tmp_path / "old", 4)
    store = FeatureStore(tmp_path / "store", tiny_backbone)
    first, _ = store.embed(manifest_of(old))

    new = photos(tmp_path / "new", 2, first_seed=10)
    copy = shutil.copyfile(new[1], tmp_path / "new" / "same_bytes.jpg")
    paths = [old[0], new[0], old[2], new[0], copy, new[1], old[3]]
    digests: list[str | None] = [file_sha256(p) for p in paths]
    manifest = manifest_of([*paths, old[1]], [*digests, None])  # no digest: skipped
    calls: list[tuple[int, int]] = []
    features, stats = FeatureStore(tmp_path / "store", tiny_backbone).embed(
        manifest, batch_size=1, progress=lambda done, total: calls.append((done, total))
    )

    assert (stats.encoded, stats.reused, stats.skipped) == (2, 5, 1)
    assert features.present.tolist() == [True] * 7 + [False]
    assert features.sha256[-1] is None
    assert torch.equal(features.embeddings[-1], torch.zeros(tiny_backbone.embed_dim))
    assert torch.equal(features.embeddings[[0, 2, 6]], first.embeddings[[0, 2, 3]])
    assert torch.equal(features.embeddings[1], features.embeddings[3])
    assert torch.equal(features.embeddings[4], features.embeddings[5])
    torch.testing.assert_close(
        features.embeddings[[1, 5]], reference(tiny_backbone, new), atol=1e-5, rtol=0
    )
    # distinct images: 3 cached at the start, then one call per batch of one
    assert calls == [(3, 5), (4, 5), (5, 5)]


def test_another_preprocessing_or_backbone_recomputes(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    paths = photos(tmp_path / "images", 3)
    manifest = manifest_of(paths)
    root = tmp_path / "store"
    base, _ = FeatureStore(root, tiny_backbone).embed(manifest)

    bilinear = tiny_backbone.image_config.model_copy(update={"resample": "bilinear"})
    assert preprocessing_hash(bilinear) != preprocessing_hash(tiny_backbone.image_config)
    other_config = dataclasses.replace(tiny_backbone, image_config=bilinear)
    features, stats = FeatureStore(root, other_config).embed(manifest)
    assert stats.encoded == 3
    torch.testing.assert_close(
        features.embeddings, reference(other_config, paths), atol=1e-5, rtol=0
    )
    assert not torch.allclose(features.embeddings, base.embeddings, atol=1e-4)

    other_weights = dataclasses.replace(tiny_backbone, fingerprint="sha256:" + "0" * 64)
    _, stats = FeatureStore(root, other_weights).embed(manifest)
    assert stats.encoded == 3

    _, stats = FeatureStore(root, tiny_backbone).embed(manifest)  # the original is intact
    assert (stats.encoded, stats.reused) == (0, 3)
    keys = {p.name for p in root.iterdir()}
    assert len(keys) == 3
    assert all(":" not in key and len(key) == 33 for key in keys)


def test_preprocessing_hash_is_stable_and_the_default_root_is_in_the_cache(
    tiny_backbone: Backbone,
) -> None:
    config = tiny_backbone.image_config
    copy = type(config).model_validate_json(config.model_dump_json())
    assert preprocessing_hash(copy) == preprocessing_hash(config)
    assert len(preprocessing_hash(config)) == 16
    assert default_store_root(Path("/c")) == Path("/c/features")


@pytest.mark.parametrize(("stop_at", "kept"), [(4, 4), (6, 6)])
def test_an_interrupted_run_keeps_finished_work_and_the_rerun_encodes_the_rest(
    tiny_backbone: Backbone, tmp_path: Path, stop_at: int, kept: int
) -> None:
    paths = photos(tmp_path / "images", 10)
    manifest = manifest_of(paths)
    root = tmp_path / "store"

    def interrupt(done: int, total: int) -> None:
        if done >= stop_at:
            raise KeyboardInterrupt

    store = FeatureStore(root, tiny_backbone, shard_size=4)
    with pytest.raises(KeyboardInterrupt):
        store.embed(manifest, batch_size=2, progress=interrupt)
    # stop_at=4: right after the first full shard; 6: mid-shard, the rest is saved on the way out
    assert len(FeatureStore(root, tiny_backbone)) == kept
    assert not [p for p in store.directory.iterdir() if p.name.startswith(".")]

    features, stats = FeatureStore(root, tiny_backbone, shard_size=4).embed(manifest)
    assert (stats.encoded, stats.reused) == (10 - kept, kept)
    torch.testing.assert_close(
        features.embeddings, reference(tiny_backbone, paths), atol=1e-5, rtol=0
    )


def test_unreadable_shards_are_ignored_with_a_warning(
    tiny_backbone: Backbone, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = photos(tmp_path / "images", 6)
    manifest = manifest_of(paths)
    root = tmp_path / "store"
    store = FeatureStore(root, tiny_backbone, shard_size=4)
    store.embed(manifest)
    assert shard_files(store) == ["shard-000000.safetensors", "shard-000001.safetensors"]

    second = store.directory / "shard-000001.safetensors"
    second.write_bytes(second.read_bytes()[:-7])  # truncated by a crash or a full disk
    (store.directory / "shard-000007.safetensors").write_bytes(b"\x00garbage")
    (store.directory / "shard-000003.safetensors").write_bytes(b"")
    (store.directory / ".shard-abc.tmp").write_bytes(b"left by a killed run")

    caplog.set_level(logging.WARNING, logger="clip_har.training.features")
    features, stats = FeatureStore(root, tiny_backbone, shard_size=4).embed(manifest)
    assert (stats.encoded, stats.reused, stats.skipped) == (2, 4, 0)
    torch.testing.assert_close(
        features.embeddings, reference(tiny_backbone, paths), atol=1e-5, rtol=0
    )
    warned = " ".join(r.getMessage() for r in caplog.records)
    for name in ("shard-000001", "shard-000003", "shard-000007"):
        assert f"ignoring unreadable embedding shard {store.directory / name}" in warned
    assert "shard-000008.safetensors" in shard_files(store)  # never over a broken file


def test_a_shard_of_another_width_is_ignored(tiny_backbone: Backbone, tmp_path: Path) -> None:
    paths = photos(tmp_path / "images", 2)
    manifest = manifest_of(paths)
    root = tmp_path / "store"
    FeatureStore(root, tiny_backbone).embed(manifest)
    store = FeatureStore(root, tiny_backbone)
    shard = store.directory / "shard-000000.safetensors"
    keys = json.dumps(list(manifest["sha256"]))
    save_file({"embeddings": torch.zeros(2, 5)}, str(shard), metadata={"sha256": keys})
    assert len(store) == 0
    _, stats = store.embed(manifest)
    assert stats.encoded == 2


def test_a_vanished_file_is_skipped_counted_and_not_cached(
    tiny_backbone: Backbone, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = photos(tmp_path / "images", 4)
    manifest = manifest_of(paths)
    paths[2].unlink()
    store = FeatureStore(tmp_path / "store", tiny_backbone)
    caplog.set_level(logging.WARNING)
    features, stats = store.embed(manifest)

    assert (stats.encoded, stats.reused, stats.skipped) == (3, 0, 1)
    assert features.present.tolist() == [True, True, False, True]
    assert torch.equal(features.embeddings[2], torch.zeros(tiny_backbone.embed_dim))
    assert "file not found" in caplog.text
    assert len(store) == 3

    _, stats = FeatureStore(tmp_path / "store", tiny_backbone).embed(manifest)
    assert (stats.encoded, stats.reused, stats.skipped) == (0, 3, 1)


def test_worker_processes_give_the_same_embeddings(tiny_backbone: Backbone, tmp_path: Path) -> None:
    manifest = manifest_of(photos(tmp_path / "images", 5))
    serial, _ = FeatureStore(tmp_path / "a", tiny_backbone).embed(manifest, batch_size=2)
    parallel, stats = FeatureStore(tmp_path / "b", tiny_backbone).embed(
        manifest, batch_size=2, num_workers=2
    )
    assert stats.encoded == 5
    torch.testing.assert_close(parallel.embeddings, serial.embeddings, atol=1e-6, rtol=0)


def test_the_encoder_runs_in_eval_mode_and_keeps_its_training_flag(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    encoder = tiny_backbone.image_encoder
    modes: list[bool] = []
    handle = encoder.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    encoder.train()
    try:
        FeatureStore(tmp_path / "store", tiny_backbone).embed(manifest_of(photos(tmp_path, 2)))
        assert modes == [False]
        assert encoder.training
    finally:
        handle.remove()
        encoder.eval()


def test_empty_manifests_and_missing_columns(tiny_backbone: Backbone, tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store", tiny_backbone)
    features, stats = store.embed(manifest_of([]))
    assert features.embeddings.shape == (0, tiny_backbone.embed_dim)
    assert (stats.encoded, stats.reused, stats.skipped) == (0, 0, 0)
    assert not store.directory.exists()
    with pytest.raises(FeatureStoreError, match="sha256"):
        store.embed(pd.DataFrame({"path": ["a.jpg"]}))
    with pytest.raises(ValueError, match="shard_size"):
        FeatureStore(tmp_path / "store", tiny_backbone, shard_size=0)
