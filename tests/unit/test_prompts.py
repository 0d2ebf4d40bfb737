"""Prompt sets and class phrasing."""

from pathlib import Path

import pytest

from clip_har.errors import ConfigError
from clip_har.models.prompts import (
    PromptSet,
    default_phrase,
    load_class_names,
    load_prompt_set,
    validate_class_names,
)

HAR15 = [
    "calling", "clapping", "cycling", "dancing", "drinking", "eating", "fighting", "hugging",
    "laughing", "listening_to_music", "running", "sitting", "sleeping", "texting", "using_laptop",
]  # fmt: skip


def test_builtin_class_list_is_the_15_har_classes() -> None:
    assert load_class_names("har15") == HAR15


def test_action_prompt_set_phrases_classes_naturally() -> None:
    prompts = load_prompt_set("actions")
    assert len(prompts.templates) >= 8
    assert prompts.phrase("using_laptop") == "using a laptop"
    assert prompts.phrase("listening_to_music") == "listening to music"
    assert prompts.texts("running")[0] == "a photo of a person running."
    assert all("using a laptop" in text for text in prompts.texts("using_laptop"))


def test_default_phrase_and_overrides() -> None:
    assert default_phrase("listening_to_music") == "listening to music"
    assert default_phrase("  rock-climbing ") == "rock climbing"
    custom = PromptSet(templates=("a photo of {}.",), class_phrases={"dog": "a happy dog"})
    assert custom.texts("dog") == ["a photo of a happy dog."]


def test_template_needs_exactly_one_slot() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        PromptSet(templates=("no slot here",))


def test_prompt_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates: []\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*templates"):
        load_prompt_set(bad)
    with pytest.raises(ConfigError, match="built-ins: actions"):
        load_prompt_set("no-such-set")


def test_class_name_validation() -> None:
    assert validate_class_names([" a", "b "]) == ["a", "b"]
    with pytest.raises(ConfigError, match="duplicate"):
        validate_class_names(["a", "b", "a"])
    with pytest.raises(ConfigError, match="non-empty"):
        validate_class_names(["a", ""])


def test_class_file_ignores_comments_and_blanks(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("# my labels\nwaving\n\nsurfing  # beach\n")
    assert load_class_names(path) == ["waving", "surfing"]
