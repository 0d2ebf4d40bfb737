"""The Hugging Face Hub: export a bundle as a Hub-ready folder, push it, pull it back.

A Hub export is a bundle folder (its root opens with ``open_bundle``) plus ``README.md``
(the model card, :mod:`clip_har.registry.hub_card`), ``transformers/`` (the fine-tuned
backbone as ``save_pretrained`` weights, when the encoder was fine-tuned) and
``clip_har_hub.json`` (what was exported and the sha256 of the added weight files).
Pushing uses ``create_repo`` + ``upload_folder``; pulling ``snapshot_download``, and the
result is verified like any bundle before it is published. Both check the token and the
endpoint first, so that offline they fail in seconds. See docs/registry.md.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from clip_har.errors import BundleError, HubError
from clip_har.evaluation.record import EvaluationRecord, check_evaluation_of
from clip_har.io import file_sha256, publish_directory, read_text_input, write_json_atomic
from clip_har.models.bundle import MANIFEST, Bundle, open_bundle, open_verified_bundle
from clip_har.registry.hub_card import CardInputs, build_model_card, card_warnings
from clip_har.version import __version__

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
TRANSFORMERS_DIR = "transformers"
EXPORT_RECORD = "clip_har_hub.json"
DEFAULT_LICENSE = "apache-2.0"
PROBE_TIMEOUT = 5.0  # seconds: an endpoint that does not answer by then is unreachable
LOGIN_HINT = (
    "log in with `huggingface-cli login` (or `hf auth login`), or set HF_TOKEN to a token "
    "with write access (https://huggingface.co/settings/tokens)"
)
# root entries of a bundle folder an export never copies: it writes its own, or they are
# another tool's (a git checkout, huggingface_hub's download metadata)
_NOT_COPIED = {CARD_FILE, TRANSFORMERS_DIR, EXPORT_RECORD, ".git", ".cache", ".gitattributes"}
# backbone files a transformers folder takes besides what save_pretrained writes
_WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class HubExport:
    """What ``hub export`` wrote."""

    directory: Path
    files: int
    transformers: bool
    warnings: list[str]


def export_for_hub(
    bundle_dir: Path,
    output: Path,
    *,
    evaluation: EvaluationRecord | None = None,
    license: str = DEFAULT_LICENSE,
    dataset: str | None = None,
    repo_id: str | None = None,
    cache_dir: Path | None = None,
) -> HubExport:
    """Write the Hub-ready folder of the bundle at ``bundle_dir`` to ``output`` (replaced
    whole, atomically). The bundle is verified first; a damaged one is refused, naming
    the file, and so is an ``evaluation`` of another model."""
    bundle = open_verified_bundle(bundle_dir, "refusing to export it")
    if evaluation is not None:  # the card must not report another model's numbers
        check_evaluation_of(evaluation, bundle.manifest)

    with publish_directory(output) as staging:
        root = bundle.directory.resolve()

        def skipped(folder: str, names: list[str]) -> list[str]:
            if Path(folder).resolve() != root:
                return []
            return [name for name in names if name in _NOT_COPIED or name.startswith(".")]

        shutil.copytree(bundle.directory, staging, ignore=skipped, dirs_exist_ok=True)
        added: dict[str, str] = {}
        if bundle.manifest.encoder is not None:
            added = save_transformers(bundle, staging / TRANSFORMERS_DIR, cache_dir)
        inputs = CardInputs(
            license=license,
            dataset=dataset,
            repo_id=repo_id,
            evaluation=evaluation,
            transformers_dir=TRANSFORMERS_DIR if added else None,
        )
        build_model_card(bundle.manifest, inputs).save(staging / CARD_FILE)
        record = {
            "format": 1,
            "bundle": bundle.manifest.name,
            "exported_at": datetime.now(timezone.utc).isoformat(),
            "clip_har_version": __version__,
            "license": license,
            "dataset": dataset,
            "evaluation": None
            if evaluation is None
            else {
                "metrics": evaluation.metrics,
                "source": evaluation.source.to_json() if evaluation.source else None,
            },
            "files": added,
        }
        write_json_atomic(staging / EXPORT_RECORD, record, sort_keys=True)
        _check_folder(
            staging, "refusing to publish the export"
        )  # the copy is the bundle, byte for byte
        files = sum(1 for path in staging.rglob("*") if path.is_file())
    log.info("wrote Hub export %s (%d files)", output, files)
    return HubExport(output, files, bool(added), card_warnings(bundle.manifest, inputs))


def save_transformers(bundle: Bundle, target: Path, cache_dir: Path | None) -> dict[str, str]:
    """Save the bundle's backbone with its fine-tuned encoder tensors applied, in
    ``save_pretrained`` layout (config, ``model.safetensors``, processor and tokenizer
    files) at ``target``; returns ``{path relative to target's parent: sha256}``."""
    backbone = bundle.load_backbone(cache_dir=cache_dir)
    model = bundle.load_image_encoder(backbone).model
    target.mkdir(parents=True)
    model.save_pretrained(target, safe_serialization=True)
    backbone.tokenizer.save_pretrained(target)
    written = {path.name for path in target.iterdir()}
    for path in sorted(backbone.source_dir.iterdir()):
        # the preprocessor config, the preset marker (random weights stay flagged), and
        # tokenizer files save_pretrained left out; never the original weights
        if (
            path.is_file()
            and path.name not in written
            and path.name not in ("README.md", ".gitattributes")
            and not path.name.endswith(_WEIGHTS_SUFFIXES)
        ):
            shutil.copyfile(path, target / path.name)
    return {
        f"{target.name}/{path.relative_to(target).as_posix()}": file_sha256(path)
        for path in sorted(target.rglob("*"))
        if path.is_file()
    }


def _check_folder(folder: Path, refusal: str) -> None:
    """``folder`` must be a sound bundle and its export record's files unchanged; else an
    error naming the damage, then ``refusal``."""
    open_verified_bundle(folder, refusal)
    record_path = folder / EXPORT_RECORD
    if not record_path.is_file():
        return
    try:
        record = json.loads(read_text_input(record_path, "Hub export record", HubError))
    except json.JSONDecodeError as exc:
        raise HubError(f"{record_path}: not valid JSON: {exc}") from None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict):
        raise HubError(f"{record_path}: no 'files' object: not a `clip-har hub export` record")
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise HubError(f"{path}: missing, but {EXPORT_RECORD} records it")
        if file_sha256(path) != digest:
            raise HubError(f"{path}: changed since `clip-har hub export` (sha256 differs)")


