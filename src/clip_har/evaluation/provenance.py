"""Where an evaluation's numbers came from: the model (backbone, random weights, strategy) and
the data (manifest, its hash, the split). The console table, both reports, ``metrics.json``
and ``evaluate compare`` all render this one record. See docs/evaluation.md#provenance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from clip_har.data.manifest import manifest_path
from clip_har.io import file_sha256
from clip_har.models.bundle import Manifest

__all__ = [
    "ALL_ROWS",
    "NOT_RECORDED",
    "RANDOM_WEIGHTS_WARNING",
    "EvaluationSource",
    "training_strategy",
]

ALL_ROWS = "all rows"
NOT_RECORDED = "not recorded"  # what an evaluation made before provenance was recorded shows
RANDOM_WEIGHTS_WARNING = (
    "The backbone {backbone} has RANDOM WEIGHTS (a built-in preset): these predictions are "
    "meaningless; use it to try the pipeline, not to judge a model."
)
# head type -> the strategy that makes it, when only one does (models/heads.py, training/)
_HEAD_STRATEGIES = {
    "zero_shot": "zero-shot",
    "clip_adapter": "clip-adapter",
    "tip_adapter": "tip-adapter or tip-adapter-f",  # the same head; -f also trains its keys
}
# a hyper-parameter chosen on val (bundle metric chosen_NAME) -> the linear-head strategy
_LINEAR_STRATEGIES = {"C": "linear-probe", "wise_alpha": "zs-init-linear"}


def training_strategy(manifest: Manifest) -> str:
    """The training strategy that made a bundle, read from its manifest: recorded in the
    lineage where it is, else told by the fine-tuned encoder, the head type and what was
    chosen on val (a bundle from ``bundle create`` is ``zero-shot``)."""
    if manifest.lineage.strategy:
        return manifest.lineage.strategy
    if manifest.encoder is not None:
        return manifest.encoder.method  # the end-to-end strategies are named after it
    head = manifest.head.type
    if head == "linear":
        chosen = [name for name in _LINEAR_STRATEGIES if f"chosen_{name}" in manifest.metrics]
        return _LINEAR_STRATEGIES[chosen[0]] if chosen else "a trained linear head"
    return _HEAD_STRATEGIES.get(head, f"a trained {head} head")


@dataclass(frozen=True)
class EvaluationSource:
    """The model and the data one evaluation measured.

    ``split`` is None when every row was evaluated (the manifest has no splits, or
    ``--split all``); ``data_sha256`` is the sha256 of the manifest file.
    ``backbone_fingerprint``, ``head_sha256`` and ``encoder_sha256`` identify the model's
    weights (from its manifest); evaluations made before they were recorded have None.
    """

    bundle: str
    backbone: str
    random_weights: bool
    strategy: str
    data: str
    data_sha256: str | None
    split: str | None
    format: str
    backbone_fingerprint: str | None = None
    head_sha256: str | None = None
    encoder_sha256: str | None = None

    @classmethod
    def describe(
        cls, bundle: str, manifest: Manifest, data: Path, split: str | None, format: str
    ) -> EvaluationSource:
        """The source of evaluating the bundle at ``bundle`` (whose manifest is ``manifest``)
        on the data manifest at ``data``."""
        table = manifest_path(data)
        return cls(
            bundle=bundle,
            backbone=manifest.backbone.spec,
            random_weights=manifest.backbone.random_weights,
            strategy=training_strategy(manifest),
            data=str(data),
            data_sha256=file_sha256(table) if table.is_file() else None,
            split=split,
            format=format,
            backbone_fingerprint=manifest.backbone.fingerprint,
            head_sha256=manifest.head.sha256,
            encoder_sha256=manifest.encoder.sha256 if manifest.encoder is not None else None,
        )

    # ------------------------------------------------------------------ labels

    @property
    def split_label(self) -> str:
        """``all rows`` or ``split NAME``."""
        return ALL_ROWS if self.split is None else f"split {self.split}"

    @property
    def backbone_label(self) -> str:
        """The backbone spec, flagged when its weights are random."""
        from clip_har.models.backbone import backbone_label  # torch: not for the service

        return backbone_label(self.backbone, self.random_weights)

    @property
    def title(self) -> str:
        """One line: what was evaluated on what."""
        return f"{self.bundle} on {self.data} ({self.split_label})"

    @property
    def warning(self) -> str | None:
        """The caveat every output must show for a random-weight backbone, else None."""
        return (
            RANDOM_WEIGHTS_WARNING.format(backbone=self.backbone) if self.random_weights else None
        )

    def data_differences(self, other: EvaluationSource) -> list[str]:
        """How the data ``other`` measured differs from this one's: the manifest's content
        (its sha256, when both recorded it) and the rows evaluated; empty when the same."""
        differences = []
        hashes = (self.data_sha256, other.data_sha256)
        if None not in hashes and hashes[0] != hashes[1]:
            differences.append(f"manifest sha256 {hashes[0]:.12} vs {hashes[1]:.12}")
        if self.split != other.split:
            differences.append(f"{self.split_label} vs {other.split_label}")
        return differences

    def rows(self) -> list[tuple[str, str]]:
        """``(field, value)`` rows for a table: model first, then the data."""
        return [
            ("bundle", self.bundle),
            ("backbone", self.backbone_label),
            ("strategy", self.strategy),
            ("format", self.format),
            ("data", self.data),
            ("rows", self.split_label),
            ("data sha256", self.data_sha256 or NOT_RECORDED),
        ]

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        """A JSON object of every field, plus ``rows`` (``all rows`` or ``split NAME``) so
        that a reader need not know that ``split`` null means every row."""
        return asdict(self) | {"rows": self.split_label}

    @classmethod
    def from_json(cls, payload: Any) -> EvaluationSource | None:
        """The source recorded in an evaluation's JSON; None when there is none (an
        evaluation made before clip-har recorded it) or it is not a valid record."""
        if not isinstance(payload, dict):
            return None
        names = {f.name for f in fields(cls)}
        if not names - set(_OPTIONAL) <= set(payload):
            return None
        values: dict[str, Any] = {name: payload.get(name) for name in names}
        text = ("bundle", "backbone", "strategy", "data", "format")
        if not all(isinstance(values[name], str) for name in text):
            return None
        if not isinstance(values["random_weights"], bool):
            return None
        if not all(
            values[n] is None or isinstance(values[n], str)
            for n in ("split", "data_sha256", *_OPTIONAL)
        ):
            return None
        return cls(**values)


# what an older evaluation's source may lack (they are then None)
_OPTIONAL = ("backbone_fingerprint", "head_sha256", "encoder_sha256")
