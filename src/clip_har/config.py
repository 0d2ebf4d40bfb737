"""Every setting as a pydantic model, loaded from ``params.yaml`` with env and CLI overrides.

Precedence, highest first: explicit overrides (the CLI), environment variables
(``CLIP_HAR_<SECTION>__<FIELD>``, e.g. ``CLIP_HAR_PREDICT__BATCH_SIZE=8``), the
params file (``--params``, ``$CLIP_HAR_PARAMS`` or ``./params.yaml``), defaults.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from clip_har.errors import ConfigError
from clip_har.imaging.loading import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from clip_har.io import read_text_input

DEFAULT_MODEL = "openai/clip-vit-base-patch16"
DEFAULT_PARAMS_FILE = Path("params.yaml")
DEFAULT_NEAR_DISTANCE = 4  # bits between perceptual hashes of near duplicates
DEFAULT_SPLIT_RATIOS = (0.7, 0.15, 0.15)  # train, val, test

# the parsed params file of the load_settings call in progress (read once, by _read_params_file)
_params_document: ContextVar[dict[str, Any] | None] = ContextVar(
    "clip_har_params_document", default=None
)


def split_commas(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the one parser of comma-joined lists.

    Settings hold real lists (YAML lists in params.yaml); a comma-joined string is
    accepted where a list has to fit in one word: a CLI option or an environment variable.
    """
    return [part.strip() for part in text.split(",") if part.strip()]


