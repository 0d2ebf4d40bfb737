"""Every setting as a pydantic model, loaded from ``params.yaml`` with env and CLI overrides.

Precedence, highest first: explicit overrides (the CLI), environment variables
(``CLIP_HAR_<SECTION>__<FIELD>``, e.g. ``CLIP_HAR_PREDICT__BATCH_SIZE=8``), the
params file (``--params``, ``$CLIP_HAR_PARAMS`` or ``./params.yaml``), defaults.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from clip_har.errors import ConfigError

DEFAULT_MODEL = "openai/clip-vit-base-patch16"
DEFAULT_PARAMS_FILE = Path("params.yaml")

_params_file: ContextVar[Path | None] = ContextVar("clip_har_params_file", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Section):
    """Which backbone to load."""

    spec: str = Field(DEFAULT_MODEL, description="Hub id, local directory, or preset name.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")


class PromptSettings(_Section):
    """Text prompts for zero-shot heads."""

    set: str = Field("actions", description="Built-in prompt set name or a YAML file path.")


class DataSettings(_Section):
    """Input data and the guards applied to every image."""

    source: str = Field(
        "../shared/data/har/sample",
        description="What the pipeline's import stage reads: a folder, a .csv, or hf:NAME[:split].",
    )
    classes: str = Field("har15", description="Built-in class list name or a text file path.")
    min_image_side: int = Field(32, ge=1, description="Reject images with a smaller side (px).")
    max_image_pixels: int = Field(64_000_000, ge=1, description="Reject larger images (pixels).")
    near_distance: int = Field(
        4, ge=0, le=63, description="Near duplicates: phashes at most this many bits apart."
    )


class SplitSettings(_Section):
    """Train/val/test assignment."""

    ratios: str = Field("0.7,0.15,0.15", description="train,val,test fractions.")
    seed: int = Field(0, description="Random seed of the assignment.")


class TrainSettings(_Section):
    """Training: the strategy, the optimiser schedule and run tracking."""

    strategy: str = Field("linear-probe", description="See `clip-har train --help`.")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(
        64, ge=1, description="Global batch per forward pass (a step is batch x accumulation)."
    )
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    accumulation: int = Field(1, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    patience: int | None = Field(None, ge=1, description="Early stopping; None trains all epochs.")
    balance: Literal["none", "weights"] = Field(
        "none", description="'weights': class-weighted loss (inverse frequency)."
    )
    select_prompts: bool = Field(False, description="zero-shot: choose templates on val.")
    blocks: int = Field(2, ge=1, description="partial: trailing vision blocks to train.")
    lora_rank: int = Field(8, ge=1, description="lora: adapter rank.")
    augment: Literal["none", "light", "strong"] = Field(
        "light", description="End-to-end strategies: train-time augmentation policy."
    )
    workers: int = Field(0, ge=0, description="End-to-end: image-loading worker processes.")
    seed: int = 0
    tracking: str = Field("mlflow", description="Comma-separated: mlflow, wandb, or none.")
    experiment: str = "clip-har"


class PredictSettings(_Section):
    """Batch prediction."""

    batch_size: int = Field(32, ge=1)
    top_k: int = Field(5, ge=1)


class ParityLimit(_Section):
    """The parity gate for one precision: worst probability difference and top-1 agreement
    with torch fp32 that an artifact may show and still be served."""

    max_abs_diff: float = Field(ge=0)
    top1_agreement: float = Field(ge=0, le=1)


class ParitySettings(_Section):
    """Parity gates by precision."""

    fp32: ParityLimit = ParityLimit(max_abs_diff=1e-4, top1_agreement=1.0)
    int8: ParityLimit = ParityLimit(max_abs_diff=0.05, top1_agreement=0.9)
    fp16: ParityLimit = ParityLimit(max_abs_diff=0.01, top1_agreement=0.98)


class ExportSettings(_Section):
    """Export formats and their parity gates."""

    formats: str = Field(
        "onnx,onnx-opt,onnx-int8,torchscript,text-onnx", description="Comma-separated formats."
    )
    opset: int = Field(17, ge=17, description="ONNX opset.")
    parity_images: int = Field(32, ge=1, description="Images each artifact is checked on.")
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_images: int = Field(64, ge=1, description="Images for static int8 ranges.")
    parity: ParitySettings = ParitySettings()


class Settings(BaseSettings):
    """All settings of clip-har."""

    model_config = SettingsConfigDict(
        env_prefix="CLIP_HAR_", env_nested_delimiter="__", extra="forbid"
    )

    cache_dir: Path = Field(
        default_factory=lambda: Path(
            os.environ.get("CLIP_HAR_CACHE", Path.home() / ".cache" / "clip-har")
        ),
        description="Where presets and other derived artefacts are stored ($CLIP_HAR_CACHE).",
    )
    model: ModelSettings = ModelSettings()
    prompts: PromptSettings = PromptSettings()
    data: DataSettings = DataSettings()
    split: SplitSettings = SplitSettings()
    train: TrainSettings = TrainSettings()
    predict: PredictSettings = PredictSettings()
    export: ExportSettings = ExportSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        params = _params_file.get()
        if params is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=params))
        return tuple(sources)


def _find_params_file(explicit: Path | None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"params file not found: {explicit}")
        return explicit
    from_env = os.environ.get("CLIP_HAR_PARAMS")
    if from_env:
        return _find_params_file(Path(from_env))
    return DEFAULT_PARAMS_FILE if DEFAULT_PARAMS_FILE.is_file() else None


def load_settings(
    params_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Load settings; ``overrides`` is a nested dict such as ``{"predict": {"top_k": 3}}``."""
    path = _find_params_file(params_file)
    token = _params_file.set(path)
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid settings{where}:\n{_describe(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from None
    finally:
        _params_file.reset(token)


def _describe(exc: ValidationError) -> str:
    return "\n".join(
        f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
