"""The embedding cache: each image goes through the image encoder once per backbone and
preprocessing, however many manifests, splits and training runs use it.

Layout, keys and crash safety: docs/training.md#the-feature-store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as serialize

from clip_har.data.datasets import ManifestDataset, make_loader
from clip_har.errors import FeatureStoreError
from clip_har.imaging import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, ImageConfig, Preprocessor
from clip_har.io import atomic_write, noun_form, plural, write_json_atomic
from clip_har.models.backbone import Backbone

logger = logging.getLogger(__name__)

__all__ = [
    "SHARD_SIZE",
    "EmbedStats",
    "FeatureStore",
    "Features",
    "default_store_root",
    "preprocessing_hash",
]

FORMAT_VERSION = 1
SHARD_SIZE = 1024
STORE_FILE = "store.json"
_TENSOR = "embeddings"
_SHARD_NAME = re.compile(r"^shard-(\d{6,})\.safetensors$")
_HASH_CHARS = 16
# ManifestDataset serves labelled rows only, and embedding needs no label: the rows to
# encode all get this one placeholder class, and the labels in the batches are ignored.
_PLACEHOLDER_CLASS = "<embedding>"


@dataclass(frozen=True)
class EmbedStats:
    """What one :meth:`FeatureStore.embed` call did; ``encoded + reused + skipped`` is the
    number of manifest rows."""

    encoded: int  # images sent through the image encoder in this call
    reused: int  # rows served from the cache (including repeats of an image encoded now)
    skipped: int  # rows with no sha256, or whose file vanished or was unreadable


@dataclass(frozen=True)
class Features:
    """Embeddings aligned with the manifest rows they were computed for."""

    embeddings: torch.Tensor  # float32 [N, D], L2-normalised; zeros where not present
    present: torch.Tensor  # bool [N]: False where the row was skipped
    sha256: list[str | None]


def preprocessing_hash(config: ImageConfig) -> str:
    """A stable short hash of the preprocessing config (its canonical JSON)."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return _short_hash(canonical)


def default_store_root(cache_dir: Path) -> Path:
    """Where embedding stores live by default: ``<cache_dir>/features``."""
    return cache_dir / "features"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]


@dataclass(frozen=True)
class _Entry:
    shard: Path
    row: int


