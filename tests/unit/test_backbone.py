"""Backbone loading: presets through the real save_pretrained path, local dirs, hub errors."""

import json
import math
import time
from pathlib import Path

import pytest
import torch

from clip_har.errors import ClipHarError, ModelUnavailableError, PreprocessingConfigError
from clip_har.models.backbone import Backbone, load_backbone
from clip_har.models.presets import PRESET_MARKER, preset_dir


def test_tiny_preset_is_saved_in_save_pretrained_layout(
    tiny_backbone: Backbone, clip_har_cache: Path
) -> None:
    directory = preset_dir("tiny", clip_har_cache)
    assert tiny_backbone.source_dir == directory
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (directory / name).is_file(), name
    assert json.loads((directory / PRESET_MARKER).read_text())["random_weights"] is True
    assert tiny_backbone.random_weights
    assert "RANDOM WEIGHTS" in tiny_backbone.label


def test_tiny_preset_is_deterministic(tiny_backbone: Backbone, tmp_path: Path) -> None:
    rebuilt = load_backbone("tiny", cache_dir=tmp_path)
    assert rebuilt.fingerprint == tiny_backbone.fingerprint
    assert rebuilt.fingerprint.startswith("sha256:")


def test_embeddings_are_normalised(tiny_backbone: Backbone) -> None:
    side = tiny_backbone.image_config.output_size
    pixels = torch.randn(3, 3, *side)
    images = tiny_backbone.encode_image(pixels)
    texts = tiny_backbone.encode_text(["a photo of a person running.", "eating", "x" * 500])
    assert images.shape == (3, tiny_backbone.embed_dim)
    assert texts.shape == (3, tiny_backbone.embed_dim)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(3))
    assert tiny_backbone.logit_scale == pytest.approx(math.exp(2.6592), rel=1e-4)  # 1 / 0.07


def test_text_encoding_does_not_depend_on_batch(tiny_backbone: Backbone) -> None:
    together = tiny_backbone.encode_text(["running", "a much longer sentence about eating"])
    alone = tiny_backbone.encode_text(["running"])
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=0)


def test_local_directory_loads_with_content_fingerprint(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    copy = tmp_path / "my-model"
    tiny_backbone.model.save_pretrained(copy)
    tiny_backbone.tokenizer.save_pretrained(copy)
    (copy / "preprocessor_config.json").write_text(json.dumps(tiny_backbone.image_config.to_hf()))
    local = load_backbone(str(copy))
    assert not local.random_weights  # only presets carry the marker
    assert local.fingerprint.startswith("sha256:")
    pixels = torch.randn(2, 3, *tiny_backbone.image_config.output_size)
    torch.testing.assert_close(local.encode_image(pixels), tiny_backbone.encode_image(pixels))


@pytest.mark.parametrize(
    ("content", "field", "message"),
    [
        ({"image_std": [0.5, 0.0, 0.5]}, "image_std", "must be non-zero"),
        ({"image_mean": ["red", 0.5, 0.5]}, "image_mean", "must be a number"),
        ({"size": "big"}, "size", "unsupported value 'big'"),
        ({"rescale_factor": "1/255"}, "rescale_factor", "must be a number"),
        ({"resample": 5}, "resample", "hamming"),
        ("[1, 2, 3]", None, "must hold a JSON object"),
        ("{not json", None, "not readable JSON"),
    ],
)
def test_unparseable_preprocessing_config_names_file_and_field(
    tiny_backbone: Backbone,
    tmp_path: Path,
    content: dict[str, object] | str,
    field: str | None,
    message: str,
) -> None:
    copy = tmp_path / "my-model"
    tiny_backbone.model.save_pretrained(copy)
    tiny_backbone.tokenizer.save_pretrained(copy)
    config = copy / "preprocessor_config.json"
    if isinstance(content, str):
        config.write_text(content)
    else:
        config.write_text(json.dumps(tiny_backbone.image_config.to_hf() | content))
    with pytest.raises(PreprocessingConfigError) as info:
        load_backbone(str(copy))
    assert isinstance(info.value, ClipHarError)
    assert (info.value.field, info.value.source) == (field, str(config))
    assert str(config) in str(info.value) and message in str(info.value)
    if field is not None:
        assert f"'{field}'" in str(info.value)


def test_directory_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ModelUnavailableError, match="safetensors"):
        load_backbone(str(tmp_path))


def test_unreachable_hub_fails_fast_with_fixes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError) as info:
        load_backbone("openai/clip-vit-base-patch16", cache_dir=tmp_path)
    assert time.monotonic() - started < 60
    message = str(info.value)
    assert "openai/clip-vit-base-patch16" in message
    assert "--model tiny" in message
    assert "save_pretrained" in message


def test_nonsense_spec_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="not a directory, a preset"):
        load_backbone("./does/not/exist", cache_dir=tmp_path)


def test_any_clip_like_model_loads_siglip(tiny_backbone: Backbone, tmp_path: Path) -> None:
    """SigLIP: another architecture, square resize without crop, fixed-length text padding."""
    from transformers import SiglipConfig, SiglipModel

    layers = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
    config = SiglipConfig(
        text_config={
            **layers, "num_hidden_layers": 2, "vocab_size": 514, "max_position_embeddings": 77,
            "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 513,
        },
        vision_config={**layers, "num_hidden_layers": 2, "image_size": 32, "patch_size": 16},
    )  # fmt: skip
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(tmp_path)
    tiny_backbone.tokenizer.save_pretrained(tmp_path)
    processor = {
        "image_processor_type": "SiglipImageProcessor",
        "size": {"height": 32, "width": 32},
        "resample": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))

    siglip = load_backbone(str(tmp_path))
    assert siglip.model_type == "siglip"
    assert siglip.image_config.resize_mode == "exact"
    assert siglip.image_config.crop_size is None
    images = siglip.encode_image(torch.randn(2, 3, 32, 32))
    texts = siglip.encode_text(["running", "a photo of a person eating."])
    assert images.shape == texts.shape == (2, 32)
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(2))
