"""Built-in backbone presets: random-weight CLIPs built locally in ``save_pretrained`` layout.

Their predictions are meaningless, and everything that shows them says so.
See docs/models.md#presets.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clip_har.errors import ModelUnavailableError
from clip_har.imaging import ImageConfig
from clip_har.io import replace_directory, staging_directory
from clip_har.resources import configs_dir

log = logging.getLogger(__name__)

PRESET_BUILDER_VERSION = 1
PRESET_MARKER = "clip_har_preset.json"
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_SOT, _EOT = "<|startoftext|>", "<|endoftext|>"


@dataclass(frozen=True)
class Preset:
    """A random-weight model built from an architecture file in ``configs/models``."""

    name: str
    architecture: str
    seed: int


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", "tiny", seed=0),
    "clip-vit-b32-random": Preset("clip-vit-b32-random", "clip-vit-b32", seed=0),
    "clip-vit-b16-random": Preset("clip-vit-b16-random", "clip-vit-b16", seed=0),
}


def is_preset(spec: str) -> bool:
    """True when ``spec`` names a built-in preset."""
    return spec in PRESETS


def preset_dir(name: str, cache_dir: Path) -> Path:
    """Where the preset is (or will be) saved."""
    return cache_dir / "presets" / f"{name}-v{PRESET_BUILDER_VERSION}"


def ensure_preset(name: str, cache_dir: Path) -> Path:
    """Build the preset into the cache once (atomically) and return its directory."""
    target = preset_dir(name, cache_dir)
    if (target / PRESET_MARKER).is_file():
        return target
    with staging_directory(target) as staging:
        _build(PRESETS[name], staging)
        if not (staging / "config.json").is_file():
            # transformers writes weights only on rank 0 once torch.distributed is up
            raise ModelUnavailableError(
                f"preset {name} could not be written from this process (a torch.distributed "
                "rank other than 0): load it on rank 0 first"
            )
        if (target / PRESET_MARKER).is_file():  # another process finished first; keep its copy
            return target
        replace_directory(staging, target)  # also replaces an unfinished copy
    log.info("built preset %s in %s", name, target)
    return target


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes, strict=True)}


def _tokenizer_vocab() -> dict[str, int]:
    """Byte-level CLIP vocabulary with no merges: 256 symbols, the same with ``</w>``, SOT, EOT."""
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [_SOT, _EOT]
    return {token: index for index, token in enumerate(tokens)}


def _architecture(preset: Preset) -> dict[str, Any]:
    path = configs_dir() / "models" / f"{preset.architecture}.json"
    architecture: dict[str, Any] = json.loads(path.read_text())
    return architecture


def preset_config(name: str) -> Any:
    """The ``CLIPConfig`` of a preset (architecture file + the preset tokenizer's ids)."""
    from transformers import CLIPConfig

    arch = _architecture(PRESETS[name])
    vocab = _tokenizer_vocab()
    text_config = {
        "vocab_size": len(vocab),
        **arch["text_config"],
        "bos_token_id": vocab[_SOT],
        "eos_token_id": vocab[_EOT],
        "pad_token_id": vocab[_EOT],
    }
    return CLIPConfig(
        text_config=text_config,
        vision_config=arch["vision_config"],
        projection_dim=arch["projection_dim"],
        logit_scale_init_value=arch["logit_scale_init_value"],
    )


def _build(preset: Preset, directory: Path) -> None:
    from transformers import CLIPModel, CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=_tokenizer_vocab(), merges=[], model_max_length=77)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(preset.seed)
    model = CLIPModel(preset_config(preset.name)).eval()
    model.save_pretrained(directory)
    arch = _architecture(preset)

    side = int(arch["vision_config"]["image_size"])
    image_config = ImageConfig(
        resize_mode="shortest_edge",
        size=(side, side),
        crop_size=(side, side),
        mean=_OPENAI_MEAN,
        std=_OPENAI_STD,
        resample="bicubic",
    )
    (directory / "preprocessor_config.json").write_text(json.dumps(image_config.to_hf(), indent=2))
    marker = {
        "preset": preset.name,
        "random_weights": True,
        "architecture": preset.architecture,
        "seed": preset.seed,
        "builder_version": PRESET_BUILDER_VERSION,
    }
    (directory / PRESET_MARKER).write_text(json.dumps(marker, indent=2))
