"""Contract 4 — the bundle: a directory that carries a model through its whole life.

Layout and what opening one checks: docs/models.md#the-bundle.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clip_har.errors import BundleError
from clip_har.imaging import ImageConfig
from clip_har.io import (
    file_lock,
    file_sha256,
    git_commit,
    read_text_input,
    replace_directory,
    staging_directory,
    write_text_atomic,
)
from clip_har.models.prompts import PromptSet
from clip_har.version import __version__

if TYPE_CHECKING:  # torch-backed: imported where used, so reading a bundle loads no torch
    import torch

    from clip_har.models.backbone import Backbone, ImageEncoder
    from clip_har.models.classifier import HARClassifier
    from clip_har.models.heads import Head

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
HEAD_FILE = "head.safetensors"
ENCODER_FILE = "encoder.safetensors"
BACKBONE_DIR = "backbone"
EXPORTS_DIR = "exports"

# how a fine-tune changed the image encoder: trailing blocks trained, or LoRA merged in
EncoderMethod = Literal["partial", "lora"]
_SHA256 = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneInfo(_Strict):
    spec: str
    revision: str | None = None
    fingerprint: str
    model_type: str
    embed_dim: int = Field(gt=0)
    random_weights: bool
    embedded: bool = False


class HeadInfo(_Strict):
    type: str = Field(description="A registered head type (models.heads.HEADS).")
    file: str = HEAD_FILE
    params: dict[str, float] = Field(default_factory=dict)
    sha256: str | None = Field(None, pattern=_SHA256)  # None in bundles saved before it was

    @field_validator("type")
    @classmethod
    def _registered(cls, value: str) -> str:
        # Checked against the registry once it is loaded (any torch user loads it). A
        # torch-free process that serves an export never needs the head class: the head
        # is inside the exported graph, and load_head checks the type when it runs.
        heads = sys.modules.get("clip_har.models.heads")
        if heads is not None:
            heads.head_class(value)  # raises, naming the registered types
        return value


class EncoderInfo(_Strict):
    method: EncoderMethod
    file: str = ENCODER_FILE
    tensors: int = Field(gt=0)
    sha256: str | None = Field(None, pattern=_SHA256)  # None in bundles saved before it was


@dataclass(frozen=True)
class EncoderDelta:
    """Image-encoder tensors a fine-tune changed, named as in the backbone model's state
    dict (LoRA is merged into the weights first, so loading needs no peft)."""

    method: EncoderMethod
    tensors: dict[str, torch.Tensor]


class ParityInfo(_Strict):
    """How an exported artifact compares with torch fp32 on the same images."""

    images: int = Field(gt=0)
    real_photos: bool
    max_abs_diff: float = Field(ge=0)
    # over the decided images (1.0 when none is decided); over every image in records
    # written before the decided/excluded split, which then has no counts below
    top1_agreement: float = Field(ge=0, le=1)
    max_abs_diff_limit: float = Field(ge=0)
    agreement_floor: float = Field(ge=0, le=1)
    # median of the reference's top-1 minus top-2 probability; near 0 means near-ties,
    # where a tiny difference flips the top-1 (random-weight models)
    median_margin: float | None = None
    # an image is decided when its reference top-1 margin exceeds margin_bound (twice the
    # measured max |Δp|); the others are near-ties the artifact's own error may reorder
    margin_bound: float | None = Field(None, ge=0)
    decided_images: int | None = Field(None, ge=0)
    excluded_images: int | None = Field(None, ge=0)
    top1_agreement_all: float | None = Field(None, ge=0, le=1)  # every image, for reference
    passed: bool


class ExportRecord(_Strict):
    """One exported artifact: where it is, its hash, and whether it passed the parity gate."""

    format: str
    file: str  # relative to the bundle directory
    sha256: str = Field(pattern=_SHA256)
    bytes: int = Field(ge=0)
    precision: Literal["fp32", "fp16", "int8"]
    opset: int | None = None
    parity: ParityInfo | None = None
    created_at: datetime
    details: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.parity is not None and self.parity.passed


class Lineage(_Strict):
    created_at: datetime
    clip_har_version: str
    git_commit: str | None = None
    data_version: str | None = None
    run_id: str | None = None
    strategy: str | None = None  # the training strategy; None for older bundles


class Manifest(_Strict):
    """Everything needed to rebuild, serve and trace a model."""

    schema_version: Literal[1]
    name: str = Field(min_length=1)
    class_names: list[str] = Field(min_length=1)
    prompts: PromptSet
    preprocessing: ImageConfig
    backbone: BackboneInfo
    head: HeadInfo
    encoder: EncoderInfo | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: Lineage
    exports: dict[str, ExportRecord] = Field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    """An opened, validated bundle directory. The backbone loads only on demand."""

    directory: Path
    manifest: Manifest

    @property
    def class_names(self) -> list[str]:
        return self.manifest.class_names

    def export_file(self, format: str, *, force: bool = False) -> tuple[Path, ExportRecord]:
        """The verified file of an exported ``format``: recorded, present, unchanged (sha256)
        and past its parity gate (``force`` accepts a failed or unchecked gate)."""
        record = self.manifest.exports.get(format)
        if record is None:
            known = ", ".join(self.manifest.exports) or "none"
            raise BundleError(
                f"{self.directory}: no '{format}' export (exported: {known}); run "
                f"`clip-har export {self.directory} --formats {format}`"
            )
        path = self.directory / record.file
        changed = _changed(path, record.sha256, record.bytes)
        if changed == _MISSING:
            raise BundleError(f"{path}: missing, but the manifest records a '{format}' export")
        if changed is not None:
            raise BundleError(
                f"{path}: {changed}. Re-run `clip-har export {self.directory} --formats {format}`."
            )
        if not record.passed and not force:
            reason = "has no parity result" if record.parity is None else "failed its parity gate"
            raise BundleError(
                f"{path}: the '{format}' export {reason}"
                + (
                    f" (max |Δp| {record.parity.max_abs_diff:.2e}, top-1 agreement "
                    f"{record.parity.top1_agreement:.1%})"
                    if record.parity is not None
                    else ""
                )
                + "; refusing to use it (--ignore-parity uses it anyway)"
            )
        return path, record

    def export_companion(self, record: ExportRecord, key: str) -> Path:
        """The further file an export's ``details`` name under ``key``, unchanged since the
        export (its sha256 is ``details[key + "_sha256"]``), such as text-onnx's tokenizer."""
        path = self.directory / str(record.details[key])
        changed = _changed(path, str(record.details[f"{key}{_HASH_SUFFIX}"]))
        if changed is not None:
            raise BundleError(
                f"{path}: missing or changed since export ({changed}); re-run "
                f"`clip-har export {self.directory} --formats {record.format}`"
            )
        return path

    def load_backbone(self, cache_dir: Path | None = None) -> Backbone:
        """The bundle's own backbone copy if it has one, else the recorded spec + revision."""
        from clip_har.models.backbone import load_backbone

        info = self.manifest.backbone
        if info.embedded:
            return load_backbone(str(self.directory / BACKBONE_DIR), cache_dir=cache_dir)
        backbone = load_backbone(info.spec, revision=info.revision, cache_dir=cache_dir)
        if backbone.fingerprint != info.fingerprint:
            raise BundleError(
                f"{self.directory / MANIFEST}: backbone '{info.spec}' has changed since the bundle "
                f"was made (fingerprint {backbone.fingerprint} != recorded {info.fingerprint}). "
                "Rebuild the bundle, or create it with --include-backbone to keep a copy."
            )
        return backbone

    def load_head(self) -> Head:
        """The saved head, rebuilt and checked against the class names and embedding size."""
        import torch

        from clip_har.models.heads import head_class

        info = self.manifest.head
        path = self.directory / info.file
        tensors = _read_tensors(path, info.sha256, "head")
        try:
            head = head_class(info.type).from_tensors(tensors, info.params)
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:  # HeadShapeError too
            raise BundleError(f"{path}: {exc}") from None
        probe = torch.zeros(1, self.manifest.backbone.embed_dim)
        try:
            with torch.no_grad():
                classes = head(probe).shape[-1]
        except RuntimeError as exc:
            raise BundleError(
                f"{path}: head does not take {self.manifest.backbone.embed_dim}-d embeddings: {exc}"
            ) from None
        if classes != len(self.class_names):
            raise BundleError(
                f"{path}: head has {classes} classes but the manifest names {len(self.class_names)}"
            )
        return head

    def load_image_encoder(self, backbone: Backbone) -> ImageEncoder:
        """The backbone's image encoder, with the bundle's fine-tuned tensors applied to a
        copy (``backbone`` itself is never changed)."""
        from clip_har.models.backbone import ImageEncoder

        info = self.manifest.encoder
        if info is None:
            return backbone.image_encoder
        path = self.directory / info.file
        tensors = _read_tensors(path, info.sha256, "encoder")
        model = copy.deepcopy(backbone.model)
        expected = model.state_dict()
        wrong = [
            name
            for name, tensor in tensors.items()
            if name not in expected or expected[name].shape != tensor.shape
        ]
        if wrong or len(tensors) != info.tensors:
            raise BundleError(
                f"{path}: {len(tensors)} tensors (manifest says {info.tensors}); not in this "
                f"backbone or misshapen: {', '.join(wrong[:5]) or 'none'}"
            )
        model.load_state_dict(tensors, strict=False)
        return ImageEncoder(model.eval())

    def load_classifier(self, backbone: Backbone | None = None) -> HARClassifier:
        """Rebuild the exact classifier that was saved."""
        from clip_har.models.classifier import HARClassifier

        backbone = backbone if backbone is not None else self.load_backbone()
        encoder = self.load_image_encoder(backbone)
        return HARClassifier(encoder, self.load_head(), self.class_names).eval()


