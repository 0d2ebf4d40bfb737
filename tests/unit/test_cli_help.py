"""The words a user reads: every command's --help (walked from the Typer app itself, so a
new command is covered without editing this file) has whole sentences, no stray spaces
before punctuation, and the built-in prompt sets describe themselves truthfully."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import subcommands
from rich.console import Console
from typer.main import get_command
from typer.testing import CliRunner

import clip_har
from clip_har.cli import bundle as bundle_cli
from clip_har.cli import export as export_cli
from clip_har.cli.main import app
from clip_har.cli.tables import PathCell
from clip_har.data.manifest import write_manifest
from clip_har.export.run import ExportSummary
from clip_har.inference.formats import format_names, get_format
from clip_har.io import noun_form, plural
from clip_har.models.bundle import ExportRecord, FileVerdict, ParityInfo
from clip_har.models.prompts import load_prompt_set

ROOT = get_command(app)
BUILT_IN_PROMPT_SETS = ("actions", "generic", "minimal")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUMBER_WORDS += ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen")


def _walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(words, command) for the root and every group and command below it."""
    yield path, command
    for name, sub in sorted(subcommands(command).items()):
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


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=lambda w: " ".join(w) or "clip-har")
def test_usage_lines_name_arguments_by_their_metavar(words: tuple[str, ...]) -> None:
    text = _help(words, 120)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "<list" not in usage, usage
    assert "<list" not in text, "a list argument is typed <list[...]> in its help"
    for param in COMMANDS[words].params:
        if param.param_type_name == "argument":  # BUNDLE, IMAGES..., [PATH]
            assert param.metavar and param.metavar.rstrip(".").isupper(), param.name
            assert param.metavar.rstrip(".") in usage


def test_no_message_counts_with_a_bracketed_plural() -> None:
    """Counts meet nouns through clip_har.io.plural: "1 image", "2 classes", never "(s)"."""
    source = Path(clip_har.__file__).parent
    found = [
        f"{path.relative_to(source)}:{node.lineno}: {node.value!r}"
        for path in sorted(source.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.search(r"[a-z]\((?:s|es)\)", node.value)
    ]
    assert not found, "\n".join(found)
    assert noun_form(1, "class") == "class" and noun_form(2, "class") == "classes"
    assert noun_form(0, "file") == "files" and plural(1, "batch") == "1 batch"


def _rendered(renderable: Any, width: int = 80) -> list[str]:
    """``renderable`` as the lines a pipe gets (80 columns, no colour)."""
    console = Console(width=width, color_system=None, force_terminal=False)
    with console.capture() as captured:
        console.print(renderable)
    return captured.get().splitlines()


def _export_records() -> dict[str, ExportRecord]:
    parity = ParityInfo(
        images=1,
        real_photos=False,
        max_abs_diff=1.5e-4,
        top1_agreement=1.0,
        max_abs_diff_limit=1e-3,
        agreement_floor=0.99,
        decided_images=1,
        excluded_images=0,
        passed=True,
    )
    return {
        name: ExportRecord(
            format=name,
            file=f"exports/{get_format(name).file}",
            sha256="0" * 64,
            bytes=351_234_567,
            precision=get_format(name).precisions[0],
            parity=parity,
            created_at=datetime.now(timezone.utc),
        )
        for name in format_names()
    }


def _cells(lines: list[str]) -> set[str]:
    return {cell.strip() for line in lines for cell in re.split(r"[│┃]", line)}


def test_export_and_verify_tables_keep_names_whole_at_80_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = _export_records()
    console = Console(width=80, color_system=None, force_terminal=False)
    monkeypatch.setattr(export_cli, "console", console)
    with console.capture() as captured:
        export_cli._report(ExportSummary(bundle=None, records=records), Path("runs/bundle"))  # type: ignore[arg-type]
    lines = captured.get().splitlines()
    assert max(map(len, lines[:-4])) <= 80
    cells = _cells(lines)
    for record in records.values():  # every format, file name and precision on one line
        assert {record.format, Path(record.file).name, record.precision} <= cells, record
    assert "parity: 1 synthetic image (use --parity-data) against torch fp32" in " ".join(lines)

    verdicts = [FileVerdict("manifest.json", "manifest", note="valid (schema, fields)")]
    verdicts += [
        FileVerdict(r.file, f"export {r.format}", note="sha256 matches; passed its parity gate")
        for r in records.values()
    ]
    verdicts.append(FileVerdict("exports/model.plan", "export tensorrt", "the file is missing"))
    lines = _rendered(bundle_cli._verdict_table(Path("runs/bundle"), verdicts))
    assert max(map(len, lines)) <= 80
    cells = _cells(lines)
    assert {v.file for v in verdicts} | {"ok", "FAILED"} <= cells
    assert {f"export {record.format}" for record in records.values()} <= cells
    assert {"valid (schema, fields)", "the file is missing"} <= cells


def test_path_cells_break_after_a_slash() -> None:
    lines = _rendered(PathCell("exports/model.torchscript.pt"), width=24)
    assert [line.rstrip() for line in lines] == ["exports/", "model.torchscript.pt"]
    assert _rendered(PathCell("exports/model.torchscript.pt"))[0].rstrip().endswith(".pt")


def test_empty_formats_is_a_usage_error_that_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--formats", " , "])
    assert result.exit_code == 2
    assert "--formats is empty: name at least one format (see clip-har formats)" in result.stderr
    assert "List should have" not in result.output


def test_a_wrong_output_suffix_names_the_files_to_give(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.touch()
    out = tmp_path / "out.txt"
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["predict", str(image), "--bundle", str(tmp_path / "b"), "-o", str(out)]
    )
    assert result.exit_code == 2
    expected = f"writes .csv or .json files; name the file {out.with_suffix('.csv')} or"
    assert expected in " ".join(result.stderr.split())


def test_balance_without_splits_says_so_once(tmp_path: Path) -> None:
    rows = [{"path": str(tmp_path / f"{i}.jpg"), "label": "ab"[i % 2]} for i in range(4)]
    (tmp_path / "m").mkdir()
    write_manifest(pd.DataFrame(rows), tmp_path / "m")
    result = CliRunner().invoke(
        app, ["data", "balance", str(tmp_path / "m"), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("no splits") == 1, result.output
