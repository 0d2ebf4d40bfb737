"""Bundles: exact round trip, validation messages that name file and field, safe overwrite."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_har.errors import BundleError
from clip_har.inference.engines import create_engine
from clip_har.models.backbone import Backbone
from clip_har.models.bundle import MANIFEST, open_bundle, record_exports, save_bundle
from clip_har.models.classifier import build_zero_shot_classifier
from clip_har.models.prompts import load_class_names, load_prompt_set


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def _edit_manifest(directory: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = directory / MANIFEST
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_round_trip_gives_bit_identical_probabilities(
    tiny_backbone: Backbone, tiny_bundle: Path
) -> None:
    prompts = load_prompt_set("actions")
    original = build_zero_shot_classifier(tiny_backbone, load_class_names("har15"), prompts)
    pixels = torch.randn(5, 3, *tiny_backbone.image_config.output_size)
    expected = original.predict_proba(pixels).numpy()
    loaded = create_engine(open_bundle(tiny_bundle), "torch").predict(pixels.numpy())
    np.testing.assert_array_equal(loaded, expected)


def test_manifest_records_lineage_and_random_backbone(tiny_bundle: Path) -> None:
    manifest = open_bundle(tiny_bundle).manifest
    assert manifest.schema_version == 1
    assert manifest.class_names == load_class_names("har15")
    assert manifest.backbone.spec == "tiny"
    assert manifest.backbone.random_weights is True
    assert manifest.backbone.fingerprint.startswith("sha256:")
    assert manifest.head.type == "zero_shot"
    assert manifest.preprocessing.crop_size == (64, 64)
    assert manifest.lineage.clip_har_version
    assert len(manifest.prompts.templates) >= 8


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("class_names"), "field 'class_names': Field required"),
        (lambda d: d.__setitem__("class_names", []), "field 'class_names'"),
        (lambda d: d["head"].__setitem__("type", "mystery"), "field 'head.type'"),
        (lambda d: d.__setitem__("schema_version", 99), "'schema_version' is 99"),
        (lambda d: d["backbone"].__setitem__("embed_dim", "big"), "field 'backbone.embed_dim'"),
        (lambda d: d["preprocessing"].__setitem__("std", [1, 0, 1]), "field 'std': must be non"),
    ],
)
def test_invalid_manifest_names_file_and_field(
    tiny_bundle: Path, tmp_path: Path, edit, message
) -> None:  # type: ignore[no-untyped-def]
    copy = _copy(tiny_bundle, tmp_path)
    _edit_manifest(copy, edit)
    with pytest.raises(BundleError) as info:
        open_bundle(copy)
    assert str(copy / MANIFEST) in str(info.value)
    assert message in str(info.value)


def test_missing_or_corrupt_files(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        open_bundle(tmp_path / "nowhere")
    copy = _copy(tiny_bundle, tmp_path)
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        open_bundle(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        open_bundle(copy)


def test_corrupt_head_is_reported(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_bundle, tmp_path)
    (copy / "head.safetensors").write_bytes(b"garbage")
    bundle = open_bundle(copy)
    with pytest.raises(BundleError, match="cannot read head weights"):
        bundle.load_head()


def test_class_count_mismatch_is_reported(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_bundle, tmp_path)
    _edit_manifest(copy, lambda d: d["class_names"].append("extra"))
    with pytest.raises(BundleError, match="head has 15 classes but the manifest names 16"):
        open_bundle(copy).load_head()


def test_changed_backbone_is_detected(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_bundle, tmp_path)
    _edit_manifest(copy, lambda d: d["backbone"].__setitem__("fingerprint", "sha256:0000"))
    with pytest.raises(BundleError, match="has changed since the bundle was made"):
        open_bundle(copy).load_backbone()


def test_existing_bundle_is_kept_unless_forced(tiny_backbone: Backbone, tmp_path: Path) -> None:
    prompts = load_prompt_set("minimal")
    first = build_zero_shot_classifier(tiny_backbone, ["a", "b"], prompts)
    target = tmp_path / "bundle"
    save_bundle(target, classifier=first, backbone=tiny_backbone, prompts=prompts)
    second = build_zero_shot_classifier(tiny_backbone, ["x", "y", "z"], prompts)
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(target, classifier=second, backbone=tiny_backbone, prompts=prompts)
    assert open_bundle(target).class_names == ["a", "b"]
    save_bundle(target, classifier=second, backbone=tiny_backbone, prompts=prompts, overwrite=True)
    assert open_bundle(target).class_names == ["x", "y", "z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging left behind


def test_embedded_backbone_makes_bundle_self_contained(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    prompts = load_prompt_set("minimal")
    classifier = build_zero_shot_classifier(tiny_backbone, ["a", "b"], prompts)
    target = tmp_path / "standalone"
    save_bundle(
        target,
        classifier=classifier,
        backbone=tiny_backbone,
        prompts=prompts,
        include_backbone=True,
    )
    bundle = open_bundle(target)
    assert bundle.manifest.backbone.embedded
    assert bundle.load_backbone().source_dir == target / "backbone"
    pixels = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    expected = classifier.predict_proba(torch.from_numpy(pixels)).numpy()
    np.testing.assert_array_equal(create_engine(bundle).predict(pixels), expected)


def test_recording_exports_leaves_no_lock_file_in_the_bundle(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    copy = _copy(tiny_bundle, tmp_path)
    before = sorted(p.name for p in copy.iterdir())
    record_exports(open_bundle(copy), [])
    assert sorted(p.name for p in copy.iterdir()) == before  # no manifest.json.lock
