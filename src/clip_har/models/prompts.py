"""Prompt sets: templates such as "a photo of a person {}." and natural phrasing of class names."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clip_har.errors import ConfigError
from clip_har.io import read_text_input
from clip_har.resources import resolve_config_file


class PromptSet(BaseModel):
    """Templates (each with one ``{}``) plus per-class phrase overrides."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    description: str = ""
    templates: tuple[str, ...] = Field(min_length=1)
    class_phrases: dict[str, str] = Field(default_factory=dict)

    @field_validator("templates")
    @classmethod
    def _one_slot_each(cls, templates: tuple[str, ...]) -> tuple[str, ...]:
        for template in templates:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain exactly one '{{}}'")
        return templates

    def phrase(self, class_name: str) -> str:
        """How a class name reads inside a sentence: an override, else underscores -> spaces."""
        return self.class_phrases.get(class_name, default_phrase(class_name))

    def texts(self, class_name: str) -> list[str]:
        """Every template filled with the class phrase."""
        phrase = self.phrase(class_name)
        return [template.format(phrase) for template in self.templates]


def default_phrase(class_name: str) -> str:
    """``listening_to_music`` -> ``listening to music``; ``usingLaptop`` stays as typed."""
    return " ".join(class_name.replace("_", " ").replace("-", " ").split())


def load_prompt_set(name_or_path: str | Path) -> PromptSet:
    """Load a built-in prompt set by name (``actions``, ``minimal``, ``generic``) or a YAML file."""
    path = resolve_config_file("prompts", name_or_path, ".yaml")
    try:
        data = yaml.safe_load(read_text_input(path, "prompt set")) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a prompt set must be a mapping with 'templates'")
        return PromptSet(name=data.pop("name", path.stem), **data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: invalid prompt set: {details}") from None


def load_class_names(name_or_path: str | Path) -> list[str]:
    """Class names from a built-in list (``har15``) or a text file, one name per line."""
    path = resolve_config_file("classes", name_or_path, ".txt")
    text = read_text_input(path, "class list")
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    return validate_class_names([line for line in lines if line], source=str(path))


def parse_class_names(text: str, source: str = "labels") -> list[str]:
    """``"running, eating"`` (an option such as ``--labels``) -> checked class names.

    Split here, not with ``config.split_commas``: that drops blank items, and a blank class
    name (``"a,,b"``, a trailing comma) must be an error, not skipped."""
    return validate_class_names(text.split(","), source=source)


def resolve_class_names(spec: str, source: str = "classes") -> list[str]:
    """Class names from a built-in list name (``har15``), a text file with one name per
    line, or an inline ``a,b,c`` (``data.classes``, ``--classes``)."""
    if "," in spec and not Path(spec).exists():
        return parse_class_names(spec, source)
    return load_class_names(spec)


def validate_class_names(names: list[str], source: str = "labels") -> list[str]:
    """At least one, no blanks, no duplicates; the order is kept."""
    cleaned = [name.strip() for name in names]
    if not cleaned or any(not name for name in cleaned):
        raise ConfigError(f"{source}: class names must be non-empty (got {names!r})")
    duplicates = sorted({name for name in cleaned if cleaned.count(name) > 1})
    if duplicates:
        raise ConfigError(f"{source}: duplicate class names: {', '.join(duplicates)}")
    return cleaned
