"""What every run records about where it came from: code, data, model, software, machine."""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Mapping
from typing import Any

from clip_har.io import git_commit, git_output
from clip_har.tracking.base import ParamValue, flatten
from clip_har.version import __version__


def run_tags(*, backbone_fingerprint: str | None, data_version: str | None) -> dict[str, str]:
    """Lineage tags: git commit + dirty flag, data version, backbone fingerprint, torch, host.

    ``data_version`` is what :func:`clip_har.data.version` gave for the training data.
    A tag that cannot be known is left out: no git or not a repository (commit and dirty
    flag), no data version, no fingerprint.
    """
    import torch

    tags = {"torch_version": str(torch.__version__), "host": socket.gethostname()}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        status = git_output("status", "--porcelain", "--untracked-files=no")
        if status is not None:
            tags["git_dirty"] = str(bool(status.strip())).lower()
    if data_version:
        tags["data_version"] = data_version
    if backbone_fingerprint:
        tags["backbone_fingerprint"] = backbone_fingerprint
    return tags


def system_info() -> dict[str, str]:
    """Python, clip-har, torch, platform, CPU count and CUDA device names (when present)."""
    import torch

    info = {
        "python": platform.python_version(),
        "clip_har": __version__,
        "torch": str(torch.__version__),
        "platform": platform.platform(),
        "cpu_count": str(os.cpu_count() or 0),
    }
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_devices"] = ", ".join(names)
        info["cuda"] = str(torch.version.cuda)
    return info


def run_params(params: Mapping[str, Any]) -> dict[str, ParamValue]:
    """``params`` flattened, plus :func:`system_info` under ``system.``."""
    return {**flatten(params), **flatten({"system": system_info()})}