def _read_tensors(path: Path, sha256: str | None, what: str) -> dict[str, torch.Tensor]:
    """The tensors of the ``what`` (head, encoder) weights file ``path``, checked against
    its recorded ``sha256`` (bundles saved before hashes were recorded have none)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors: dict[str, torch.Tensor] = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path}: cannot read {what} weights: {exc}") from None
    changed = None if sha256 is None else _changed(path, sha256)
    if changed is not None:
        raise BundleError(f"{path}: {what} weights {changed}")
    return tensors


def _not_a_directory(directory: Path) -> BundleError:
    """The error for a bundle path that is not a folder: a file, or nothing."""
    if directory.exists():
        return BundleError(f"{directory}: is a file, not a bundle directory")
    return BundleError(f"bundle directory not found: {directory}")


def open_bundle(directory: str | Path) -> Bundle:
    """Open and validate a bundle; errors name the file and the field that is wrong.

    It checks the manifest and that the files it names exist, not their content: see
    :func:`verify_bundle`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise _not_a_directory(directory)
    manifest = read_manifest(directory)
    head_path = directory / manifest.head.file
    if not head_path.is_file():
        raise BundleError(f"{head_path}: missing (named by field 'head.file')")
    if manifest.encoder is not None and not (directory / manifest.encoder.file).is_file():
        raise BundleError(
            f"{directory / manifest.encoder.file}: missing (named by field 'encoder.file')"
        )
    if manifest.backbone.embedded and not (directory / BACKBONE_DIR).is_dir():
        raise BundleError(f"{directory / BACKBONE_DIR}: missing but 'backbone.embedded' is true")
    return Bundle(directory, manifest)


