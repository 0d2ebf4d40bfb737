"""Random-weight presets reproduce the published OpenAI CLIP architectures."""

import pytest
import torch
from transformers import CLIPModel

from clip_har.models.presets import PRESETS, preset_config

# Parameter counts of the real checkpoints openai/clip-vit-base-patch32 and -patch16.
PUBLISHED_PARAMETERS = {"clip-vit-b32-random": 151_277_313, "clip-vit-b16-random": 149_620_737}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_vit_b_presets_match_openai_architecture(name: str) -> None:
    config = preset_config(name)
    with torch.device("meta"):
        model = CLIPModel(config)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[name]
    assert config.vision_config.patch_size == (32 if "b32" in name else 16)
    assert config.text_config.vocab_size == 49408


def test_preset_tokens_fit_the_text_model() -> None:
    for name in PRESETS:
        text = preset_config(name).text_config
        assert text.eos_token_id < text.vocab_size
        assert text.bos_token_id < text.vocab_size
