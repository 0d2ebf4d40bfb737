"""Settings of the inference service: every one from a ``clip-har serve`` option or an
environment variable (``CLIP_HAR_SERVE_<NAME>``; the database also from ``DATABASE_URL``).

API keys come from the environment or a file only, never from the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from clip_har.config import CommaList
from clip_har.errors import ConfigError
from clip_har.imaging.loading import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from clip_har.io import read_text_input

ENV_PREFIX = "CLIP_HAR_SERVE_"
DEFAULT_DATABASE_URL = "sqlite:///clip-har-serving.db"

# keys from the environment: comma-separated, never parsed as JSON (NoDecode)
KeyList = Annotated[list[SecretStr], NoDecode]


class ServeSettings(BaseSettings):
    """How ``clip-har serve`` loads, batches, guards and records."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    # --- the model -----------------------------------------------------------------
    bundle: str | None = Field(
        None, description="Bundle folder, or models:/NAME@ALIAS | models:/NAME/VERSION."
    )
    format: str | None = Field(
        None,
        description="Engine format; default: the best passing export (onnx-int8, onnx, torch).",
    )
    model_name: str | None = Field(
        None,
        description="Name served on /v2/models/{name}; default: the registered or bundle name.",
    )
    evaluation: Path | None = Field(
        None,
        description="A `clip-har evaluate` output of the bundle, served on /v1/model (a "
        "models:/ version serves the evaluation registered with it unless this is given).",
    )
    threads: int | None = Field(None, ge=1, description="Intra-op threads per instance.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Compute precision of the torch format (bf16/fp16: autocast)."
    )
    alias_poll_s: float = Field(
        30.0, ge=0, description="Seconds between checks of a models:/NAME@ALIAS target; 0 = never."
    )

    # --- the network -----------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    cors_origins: CommaList = Field([], description="Origins allowed by CORS; empty = CORS off.")

    # --- batching --------------------------------------------------------------------
    max_batch_size: int = Field(32, ge=1, le=1024, description="Images per engine call.")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="Wait for a batch to fill.")
    max_queue: int = Field(256, ge=1, le=100_000, description="Queued images before 503.")
    instances: int = Field(1, ge=1, le=64, description="Engine sessions run in parallel.")
    request_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="Deadline of a queued image; past it the answer is 504."
    )
    drain_grace_s: float = Field(
        20.0, ge=0, le=3600, description="On shutdown, time for queued work to finish."
    )

    # --- input limits ------------------------------------------------------------------
    max_upload_bytes: int = Field(20 * 2**20, ge=1, description="Largest request body (413).")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, description="Largest image, width x height (as predict)."
    )
    min_side: int = Field(
        DEFAULT_MIN_SIDE, ge=1, description="Smallest accepted image side in pixels (as predict)."
    )
    max_batch_images: int = Field(32, ge=1, le=1024, description="Images per /v1/predict/batch.")
    max_labels: int = Field(64, ge=1, le=1024, description="Labels per /v1/classify.")
    max_label_length: int = Field(100, ge=1, le=1000, description="Characters per label.")
    max_templates: int = Field(16, ge=1, le=256, description="Prompt templates per /v1/classify.")
    default_top_k: int = Field(5, ge=1, description="top_k when a request names none.")

    # --- the prediction log and feedback store --------------------------------------------
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices(f"{ENV_PREFIX}DATABASE_URL", "DATABASE_URL", "database_url"),
        description="SQLAlchemy URL of the prediction log and feedback store.",
    )
    store_images: Path | None = Field(
        None, description="Keep uploads content-addressed here (opt-in; needed by feedback export)."
    )

    # --- access -------------------------------------------------------------------------
    api_keys: KeyList = Field([], description="Keys of /v1 and /v2 (env only).")
    api_keys_file: Path | None = Field(None, description="File with one API key a line.")
    admin_api_keys: KeyList = Field([], description="Keys of /v1/admin (env only).")
    admin_api_keys_file: Path | None = Field(None, description="File with one admin key a line.")
    protect_health: bool = Field(False, description="Health routes need an API key too.")
    protect_metrics: bool = Field(False, description="/metrics needs an API key too.")

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def keys(self, *, admin: bool) -> list[str]:
        """The accepted keys (environment + file), read now; empty = auth off for that kind."""
        listed = self.admin_api_keys if admin else self.api_keys
        file = self.admin_api_keys_file if admin else self.api_keys_file
        keys = [key.get_secret_value() for key in listed]
        if file is not None:
            try:
                text = read_text_input(file, "API key file")
            except OSError as exc:
                raise ConfigError(f"cannot read the API key file {file}: {exc.strerror}") from exc
            keys += [line.strip() for line in text.splitlines() if line.strip()]
        return keys