def read_manifest(directory: Path) -> Manifest:
    """The validated ``manifest.json`` of the bundle folder ``directory``."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing (not a clip-har bundle?)")
    try:
        raw = json.loads(read_text_input(manifest_path, "bundle manifest", BundleError))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{manifest_path}: must hold a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path}: field 'schema_version' is {version!r}; this clip-har "
            f"({__version__}) reads schema version {SCHEMA_VERSION}"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors()
        )
        raise BundleError(f"{manifest_path}: {problems}") from None
    return manifest


def record_exports(bundle: Bundle, records: list[ExportRecord], *, replace: bool = False) -> Bundle:
    """Add (or replace) export records in the manifest, rewriting it atomically;
    ``replace`` drops every earlier record first.

    The manifest is re-read under a lock on the bundle folder itself (no lock file is left
    in it), so concurrent exports of one bundle each add their records instead of
    overwriting the others'."""
    with file_lock(bundle.directory):
        current = open_bundle(bundle.directory).manifest
        exports = {} if replace else dict(current.exports)
        exports.update({record.format: record for record in records})
        manifest = current.model_copy(update={"exports": exports})
        write_text_atomic(bundle.directory / MANIFEST, manifest.model_dump_json(indent=2) + "\n")
    return open_bundle(bundle.directory)


