"""The reference profile: what a bundle predicts on known data, kept as a folder of
``profile.json`` (class counts, confidence histogram, embedding summary, provenance) and
``arrays.npz`` (the confidences, a bounded sample of image embeddings, their mean and
covariance). Loading it needs no torch."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from clip_har.errors import ProfileError
from clip_har.io import write_bytes_atomic, write_json_atomic
from clip_har.monitoring import EMBEDDINGS_FILE, PROFILE_FILE, PROFILE_SCHEMA

_ARRAYS = ("confidences", "embeddings", "embedding_mean", "embedding_cov")


@dataclass(frozen=True)
class ReferenceProfile:
    """A bundle's predictions on reference images: ``info`` is profile.json's content (its
    ``id``, ``class_counts``, ``confidence_histogram``, ``embedding`` summary, ``bundle`` and
    ``data`` provenance); the arrays are ``confidences`` [N] and ``embeddings`` [K, D]."""

    info: dict[str, Any]
    confidences: NDArray[np.float32] = field(repr=False)
    embeddings: NDArray[np.float32] = field(repr=False)

    @property
    def id(self) -> str:
        return str(self.info["id"])

    @property
    def class_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.info["class_counts"].items()}

    @property
    def model_key(self) -> str:
        return str(self.info["bundle"]["model_key"])


def profile_id(info: dict[str, Any]) -> str:
    """A short content hash of a profile (without its id): the ``reference_id`` scores carry."""
    text = json.dumps({k: v for k, v in info.items() if k != "id"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_profile(folder: Path, profile: ReferenceProfile) -> None:
    """Write ``profile`` into ``folder`` (each file atomically; callers publish the folder)."""
    embeddings = profile.embeddings.astype(np.float32)
    mean = embeddings.mean(axis=0) if len(embeddings) else np.zeros(embeddings.shape[1])
    cov = np.cov(embeddings, rowvar=False) if len(embeddings) > 1 else np.zeros((mean.size,) * 2)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        confidences=profile.confidences.astype(np.float32),
        embeddings=embeddings,
        embedding_mean=mean.astype(np.float32),
        embedding_cov=np.atleast_2d(cov).astype(np.float32),
    )
    write_bytes_atomic(folder / EMBEDDINGS_FILE, buffer.getvalue())
    write_json_atomic(folder / PROFILE_FILE, profile.info)


def load_profile(folder: Path) -> ReferenceProfile:
    """Read a reference folder written by ``clip-har monitor reference``; every problem is a
    :class:`ProfileError` naming the file."""
    if not folder.is_dir():
        what = "is a file, not" if folder.exists() else "does not exist; expected"
        raise ProfileError(f"reference {folder} {what} a folder from `clip-har monitor reference`")
    path = folder / PROFILE_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(
            f"{path}: missing; is {folder} a folder from `clip-har monitor reference`?"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("schema_version") != PROFILE_SCHEMA:
        found = info.get("schema_version") if isinstance(info, dict) else None
        raise ProfileError(
            f"{path}: not a reference profile of schema {PROFILE_SCHEMA} (found {found!r}); "
            "rebuild it with `clip-har monitor reference`"
        )
    missing = [key for key in ("id", "class_counts", "bundle") if key not in info]
    if missing:
        raise ProfileError(f"{path}: lacks {', '.join(missing)}")
    arrays_path = folder / EMBEDDINGS_FILE
    try:
        with np.load(arrays_path, allow_pickle=False) as arrays:
            loaded = {name: arrays[name] for name in _ARRAYS}
    except FileNotFoundError:
        raise ProfileError(f"{arrays_path}: missing") from None
    except (KeyError, ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ProfileError(f"{arrays_path}: not readable ({exc})") from None
    confidences, embeddings = loaded["confidences"], loaded["embeddings"]
    if confidences.ndim != 1 or embeddings.ndim != 2:
        raise ProfileError(f"{arrays_path}: arrays of the wrong shape")
    return ReferenceProfile(info, confidences.astype(np.float32), embeddings.astype(np.float32))
