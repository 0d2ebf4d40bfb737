"""Contract 1 — the backbone: any CLIP-like ``transformers`` model behind one small interface.

See docs/models.md#the-backbone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clip_har.errors import ModelUnavailableError, PreprocessingConfigError
from clip_har.imaging import ImageConfig
from clip_har.io import read_text_input
from clip_har.models.presets import PRESET_MARKER, PRESETS, ensure_preset, is_preset

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_FILES = ["*.json", "*.txt", "*.safetensors", "*.model", "*.tiktoken"]
_FINGERPRINT_FILES = ("*.json", "*.txt", "*.safetensors", "*.model")
_TEXT_BATCH = 256


class ImageEncoder(nn.Module):
    """pixels ``[N, 3, H, W]`` -> L2-normalised image embeddings ``[N, D]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # a transformers PreTrainedModel (untyped)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = pooled_output(self.model.get_image_features(pixel_values=pixels))
        return nn.functional.normalize(features, dim=-1)


def pooled_output(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output object (5)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled: torch.Tensor = output.pooler_output
    return pooled


def backbone_label(spec: str, random_weights: bool) -> str:
    """A backbone's human name: a random-weight preset is always flagged as such."""
    return f"{spec} (RANDOM WEIGHTS)" if random_weights else spec


@dataclass
class Backbone:
    """A loaded vision-language model with the pieces every other part needs."""

    spec: str
    model: Any  # a transformers PreTrainedModel with get_image_features/get_text_features
    tokenizer: Any
    image_config: ImageConfig
    fingerprint: str
    random_weights: bool
    source_dir: Path

    def __post_init__(self) -> None:
        self.image_encoder = ImageEncoder(self.model).eval()

    @property
    def model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", "unknown"))

    @property
    def logit_scale(self) -> float:
        """CLIP's learned temperature, ``exp(logit_scale)``; 100 when the model has none."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.exp().item()) if scale is not None else 100.0

    @cached_property
    def embed_dim(self) -> int:
        """Size of the joint embedding space (measured once, works for any architecture)."""
        return int(self.encode_text(["a"]).shape[-1])

    @property
    def label(self) -> str:
        """Human name; random presets are always marked as such."""
        return backbone_label(self.spec, self.random_weights)

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[N, D]`` for preprocessed pixels ``[N, 3, H, W]``."""
        result: torch.Tensor = self.image_encoder(pixels)
        return result

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[M, D]``."""
        chunks = [
            self._encode_text_batch(list(texts[i : i + _TEXT_BATCH]))
            for i in range(0, len(texts), _TEXT_BATCH)
        ]
        return torch.cat(chunks) if chunks else torch.empty(0)

    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        # SigLIP was trained on fixed-length padding; CLIP pools at the EOS token.
        padding = "max_length" if self.model_type.startswith("siglip") else True
        tokens = self.tokenizer(texts, padding=padding, truncation=True, return_tensors="pt")
        features = pooled_output(self.model.get_text_features(**tokens))
        return nn.functional.normalize(features, dim=-1)


def load_backbone(
    spec: str, *, revision: str | None = None, cache_dir: Path | None = None
) -> Backbone:
    """Load a backbone from a preset name, a local directory, or a hub id."""
    from clip_har.config import load_settings

    cache = cache_dir if cache_dir is not None else load_settings().cache_dir
    directory, identity = _resolve(spec, revision, cache)
    return _load_directory(spec, directory, identity)


def _resolve(spec: str, revision: str | None, cache_dir: Path) -> tuple[Path, str | None]:
    """Return (directory, hub identity or None for content-hashed sources)."""
    if is_preset(spec):
        return ensure_preset(spec, cache_dir), None
    local = Path(spec).expanduser()
    if local.is_dir():
        return local, None
    if not _HUB_ID.match(spec) or spec.startswith((".", "/", "~")):
        raise ModelUnavailableError(
            f"Model '{spec}' is not a directory, a preset ({', '.join(PRESETS)}) "
            "or a Hugging Face hub id."
        )
    return _download(spec, revision)


def _download(repo_id: str, revision: str | None) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=_HUB_FILES, local_files_only=True
            )
        )
    except LocalEntryNotFoundError:
        try:
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_FILES))
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise ModelUnavailableError(
                f"Model '{repo_id}' (revision {revision or 'main'}) was not found on the "
                f"Hugging Face Hub: {type(exc).__name__}. Check the id, or log in with "
                "`hf auth login` if it is private."
            ) from None
        except Exception as exc:  # network errors come in many types (httpx, OSError, hub)
            raise ModelUnavailableError(_offline_message(repo_id, exc)) from None
    return path, f"{repo_id}@{path.name}"


def _offline_message(repo_id: str, exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[0].removeprefix("Got: ") if lines else type(exc).__name__
    return (
        f"Model '{repo_id}' is not in the local Hugging Face cache and could not be downloaded "
        f"({reason}). Fixes: use the built-in offline preset with `--model tiny` (random "
        "weights, for trying the pipeline), point `--model` at a local directory saved with "
        "`save_pretrained`, or run once on a machine connected to the Hugging Face Hub (or set "
        "HF_HOME to a cache that already holds it)."
    )


def _load_directory(spec: str, directory: Path, identity: str | None) -> Backbone:
    from transformers import AutoModel, AutoTokenizer

    preprocessor = directory / "preprocessor_config.json"
    if not (directory / "config.json").is_file():
        raise ModelUnavailableError(f"{directory} has no config.json: not a save_pretrained model")
    if not preprocessor.is_file():
        raise ModelUnavailableError(f"{directory} has no preprocessor_config.json")
    if not any(directory.glob("*.safetensors")):
        raise ModelUnavailableError(
            f"{directory} has no *.safetensors weights (pickle .bin weights are not loaded)"
        )
    image_config = _read_image_config(preprocessor)  # before the weights: fail fast
    random_weights = _has_random_weights(directory / PRESET_MARKER)
    try:
        model = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()
    except (OSError, ValueError, KeyError, TypeError) as exc:  # transformers' many ways to fail
        raise ModelUnavailableError(f"{directory}: cannot load the model: {exc}") from None
    for method in ("get_image_features", "get_text_features"):
        if not hasattr(model, method):
            raise ModelUnavailableError(
                f"{type(model).__name__} from {directory} has no {method}(): "
                "not a CLIP-like image-text model"
            )
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as exc:  # tokenizers raises bare Exceptions too
        raise ModelUnavailableError(f"{directory}: cannot load the tokenizer: {exc}") from None
    backbone = Backbone(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        image_config=image_config,
        fingerprint=identity or f"sha256:{content_hash(directory)}",
        random_weights=random_weights,
        source_dir=directory,
    )
    log.info("loaded backbone %s (%s)", backbone.label, backbone.fingerprint)
    return backbone


def _has_random_weights(marker: Path) -> bool:
    """Whether a preset marker (``clip_har_preset.json``) says the weights are random;
    ``False`` without a marker."""
    if not marker.is_file():
        return False
    try:
        content = json.loads(read_text_input(marker, "preset marker", ModelUnavailableError))
    except json.JSONDecodeError as exc:
        raise ModelUnavailableError(f"{marker}: not valid JSON ({exc})") from None
    flag = content.get("random_weights", False) if isinstance(content, dict) else None
    if not isinstance(flag, bool):
        raise ModelUnavailableError(
            f"{marker}: not a preset marker (a JSON object whose 'random_weights' is true or false)"
        )
    return flag


def _read_image_config(path: Path) -> ImageConfig:
    """Parse a ``preprocessor_config.json``; a :class:`PreprocessingConfigError` names the
    file and the field."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PreprocessingConfigError(None, f"not readable JSON: {exc}", str(path)) from None
    try:
        return ImageConfig.from_hf(raw)
    except PreprocessingConfigError as exc:
        raise exc.at(path) from None


def content_hash(directory: Path) -> str:
    """sha256 over the names and bytes of a model directory's config, tokenizer and weights."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in _FINGERPRINT_FILES for p in directory.glob(pattern)})
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