# --------------------------------------------------------------------------- the Hub


def hub_endpoint() -> str:
    """The Hub's base URL: ``$HF_ENDPOINT`` or huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _check_online(command: str) -> None:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    if constants.HF_HUB_OFFLINE or flag in ("1", "ON", "YES", "TRUE"):
        raise HubError(
            f"HF_HUB_OFFLINE is set: offline mode, so `{command}` cannot reach the Hugging Face "
            "Hub; unset HF_HUB_OFFLINE and retry"
        )


def probe(endpoint: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Raise a :class:`HubError` unless ``endpoint`` answers HTTP within ``timeout`` seconds
    (any status will do: only a reachable server matters here)."""
    request = urllib.request.Request(f"{endpoint}/api/whoami-v2", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise HubError(
            f"cannot reach the Hugging Face Hub at {endpoint} ({reason}); check the network "
            "connection, a proxy, or HF_ENDPOINT"
        ) from None


def _token(required: bool) -> str | None:
    from huggingface_hub import get_token

    token: str | None = get_token()
    if token is None and required:
        raise HubError(f"no Hugging Face token found: {LOGIN_HINT}")
    return token


def _describe(exc: Exception, repo_id: str, endpoint: str, revision: str | None) -> HubError:
    """A Hub failure as one message a user can act on."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, RevisionNotFoundError):
        return HubError(f"{repo_id}: no revision '{revision}' on {endpoint}")
    if isinstance(exc, RepositoryNotFoundError | GatedRepoError):
        return HubError(
            f"{repo_id}: no such model repository on {endpoint}, or it is private or gated "
            f"and this token may not read it ({LOGIN_HINT})"
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError("HF_HUB_OFFLINE is set: unset it to reach the Hub")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return HubError(f"{repo_id}: the Hub refused the token (HTTP {status}): {LOGIN_HINT}")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return HubError(f"{repo_id}: the Hub answered an error: {first}")
    if isinstance(exc, LocalEntryNotFoundError):
        return HubError(f"{repo_id}: cannot download from {endpoint}; check the network")
    return HubError(f"{repo_id}: talking to {endpoint} failed: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class PushResult:
    """Where ``hub push`` put the folder."""

    repo_id: str
    repo_url: str
    commit: str
    commit_url: str


def push_to_hub(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
) -> PushResult:
    """Upload a ``hub export`` folder to the model repo ``repo_id`` (created if absent)."""
    if not (folder / MANIFEST).is_file() or not (folder / CARD_FILE).is_file():
        raise HubError(
            f"{folder}: not a `clip-har hub export` output (it needs {MANIFEST} and "
            f"{CARD_FILE}); run `clip-har hub export BUNDLE {folder}` first"
        )
    if not (folder / EXPORT_RECORD).is_file():
        raise HubError(
            f"{folder}: no {EXPORT_RECORD}: not a `clip-har hub export` output; run "
            f"`clip-har hub export BUNDLE OUT` and push OUT"
        )
    _check_folder(folder, "refusing to push it")
    _check_online("clip-har hub push")
    token = _token(required=True)
    endpoint = hub_endpoint()
    probe(endpoint)
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        full_id = url.repo_id or repo_id
        if revision is not None:
            api.create_branch(full_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=full_id,
            folder_path=folder,
            revision=revision,
            commit_message=message or f"clip-har hub push: {open_bundle(folder).manifest.name}",
            ignore_patterns=[".cache/**", ".git/**"],
        )
    except Exception as exc:  # huggingface_hub and its HTTP client raise many types
        raise _describe(exc, repo_id, endpoint, revision) from None
    return PushResult(full_id, str(url), str(info.oid), str(info.commit_url))


def pull_from_hub(repo_id: str, output: Path, *, revision: str | None = None) -> Bundle:
    """Download the model repo ``repo_id`` (at ``revision``) and publish it at ``output``
    once it verifies as a bundle (``output`` is replaced whole; nothing changes on error)."""
    _check_online("clip-har hub pull")
    token = _token(required=False)
    endpoint = hub_endpoint()
    probe(endpoint)
    from huggingface_hub import snapshot_download

    with publish_directory(output) as staging:
        try:
            snapshot_download(
                repo_id,
                revision=revision,
                local_dir=staging,
                endpoint=endpoint,
                token=token,
            )
        except Exception as exc:  # huggingface_hub and its HTTP client raise many types
            raise _describe(exc, repo_id, endpoint, revision) from None
        # git's and huggingface_hub's files, not the bundle's
        shutil.rmtree(staging / ".cache", ignore_errors=True)
        (staging / ".gitattributes").unlink(missing_ok=True)
        if not (staging / MANIFEST).is_file():
            raise HubError(
                f"{repo_id}: not a clip-har bundle (the repository has no {MANIFEST} at its "
                "root); `hub pull` takes repos pushed with `clip-har hub push`"
            )
        try:
            _check_folder(staging, f"refusing the download of {repo_id}")
        except BundleError as exc:
            raise HubError(str(exc).replace(str(staging), repo_id)) from None
    return open_bundle(output)


def default_pull_folder(repo_id: str) -> Path:
    """``./NAME`` for the repo ``NAMESPACE/NAME``."""
    return Path(repo_id.rstrip("/").rsplit("/", 1)[-1])
