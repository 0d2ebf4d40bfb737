"""The words a user reads: every command's --help (walked from the Typer app itself, so a
new command is covered without editing this file) has whole sentences, no stray spaces
before punctuation, and the built-in prompt sets describe themselves truthfully."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from clip_har.cli.main import app
from clip_har.io import plural
from clip_har.models.prompts import load_prompt_set

ROOT = get_command(app)
BUILT_IN_PROMPT_SETS = ("actions", "generic", "minimal")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUMBER_WORDS += ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen")


def _walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(words, command) for the root and every group and command below it."""
    yield path, command
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from _walk(sub, (*path, name))


COMMANDS = dict(_walk(ROOT, ()))


def _help(words: tuple[str, ...], columns: int) -> str:
    runner = CliRunner(env={"COLUMNS": str(columns), "NO_COLOR": "1"})
    result = runner.invoke(app, [*words, "--help"])
    assert result.exit_code == 0, result.output
    return result.stdout


def _texts(command: Any) -> Iterator[tuple[str, str]]:
    """(where, text) for the help of a command, its epilog and each of its parameters."""
    for where, text in (("help", command.help), ("epilog", command.epilog)):
        if text:
            yield where, text
    for param in command.params:
        text = getattr(param, "help", None)
        if text:
            yield f"option {param.name}", text


def _paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n\n") if p.strip() and not p.startswith("\b")]


def test_every_command_is_walked() -> None:
    assert ("bundle", "verify") in COMMANDS and ("predict",) in COMMANDS
    assert len(COMMANDS) > 20


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=lambda w: " ".join(w) or "clip-har")
def test_help_sentences_are_never_broken_mid_way(words: tuple[str, ...]) -> None:
    command = COMMANDS[words]
    for where, text in _texts(command):
        for paragraph in _paragraphs(text):
            assert "\n" not in paragraph, f"{where}: a line break inside {paragraph!r}"
    # on a wide terminal every paragraph of a command (and of each command it lists) is one
    # rendered line, not a sentence cut where the source line happened to end
    lines = [re.sub(r"[│\s]+", " ", line).strip() for line in _help(words, 400).splitlines()]
    listed = (getattr(command, "commands", None) or {}).values()
    expected = [*_paragraphs(command.help or "")]
    expected += [_paragraphs(sub.help or "")[0] for sub in listed if sub.help]
    for paragraph in expected:
        flat = " ".join(paragraph.split())
        assert any(flat in line for line in lines), f"{flat!r} is broken across lines"


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=lambda w: " ".join(w) or "clip-har")
@pytest.mark.parametrize("columns", [80, 120])
def test_help_has_no_stray_space_before_punctuation(words: tuple[str, ...], columns: int) -> None:
    text = _help(words, columns)
    stray = re.findall(r".{0,30}\S[ \t]+[.,;:](?=\s|$).{0,10}", text)
    assert not stray, f"stray space before punctuation: {stray}"
    for where, source in _texts(COMMANDS[words]):
        assert not re.search(r"\s[.,;:](\s|$)", source), f"{where}: {source!r}"


@pytest.mark.parametrize("name", BUILT_IN_PROMPT_SETS)
def test_prompt_set_descriptions_count_their_templates_truly(name: str) -> None:
    prompts = load_prompt_set(name)
    words = re.findall(r"\b(\w+)\s+(?:\w+\s+)?templates?\b", prompts.description.lower())
    for word in words:
        count = NUMBER_WORDS.index(word) if word in NUMBER_WORDS else None
        count = int(word) if word.isdigit() else count
        if count is not None:
            assert count == len(prompts.templates), f"{name}: {prompts.description!r}"


def test_counts_are_pluralised() -> None:
    assert plural(1, "image") == "1 image" and plural(0, "image") == "0 images"
    assert plural(2, "class") == "2 classes" and plural(1, "class") == "1 class"
    assert plural(3, "copy", "copies") == "3 copies"