def save_bundle(
    directory: str | Path,
    *,
    classifier: HARClassifier,
    backbone: Backbone,
    prompts: PromptSet,
    name: str | None = None,
    include_backbone: bool = False,
    metrics: dict[str, float] | None = None,
    lineage: dict[str, Any] | None = None,
    encoder: EncoderDelta | None = None,
    overwrite: bool = False,
) -> Bundle:
    """Write a bundle atomically: a failed save never damages an existing bundle."""
    from safetensors.torch import save_file

    target = Path(directory)
    if target.exists() and not overwrite:
        raise BundleError(f"{target} already exists (use --force to replace it)")
    head = classifier.head
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        name=name or target.name,
        class_names=classifier.class_names,
        prompts=prompts,
        preprocessing=backbone.image_config,
        backbone=BackboneInfo(
            spec=backbone.spec,
            revision=_hub_revision(backbone.fingerprint),
            fingerprint=backbone.fingerprint,
            model_type=backbone.model_type,
            embed_dim=backbone.embed_dim,
            random_weights=backbone.random_weights,
            embedded=include_backbone,
        ),
        head=HeadInfo(type=head.head_type, params=head.hparams()),
        encoder=None
        if encoder is None
        else EncoderInfo(method=encoder.method, tensors=len(encoder.tensors)),
        metrics=metrics or {},
        lineage=Lineage(
            created_at=datetime.now(timezone.utc),
            clip_har_version=__version__,
            git_commit=git_commit(),
            **(lineage or {}),
        ),
    )
    with staging_directory(target) as staging:
        tensors = {name: tensor.contiguous() for name, tensor in head.state_dict().items()}
        save_file(tensors, staging / HEAD_FILE, metadata={"head_type": head.head_type})
        head_info = manifest.head.model_copy(update={"sha256": file_sha256(staging / HEAD_FILE)})
        encoder_info = manifest.encoder
        if encoder is not None and encoder_info is not None:
            encoder_tensors = {k: v.detach().contiguous() for k, v in encoder.tensors.items()}
            save_file(encoder_tensors, staging / ENCODER_FILE, metadata={"method": encoder.method})
            digest = file_sha256(staging / ENCODER_FILE)
            encoder_info = encoder_info.model_copy(update={"sha256": digest})
        manifest = manifest.model_copy(update={"head": head_info, "encoder": encoder_info})
        if include_backbone:
            shutil.copytree(backbone.source_dir, staging / BACKBONE_DIR)
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        replace_directory(staging, target)
    log.info("saved bundle %s (%d classes)", target, len(manifest.class_names))
    return open_bundle(target)


