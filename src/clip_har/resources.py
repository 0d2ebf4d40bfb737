"""Locate the files shipped with clip-har: ``configs/`` (class lists, prompt sets, model
presets) and the project template (``dvc.yaml`` + ``params.yaml``)."""

from __future__ import annotations

from pathlib import Path

from clip_har.errors import ConfigError

_PACKAGE_DIR = Path(__file__).resolve().parent


def configs_dir() -> Path:
    """The ``configs/`` folder: packaged inside a wheel, or the source checkout's."""
    for candidate in (_PACKAGE_DIR / "configs", _PACKAGE_DIR.parents[1] / "configs"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"cannot find the clip-har configs/ folder next to {_PACKAGE_DIR}")


PROJECT_FILES = ("dvc.yaml", "params.yaml")
"""The pipeline and its settings: what ``clip-har project init`` copies into a project."""


def project_template_dir() -> Path:
    """The folder holding :data:`PROJECT_FILES`: packaged inside a wheel
    (``clip_har/project/``), or the source checkout's root."""
    for candidate in (_PACKAGE_DIR / "project", _PACKAGE_DIR.parents[1]):
        if all((candidate / name).is_file() for name in PROJECT_FILES):
            return candidate
    raise ConfigError(
        f"cannot find the clip-har project template ({', '.join(PROJECT_FILES)}) next to "
        f"{_PACKAGE_DIR}"
    )


def builtin_names(kind: str, suffix: str) -> list[str]:
    """Names of the shipped files of one kind, e.g. ``builtin_names("prompts", ".yaml")``."""
    return sorted(p.stem for p in (configs_dir() / kind).glob(f"*{suffix}"))


def resolve_config_file(kind: str, name_or_path: str | Path, suffix: str) -> Path:
    """Return an existing file: a path as given, or a shipped ``configs/KIND/NAME.SUFFIX``."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    builtin = configs_dir() / kind / f"{name_or_path}{suffix}"
    if builtin.is_file():
        return builtin
    choices = ", ".join(builtin_names(kind, suffix)) or "none"
    raise ConfigError(
        f"{kind} '{name_or_path}' is neither a file nor a built-in name (built-ins: {choices})"
    )
