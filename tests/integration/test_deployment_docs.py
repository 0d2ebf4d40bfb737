"""docs/deployment.md's commands run as written (issue 17, acceptance 6: every command in it
that can run here is run by a test).

Every shell block of the page starts with one marker line (the convention is at the top of
the page): ``# runs-here`` blocks run here, each in a fresh scratch folder laid out like the
repository, with ``outputs/demo/bundle`` a tiny ONNX bundle; ``# not-here: REASON`` blocks
are not run, and a block with neither marker fails the marker test. A ``serves URL`` block
is started, must answer 200 on URL, runs the ``while-serving`` blocks after it, and is
stopped with SIGTERM. Its ports are moved to free ones, in the URL and the blocks alike."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from deploy_tools import ROOT, require_tool, tool_path

DOC = ROOT / "docs" / "deployment.md"
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```([\w-]*)\s*$")
MARKER = re.compile(r"^#\s*(runs-here|not-here)\b\s*(?::\s*(.*))?$")
CLAUSES = {"needs", "serves", "timeout", "while-serving"}
DEFAULT_TIMEOUT = 180.0
# what each scratch folder copies from the repository (the paths the page's commands use)
SCRATCH_COPIES = ("deploy", ".github", "configs", "params.yaml", "dvc.yaml", ".yamllint")
# the variables of this machine that would change what a documented command does
UNSET = ("MLFLOW_TRACKING_URI", "DATABASE_URL", "CLIP_HAR_URL", "CLIP_HAR_API_KEY")


@dataclass
class Block:
    """One fenced shell block of the page: where it starts, its marker and its commands."""

    line: int
    text: str
    kind: str = ""  # runs-here, not-here, or "" (no marker)
    clauses: dict[str, str] = field(default_factory=dict)
    problem: str = ""

    @property
    def timeout(self) -> float:
        return float(self.clauses.get("timeout", DEFAULT_TIMEOUT))

    @property
    def needs(self) -> list[str]:
        return [tool.strip() for tool in self.clauses.get("needs", "").split(",") if tool.strip()]


@dataclass
class Unit:
    """What one test runs: a block, or a `serves` block with its `while-serving` blocks."""

    block: Block
    while_serving: list[Block] = field(default_factory=list)

    @property
    def blocks(self) -> list[Block]:
        return [self.block, *self.while_serving]


def parse_blocks(markdown: str) -> list[Block]:
    """The shell blocks of ``markdown`` outside HTML comments, with their markers."""
    blocks: list[Block] = []
    in_comment = False
    current: tuple[int, list[str]] | None = None
    for number, line in enumerate(markdown.splitlines(), start=1):
        if current is None:
            if in_comment or line.lstrip().startswith("<!--"):
                in_comment = "-->" not in line
                continue
            fence = FENCE.match(line)
            if fence and fence.group(1) in SHELL_LANGUAGES:
                current = (number, [])
            elif fence:
                current = (-number, [])  # another language: skipped to its end
        elif line.startswith("```"):
            start, lines = current
            if start > 0:
                blocks.append(_with_marker(Block(start, "\n".join(lines))))
            current = None
        else:
            current[1].append(line)
    return blocks


def _with_marker(block: Block) -> Block:
    first = block.text.split("\n", 1)[0].strip()
    marker = MARKER.match(first)
    if marker is None:
        block.problem = "its first line is not `# runs-here[: …]` or `# not-here: REASON`"
        return block
    block.kind, rest = marker.group(1), (marker.group(2) or "").strip()
    if block.kind == "not-here":
        block.problem = "" if rest else "`# not-here:` needs a reason"
        return block
    for clause in filter(None, (part.strip() for part in rest.split(";"))):
        name, _, value = clause.partition(" ")
        if name not in CLAUSES:
            block.problem = f"unknown clause {name!r} (known: {', '.join(sorted(CLAUSES))})"
        block.clauses[name] = value.strip()
    if "timeout" in block.clauses and not block.clauses["timeout"].isdigit():
        block.problem = "timeout takes a number of seconds"
    return block


def runnable_units(blocks: list[Block]) -> tuple[list[Unit], list[str]]:
    """The runnable blocks grouped into test units, and every marker problem of the page."""
    units: list[Unit] = []
    problems = [f"line {block.line}: {block.problem}" for block in blocks if block.problem]
    serving: Unit | None = None
    for block in blocks:
        if block.kind != "runs-here" or block.problem:
            serving = None if block.kind else serving
            continue
        if "while-serving" in block.clauses:
            if serving is None:
                problems.append(f"line {block.line}: `while-serving` with no `serves` block above")
            else:
                serving.while_serving.append(block)
            continue
        units.append(Unit(block))
        serving = units[-1] if "serves" in block.clauses else None
    return units, problems


BLOCKS = parse_blocks(DOC.read_text(encoding="utf-8")) if DOC.is_file() else []
UNITS, PROBLEMS = runnable_units(BLOCKS)


def test_the_page_exists_and_has_runnable_commands() -> None:
    assert DOC.is_file(), f"{DOC} is missing"
    assert UNITS, "docs/deployment.md has no `# runs-here` block"


def test_every_shell_block_says_whether_it_runs_here() -> None:
    assert not PROBLEMS, "docs/deployment.md:\n" + "\n".join(PROBLEMS)


def test_the_parser_reads_the_convention() -> None:
    """The marker grammar on a small page, so a broken parser cannot pass silently."""
    page = "\n".join(
        [
            "<!--",
            "```bash",
            "in a comment",
            "```",
            "-->",
            "```bash",
            "# runs-here: serves http://127.0.0.1:8000/x; timeout 60",
            "server",
            "```",
            "```python",
            "# runs-here",
            "```",
            "```bash",
            "# runs-here: while-serving",
            "client",
            "```",
            "```sh",
            "# not-here: needs a cluster",
            "kubectl apply -k .",
            "```",
            "```bash",
            "echo unmarked",
            "```",
        ]
    )
    blocks = parse_blocks(page)
    assert [(block.line, block.kind) for block in blocks] == [
        (6, "runs-here"),
        (13, "runs-here"),
        (17, "not-here"),
        (21, ""),
    ]
    units, problems = runnable_units(blocks)
    assert len(units) == 1 and units[0].block.timeout == 60
    assert units[0].block.clauses["serves"] == "http://127.0.0.1:8000/x"
    assert [block.line for block in units[0].while_serving] == [13]
    assert len(problems) == 1 and problems[0].startswith("line 21:")


@pytest.fixture
def scratch(tmp_path: Path, tiny_onnx_bundle: Path) -> Path:
    """A folder laid out like the repository (a git work tree), with outputs/demo/bundle a
    tiny ONNX bundle."""
    folder = tmp_path / "repo"
    folder.mkdir()
    for name in SCRATCH_COPIES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, symlinks=True)
        elif source.is_file():
            shutil.copy2(source, folder / name)
    shutil.copytree(tiny_onnx_bundle, folder / "outputs" / "demo" / "bundle")
    # a git work tree like a clone (actionlint finds the project by it); nothing committed
    subprocess.run(["git", "init", "-q", str(folder)], check=True, timeout=30)
    return folder


def block_env(scratch: Path, clip_har_cache: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in UNSET}
    env = {key: value for key, value in env.items() if not key.startswith("CLIP_HAR_SERVE_")}
    env.update(
        PATH=tool_path(),
        CLIP_HAR_CACHE=str(clip_har_cache),
        XDG_STATE_HOME=str(scratch / ".state"),
        HOME=str(scratch / ".home"),
        DVC_NO_ANALYTICS="1",
        MLFLOW_ENABLE_TELEMETRY="false",
    )
    (scratch / ".home").mkdir(exist_ok=True)
    return env


def move_ports(unit: Unit) -> tuple[str, list[str]]:
    """The `serves` URL and the unit's block texts with the URL's ports, and every port
    `--…-port N` of the serving block names, moved to free ports."""
    url = unit.block.clauses["serves"]
    ports = set(re.findall(r":(\d{2,5})\b", url))
    ports |= set(re.findall(r"--[\w-]*port[ =](\d{2,5})\b", unit.block.text))
    texts = [block.text for block in unit.blocks]
    for port in ports:
        moved = str(free_port())
        pattern = re.compile(rf"(?<![\d.]){port}(?!\d)")
        url = pattern.sub(moved, url)
        texts = [pattern.sub(moved, text) for text in texts]
    return url, texts


def run_block(text: str, cwd: Path, env: dict[str, str], timeout: float, line: int) -> None:
    try:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", text],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"docs/deployment.md:{line} ran past {timeout:.0f} s: {error.output!r}")
    assert result.returncode == 0, (
        f"docs/deployment.md:{line} exited {result.returncode}\n{text}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    """True once ``url`` answers 200; False when ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def stop_group(process: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM the block's process group, wait for all of it to end (SIGKILL after
    ``grace``) and return the shell's exit code."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()  # reap the shell once it exits: a zombie still counts in its group
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait(timeout=grace)