def _hub_revision(fingerprint: str) -> str | None:
    """Hub fingerprints are ``repo@commit``; content hashes have no revision."""
    if fingerprint.startswith("sha256:") or "@" not in fingerprint:
        return None
    return fingerprint.rsplit("@", 1)[1]


# --------------------------------------------------------------------------- verification

_MISSING = "missing"
_HASH_SUFFIX = "_sha256"  # an export detail ``x_sha256`` is the hash of the file ``details[x]``
_NO_HASH = "no recorded hash: loaded and shape-checked only"  # bundles saved before hashes


def _changed(path: Path, sha256: str, size: int | None = None) -> str | None:
    """What differs between ``path`` and its recorded sha256 (and size): ``None`` when
    nothing does, :data:`_MISSING` when there is no file."""
    if not path.is_file():
        return _MISSING
    digest = file_sha256(path)
    if digest == sha256:
        return None
    recorded = "" if size is None else f"{size} bytes, "
    return (
        f"corrupt or truncated ({path.stat().st_size} bytes, sha256 {digest[:12]}…; the "
        f"manifest records {recorded}sha256 {sha256[:12]}…)"
    )


@dataclass(frozen=True)
class FileVerdict:
    """One file of a bundle as :func:`verify_bundle` found it: ``problem`` is ``None`` when
    the file is sound, ``note`` says what was checked (or a warning that is no damage)."""

    file: str  # relative to the bundle folder
    role: str  # what the file is: manifest, head, encoder, backbone, export FORMAT, ...
    problem: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_bundle(directory: str | Path) -> list[FileVerdict]:
    """Check every file of a bundle: the manifest, the head (against its recorded sha256,
    then loaded and checked against the classes and embedding size), the encoder tensors
    (sha256 and count), an embedded backbone (against its content fingerprint when it has
    one) and every export and its companion files against the sha256 the manifest records.
    A head or encoder saved before hashes were recorded is loaded and checked only. Nothing
    is loaded from outside the folder.

    Returns one verdict per file; raises :class:`BundleError` only when ``directory`` is
    not a folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise _not_a_directory(directory)
    try:
        manifest = read_manifest(directory)
    except BundleError as exc:
        return [FileVerdict(MANIFEST, "manifest", _reason(exc, directory / MANIFEST))]
    bundle = Bundle(directory, manifest)
    verdicts = [FileVerdict(MANIFEST, "manifest", note="valid (schema, fields)")]
    verdicts.append(_verify_head(bundle))
    if manifest.encoder is not None:
        verdicts.append(_verify_encoder(bundle, manifest.encoder))
    if manifest.backbone.embedded:
        verdicts.append(_verify_backbone(bundle))
    for name, record in manifest.exports.items():
        verdicts.append(_verify_export(bundle, name, record))
        for key in record.details:
            if key.endswith(_HASH_SUFFIX) and key.removesuffix(_HASH_SUFFIX) in record.details:
                verdicts.append(_verify_companion(bundle, record, key.removesuffix(_HASH_SUFFIX)))
    return verdicts


def open_verified_bundle(directory: str | Path, refusal: str) -> Bundle:
    """:func:`open_bundle` after :func:`verify_bundle` finds every file sound; otherwise a
    :class:`BundleError` naming each damaged file, then ``refusal`` (what is not done:
    "refusing to register it")."""
    directory = Path(directory)
    failed = [f"{directory / v.file}: {v.problem}" for v in verify_bundle(directory) if not v.ok]
    if failed:
        raise BundleError(
            "; ".join(failed) + f"; {refusal} (`clip-har bundle verify {directory}` lists "
            "every file)"
        )
    return open_bundle(directory)


def _reason(exc: BundleError, path: Path) -> str:
    """``exc``'s message without the leading ``path:`` (the table names the file)."""
    return str(exc).removeprefix(f"{path}: ")


