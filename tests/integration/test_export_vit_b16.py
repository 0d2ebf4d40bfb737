"""The real ViT-B/16 architecture (random weights): every CPU format exports, and every fp32
format passes its parity gate (within 1e-4 of torch, full top-1 agreement)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clip_har.export.run import ExportOptions, export_bundle
from clip_har.models.backbone import load_backbone
from clip_har.models.bundle import save_bundle
from clip_har.models.classifier import build_zero_shot_classifier
from clip_har.models.prompts import load_class_names, load_prompt_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FORMATS = [
    "onnx", "onnx-opt", "onnx-int8", "onnx-int8-static", "onnx-fp16", "torchscript", "text-onnx"
]  # fmt: skip


def test_every_cpu_format_of_vit_b16_passes_parity(
    tmp_path: Path, clip_har_cache: Path, har_sample_dir: Path
) -> None:
    backbone = load_backbone("clip-vit-b16-random", cache_dir=clip_har_cache)
    prompts = load_prompt_set("minimal")
    classifier = build_zero_shot_classifier(backbone, load_class_names("har15"), prompts)
    bundle = tmp_path / "b16"
    save_bundle(bundle, classifier=classifier, backbone=backbone, prompts=prompts)
    photos = har_sample_dir / "images"
    options = ExportOptions(
        parity_data=photos, parity_count=8, calibration=photos, calibration_count=8
    )
    summary = export_bundle(bundle, FORMATS, options)
    assert summary.failures == {}
    assert set(summary.records) == set(FORMATS)
    for name, record in summary.records.items():
        parity = record.parity
        assert parity is not None and parity.real_photos and parity.images == 8, name
        if record.precision == "fp32":  # the gate every fp32 format must pass
            assert parity.passed and parity.max_abs_diff <= 1e-4, (name, parity)
            assert parity.top1_agreement == 1.0, name
        else:  # random weights: near-tied classes, so only the probability error is checked
            assert parity.max_abs_diff <= parity.max_abs_diff_limit, (name, parity)
    assert summary.records["onnx-opt"].details["fused_Attention"] == 12
    assert summary.records["onnx-int8"].bytes * 3.33 <= summary.records["onnx"].bytes