@pytest.mark.parametrize("unit", UNITS, ids=[f"line{unit.block.line}" for unit in UNITS])
def test_documented_commands_run(unit: Unit, scratch: Path, clip_har_cache: Path) -> None:
    for block in unit.blocks:
        for tool in block.needs:
            require_tool(tool, f"docs/deployment.md:{block.line} needs it")
    env = block_env(scratch, clip_har_cache)
    if "serves" not in unit.block.clauses:
        run_block(unit.block.text, scratch, env, unit.block.timeout, unit.block.line)
        return
    url, texts = move_ports(unit)
    log = scratch / "served.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", texts[0]],
            cwd=scratch,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ready = wait_for(url, process, unit.block.timeout)
        assert ready, (
            f"docs/deployment.md:{unit.block.line}: {url} did not answer 200 "
            f"(exit {process.poll()})\n{log.read_text(errors='replace')[-4000:]}"
        )
        for block, text in zip(unit.while_serving, texts[1:], strict=True):
            run_block(text, scratch, env, block.timeout, block.line)
    finally:
        code = stop_group(process, grace=60)
    # 0: stopped cleanly; 143: the shell itself took the SIGTERM while its command stopped
    assert code in (0, 143, -signal.SIGTERM), log.read_text(errors="replace")[-4000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, timeout=2)