class FeatureStore:
    """Image embeddings of one backbone + preprocessing, cached on disk by image sha256."""

    def __init__(
        self,
        root: Path,
        backbone: Backbone,
        *,
        shard_size: int = SHARD_SIZE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.backbone = backbone
        self.shard_size = shard_size
        self.max_pixels = max_pixels
        self.min_side = min_side
        # the fingerprint is hashed: it may hold '/' and ':' (hub ids, "sha256:...")
        self.directory = Path(root) / self.key
        self._index: dict[str, _Entry] = {}
        self._seen: set[str] = set()  # shard file names already read (or rejected)
        self._next_number = 0

    @property
    def key(self) -> str:
        """``<backbone fingerprint hash>-<preprocessing hash>``: the store's directory name."""
        return (
            f"{_short_hash(self.backbone.fingerprint)}-"
            f"{preprocessing_hash(self.backbone.image_config)}"
        )

    def __len__(self) -> int:
        """How many images the store holds embeddings for (shards on disk now)."""
        self._refresh()
        return len(self._index)

    def embed(
        self,
        manifest: pd.DataFrame,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[Features, EmbedStats]:
        """Embeddings for every row of ``manifest``, encoding only images not cached yet.

        ``progress(done, total)`` counts distinct images: cached ones are done at the start.
        """
        keys = _row_keys(manifest)
        self._refresh()
        distinct = list(dict.fromkeys(k for k in keys if k is not None))
        todo = [k for k in distinct if k not in self._index]
        if progress is not None:
            progress(len(distinct) - len(todo), len(distinct))
        encoded = 0
        if todo:
            encoded = self._encode(
                manifest, keys, todo, batch_size, num_workers, progress, len(distinct)
            )
        features = self._gather(keys)
        present = int(features.present.sum())
        stats = EmbedStats(encoded=encoded, reused=present - encoded, skipped=len(keys) - present)
        logger.info(
            "embeddings for %s: %d encoded, %d reused, %d skipped (store %s)",
            plural(len(keys), "row"),
            stats.encoded,
            stats.reused,
            stats.skipped,
            self.directory,
        )
        return features, stats

    # ------------------------------------------------------------------ encoding

    @torch.inference_mode()
    def _encode(
        self,
        manifest: pd.DataFrame,
        keys: list[str | None],
        todo: list[str],
        batch_size: int,
        num_workers: int,
        progress: Callable[[int, int], None] | None,
        total: int,
    ) -> int:
        """Encode the images of ``todo`` (one row each), writing shards as they fill."""
        first_row: dict[str, int] = {}
        for position, key in enumerate(keys):
            if key is not None and key not in first_row:
                first_row[key] = position
        paths = manifest["path"].iloc[[first_row[k] for k in todo]].astype(str).tolist()
        subset = pd.DataFrame({"path": paths, "label": _PLACEHOLDER_CLASS})
        dataset = ManifestDataset(
            subset,
            Preprocessor(self.backbone.image_config),
            [_PLACEHOLDER_CLASS],
            max_pixels=self.max_pixels,
            min_side=self.min_side,
        )
        loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers)
        encoder = self.backbone.image_encoder
        device = next(encoder.parameters()).device
        was_training = encoder.training
        encoder.eval()
        pending_keys: list[str] = []
        pending: list[torch.Tensor] = []
        encoded = 0
        done = total - len(todo)
        try:
            for batch in loader:
                if batch.pixels.shape[0]:
                    output = encoder(batch.pixels.to(device))
                    pending.append(output.to(device="cpu", dtype=torch.float32))
                    pending_keys.extend(todo[row] for row in batch.rows.tolist())
                    encoded += batch.pixels.shape[0]
                while len(pending_keys) >= self.shard_size:
                    block = torch.cat(pending)
                    self._write_shard(pending_keys[: self.shard_size], block[: self.shard_size])
                    pending_keys = pending_keys[self.shard_size :]
                    pending = [block[self.shard_size :]]
                done += batch.pixels.shape[0] + batch.skipped
                if progress is not None:
                    progress(done, total)
        finally:
            encoder.train(was_training)
            if pending_keys:  # also when interrupted: keep what was finished
                # (an interrupt may land between the two appends: trust the keys)
                self._write_shard(pending_keys, torch.cat(pending)[: len(pending_keys)])
        return encoded

    def _write_shard(self, keys: list[str], embeddings: torch.Tensor) -> None:
        """Publish one shard atomically under the next free number and index it."""
        self._ensure_directory()
        data = serialize(
            {_TENSOR: embeddings.contiguous()},
            metadata={"sha256": json.dumps(keys), "format": str(FORMAT_VERSION)},
        )
        target = self._publish(data)
        self._seen.add(target.name)
        for row, key in enumerate(keys):
            self._index.setdefault(key, _Entry(target, row))
        logger.debug("wrote %s (%d embeddings)", target, len(keys))

    def _publish(self, data: bytes) -> Path:
        """Write ``data`` durably under the next free shard number. The exclusive write
        (a link, atomic like a rename) never replaces a shard that a concurrent process
        published under the same number: that number is skipped instead."""
        while True:
            target = self.directory / f"shard-{self._next_number:06d}.safetensors"
            self._next_number += 1
            try:
                with atomic_write(target, durable=True, exclusive=True) as staging:
                    staging.write_bytes(data)
            except FileExistsError:
                continue
            return target

    def _ensure_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        info = self.directory / STORE_FILE
        if info.is_file():
            return
        description = {
            "format": FORMAT_VERSION,
            "key": self.key,
            "backbone": {
                "spec": self.backbone.spec,
                "fingerprint": self.backbone.fingerprint,
                "random_weights": self.backbone.random_weights,
            },
            "image_config": self.backbone.image_config.model_dump(mode="json"),
        }
        write_json_atomic(info, description)

    # ------------------------------------------------------------------ reading

    def _refresh(self) -> None:
        """Index the shards that appeared since the last look (lazily, headers only)."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.iterdir()):
            match = _SHARD_NAME.match(path.name)
            if match is None or path.name in self._seen:
                continue
            self._seen.add(path.name)
            self._next_number = max(self._next_number, int(match.group(1)) + 1)
            try:
                keys = self._read_header(path)
            except (SafetensorError, OSError, ValueError, KeyError) as exc:
                logger.warning("ignoring unreadable embedding shard %s: %s", path, exc)
                continue
            for row, key in enumerate(keys):
                self._index.setdefault(key, _Entry(path, row))

    def _read_header(self, path: Path) -> list[str]:
        with safe_open(str(path), framework="pt") as shard:
            keys = json.loads((shard.metadata() or {})["sha256"])
            tensor = shard.get_slice(_TENSOR)
            shape, dtype = tuple(tensor.get_shape()), tensor.get_dtype()
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("sha256 metadata is not a list of strings")
        if dtype != "F32" or shape != (len(keys), self.backbone.embed_dim):
            raise ValueError(
                f"{_TENSOR} is {dtype} {list(shape)}, expected F32 "
                f"[{len(keys)}, {self.backbone.embed_dim}]"
            )
        return keys

    def _gather(self, keys: list[str | None]) -> Features:
        """Rows of ``keys`` from the shards (one read per shard); zeros where absent."""
        embeddings = torch.zeros((len(keys), self.backbone.embed_dim), dtype=torch.float32)
        present = torch.zeros(len(keys), dtype=torch.bool)
        by_shard: dict[Path, tuple[list[int], list[int]]] = {}
        for position, key in enumerate(keys):
            entry = self._index.get(key) if key is not None else None
            if entry is not None:
                positions, rows = by_shard.setdefault(entry.shard, ([], []))
                positions.append(position)
                rows.append(entry.row)
        for shard, (positions, rows) in by_shard.items():
            with safe_open(str(shard), framework="pt") as handle:
                stored: torch.Tensor = handle.get_tensor(_TENSOR)
            embeddings[positions] = stored[rows]
            present[positions] = True
        return Features(embeddings=embeddings, present=present, sha256=list(keys))


def _row_keys(manifest: pd.DataFrame) -> list[str | None]:
    """The sha256 of every row; ``None`` where it is missing."""
    missing = [c for c in ("path", "sha256") if c not in manifest.columns]
    if missing:
        raise FeatureStoreError(
            f"manifest lacks the {noun_form(len(missing), 'column')} {', '.join(missing)}: "
            "embedding needs the image paths and their sha256 (run `clip-har data import` to "
            "compute them)"
        )
    return [None if pd.isna(v) or not str(v) else str(v) for v in manifest["sha256"]]