def _from_commas(value: Any) -> Any:
    """A list setting given as one string: ``a,b`` or a YAML flow list ``[a, b]``."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value  # reported by the list validation
    return split_commas(value)


def _check_ratios(values: list[float]) -> list[float]:
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(
            f"ratios must be three non-negative numbers summing to 1, e.g. [0.7, 0.15, 0.15] "
            f"(got {values})"
        )
    return values


# A list setting: a YAML list, or a comma-joined string from the CLI or the environment
# (NoDecode: the environment value is split here, not parsed as JSON).
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_from_commas)]
Ratios = Annotated[
    list[float], NoDecode, BeforeValidator(_from_commas), AfterValidator(_check_ratios)
]


CalibrationName = Literal["minmax", "entropy", "percentile"]
CALIBRATION_METHODS: tuple[CalibrationName, ...] = get_args(CalibrationName)
"""Static int8 calibration methods (``export.calibration``, ``--calibration-method``)."""


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
    min_image_side: int = Field(
        DEFAULT_MIN_SIDE, ge=1, description="Reject images with a smaller side (px)."
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="Reject larger images (pixels)."
    )
    near_distance: int = Field(
        DEFAULT_NEAR_DISTANCE,
        ge=0,
        le=63,
        description="Near duplicates: phashes at most this many bits apart.",
    )


class SplitSettings(_Section):
    """Train/val/test assignment."""

    ratios: Ratios = Field(list(DEFAULT_SPLIT_RATIOS), description="train, val and test fractions.")
    seed: int = Field(0, ge=0, description="Random seed of the assignment.")


Precision = Literal["fp32", "bf16", "fp16"]
# how training spreads over processes: one process, DDP replicas or FSDP shards (torchrun)
DistributedMode = Literal["none", "ddp", "fsdp"]


class TrainSettings(_Section):
    """Training: the strategy, the optimiser schedule and run tracking."""

    strategy: str = Field(
        "linear-probe",
        description="A registered strategy (training.strategies.STRATEGIES; see "
        "`clip-har train --help`); checked when the run starts.",
    )
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(
        64, ge=1, description="Global batch per forward pass (a step is batch x accumulation)."
    )
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0)
    accumulation: int = Field(1, ge=1)
    precision: Precision = "fp32"
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
    distributed: DistributedMode = Field(
        "none",
        description="ddp or fsdp: run under `torchrun --nproc_per_node N -m clip_har.cli train`.",
    )
    seed: int = Field(0, ge=0)
    tracking: CommaList = Field(["mlflow"], description="Backends: mlflow, wandb, or none.")
    experiment: str = "clip-har"


class PredictSettings(_Section):
    """Batch prediction."""

    batch_size: int = Field(32, ge=1)
    top_k: int = Field(5, ge=1)


class ParityLimit(_Section):
    """The parity gate for one precision: worst probability difference and top-1 agreement
    with torch fp32 that an artifact may show and still be used."""

    max_abs_diff: float = Field(ge=0)
    top1_agreement: float = Field(ge=0, le=1)


class ParitySettings(_Section):
    """Parity gates by precision."""

    fp32: ParityLimit = ParityLimit(max_abs_diff=1e-4, top1_agreement=1.0)
    int8: ParityLimit = ParityLimit(max_abs_diff=0.05, top1_agreement=0.9)
    fp16: ParityLimit = ParityLimit(max_abs_diff=0.01, top1_agreement=0.98)


class ExportSettings(_Section):
    """Export formats and their parity gates."""

    formats: CommaList = Field(
        ["onnx", "onnx-opt", "onnx-int8", "torchscript", "text-onnx"],
        min_length=1,
        description="Registered formats to export (clip_har.inference.formats; listed by "
        "`clip-har export --help`); checked against the registry when the export starts.",
    )
    opset: int = Field(17, ge=17, description="ONNX opset.")
    parity_images: int = Field(32, ge=1, le=4096, description="Images each artifact is checked on.")
    calibration: CalibrationName = "minmax"
    calibration_images: int = Field(64, ge=1, le=4096, description="Images for static int8 ranges.")
    parity: ParitySettings = ParitySettings()


class RegistrySettings(_Section):
    """The MLflow model registry: what the pipeline registers and the promotion gate."""

    enabled: bool = Field(
        False, description="The pipeline's register stage registers only when true."
    )
    name: str = Field("clip-har", min_length=1, description="Registered model name.")
    promote: str = Field(
        "production",
        min_length=1,
        description="Alias the register stage promotes a new version to, through the gate "
        "('none': no promotion).",
    )
    primary_metric: str = Field(
        "accuracy", min_length=1, description="The metric the promotion gate compares."
    )
    greater_is_better: bool = Field(
        True,
        description="The primary metric's direction: false for a loss or ece (lower is better).",
    )
    tolerance: float = Field(
        0.01,
        ge=0,
        description="A candidate may score this much below the alias holder and still pass.",
    )


class MonitorSettings(_Section):
    """Drift monitoring (``clip-har monitor``): the thresholds a window of the service's
    predictions is held to against a reference profile. A score over its threshold is drift."""

    psi_threshold: float = Field(
        0.25,
        gt=0,
        description="Class distribution PSI above this is drift (bands: <0.1 stable, "
        "0.1-0.25 moderate, >0.25 significant).",
    )
    ks_statistic: float = Field(
        0.2, gt=0, le=1, description="Confidence KS statistic above this is drift..."
    )
    ks_pvalue: float = Field(
        0.01, gt=0, le=1, description="...when the KS test's p-value is also below this."
    )
    auc_threshold: float = Field(
        0.75,
        gt=0.5,
        le=1,
        description="Embedding drift: a domain classifier's ROC AUC (reference vs window "
        "images) above this is drift; 0.5 means indistinguishable.",
    )
    min_predictions: int = Field(
        100, ge=1, description="Fewer predictions in the window: no verdict (exit 1)."
    )
    max_embeddings: int = Field(
        2000,
        ge=10,
        description="Embeddings kept in a reference, and window images embedded, at most.",
    )
    histogram_bins: int = Field(20, ge=2, le=1000, description="Confidence histogram bins.")


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
    registry: RegistrySettings = RegistrySettings()
    monitor: MonitorSettings = MonitorSettings()

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
        document = _params_document.get()
        if document is not None:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=document))
        return tuple(sources)


def _find_params_file(explicit: Path | None) -> Path | None:
    if explicit is not None:
        if explicit.is_dir():
            raise ConfigError(f"params file {explicit} is a folder: give the YAML file")
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
    token = _params_document.set(_read_params_file(path) if path is not None else None)
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        problems = _describe(exc)
        lines = "\n".join(f"  {problem}" for problem in problems)
        raise ConfigError(f"invalid settings{where}:\n{lines}", problems=problems) from None
    finally:
        _params_document.reset(token)


def _read_params_file(path: Path) -> dict[str, Any]:
    """The params file as a mapping of sections, read once (a BOM is dropped). Refused,
    naming the file: bytes that are not UTF-8, invalid YAML, a document that is not a
    mapping, and a section that is not one (``predict: 5``)."""
    try:
        document = yaml.safe_load(read_text_input(path, "params file"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"{path}: must be a mapping of sections (model:, data:, train:, ...), "
            f"not a YAML {type(document).__name__}"
        )
    return _checked_sections(document, Settings, path)


def _checked_sections(
    document: dict[str, Any], model: type[BaseModel], path: Path, prefix: str = ""
) -> dict[str, Any]:
    """``document`` with every section (a key whose field is a settings model, at any
    depth) checked to be a mapping; an empty one (``predict:`` and nothing below) means its
    defaults. Unknown keys and values are left to the validation, which names them."""
    checked: dict[str, Any] = {}
    for key, value in document.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        section = field.annotation if field is not None else None
        if isinstance(section, type) and issubclass(section, BaseModel):
            if value is None:
                continue
            dotted = f"{prefix}{key}"
            if not isinstance(value, dict):
                names = [f"{name}:" for name in section.model_fields]
                settings = ", ".join(names[:3] + ["..."] * (len(names) > 3))
                raise ConfigError(
                    f"{path}: '{dotted}' must be a mapping of its settings ({settings}), "
                    f"not a YAML {type(value).__name__} (got {value!r:.60})"
                )
            value = _checked_sections(value, section, path, f"{dotted}.")
        checked[key] = value
    return checked


def _describe(exc: ValidationError) -> list[str]:
    """One line per problem: the dotted field, pydantic's message and the value given."""
    return [
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}{_given(err)}" for err in exc.errors()
    ]


def _given(error: Any) -> str:
    """`` (got VALUE)`` for a scalar value; nothing for a missing field or a whole section."""
    value = error.get("input")
    if error.get("type") == "missing" or isinstance(value, dict | list):
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= 60 else text[:57] + '...'})"