def _verify_head(bundle: Bundle) -> FileVerdict:
    info = bundle.manifest.head
    path = bundle.directory / info.file
    if not path.is_file():
        return FileVerdict(info.file, "head", _MISSING)
    if _torch_missing():
        return _hash_only(info.file, "head", path, info.sha256)
    try:
        bundle.load_head()
    except BundleError as exc:
        return FileVerdict(info.file, "head", _reason(exc, path))
    note = f"{info.type} head loads: {len(bundle.class_names)} classes"
    return FileVerdict(info.file, "head", note=f"{_hash_note(info.sha256)}; {note}")


def _torch_missing() -> bool:
    """Whether torch is not installed (a ``[serve]`` install): weights are hash-checked only."""
    return importlib.util.find_spec("torch") is None


def _hash_only(file: str, role: str, path: Path, sha256: str | None) -> FileVerdict:
    """The verdict on a weights file checked against its recorded hash without loading it."""
    changed = None if sha256 is None else _changed(path, sha256)
    note = f"{_hash_note(sha256)}; not loaded (torch is not installed)"
    return FileVerdict(file, role, changed, "" if changed else note)


def _hash_note(sha256: str | None) -> str:
    """What a verdict checked of a weights file whose recorded hash is ``sha256``."""
    return "sha256 matches" if sha256 is not None else _NO_HASH


def _verify_encoder(bundle: Bundle, info: EncoderInfo) -> FileVerdict:
    path = bundle.directory / info.file
    if not path.is_file():
        return FileVerdict(info.file, "encoder", _MISSING)
    if _torch_missing():
        return _hash_only(info.file, "encoder", path, info.sha256)
    try:
        count = len(_read_tensors(path, info.sha256, "encoder"))
    except BundleError as exc:
        return FileVerdict(info.file, "encoder", _reason(exc, path))
    if count != info.tensors:
        return FileVerdict(
            info.file, "encoder", f"{count} tensors; the manifest records {info.tensors}"
        )
    note = f"{_hash_note(info.sha256)}; {info.method}: {count} tensors load"
    return FileVerdict(info.file, "encoder", note=note)


def _verify_backbone(bundle: Bundle) -> FileVerdict:
    folder = bundle.directory / BACKBONE_DIR
    fingerprint = bundle.manifest.backbone.fingerprint
    if not folder.is_dir():
        return FileVerdict(f"{BACKBONE_DIR}/", "backbone", _MISSING)
    if not fingerprint.startswith("sha256:"):  # a hub copy: the fingerprint is repo@commit
        return FileVerdict(f"{BACKBONE_DIR}/", "backbone", note=f"present ({fingerprint})")
    from clip_har.models.backbone import content_hash

    actual = f"sha256:{content_hash(folder)}"
    if actual != fingerprint:
        return FileVerdict(
            f"{BACKBONE_DIR}/",
            "backbone",
            f"changed (fingerprint {actual[:19]}…; the manifest records {fingerprint[:19]}…)",
        )
    return FileVerdict(f"{BACKBONE_DIR}/", "backbone", note="fingerprint matches")


def _verify_export(bundle: Bundle, name: str, record: ExportRecord) -> FileVerdict:
    role = f"export {name}"
    changed = _changed(bundle.directory / record.file, record.sha256, record.bytes)
    if changed is not None:
        return FileVerdict(record.file, role, changed)
    if record.parity is None:
        gate = "no parity result: engines refuse it without --ignore-parity"
    elif not record.parity.passed:
        gate = "failed its parity gate: engines refuse it without --ignore-parity"
    else:
        gate = "parity gate passed"
    return FileVerdict(record.file, role, note=f"sha256 matches; {gate}")


def _verify_companion(bundle: Bundle, record: ExportRecord, key: str) -> FileVerdict:
    file = str(record.details[key])
    changed = _changed(bundle.directory / file, str(record.details[key + _HASH_SUFFIX]))
    note = "" if changed else "sha256 matches"
    return FileVerdict(file, f"export {record.format} ({key})", changed, note)
