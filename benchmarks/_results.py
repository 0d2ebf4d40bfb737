"""Shared by every benchmark: machine description and the results files.

Every ``benchmarks/results/NAME.json`` has the same top level::

    {"benchmark", "machine", "date", "results", "ratios", "goals", "notes"?}

so a goal is checked by comparing ``ratios[name]`` with ``goals[name]``; a ratio is
always "bigger is better". ``NAME.md`` is the same content as a human table.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clip_har.export.benchmark import machine_info, markdown_cell
from clip_har.io import json_safe

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _markdown(payload: dict[str, Any]) -> str:
    machine = payload["machine"]
    lines = [
        f"# Benchmark: {payload['benchmark']}",
        "",
        f"{payload['date']} · {machine['cpu']} · {machine['cores']} cores "
        f"({machine['cores_usable']} usable) · Python {machine['python']} · "
        f"torch {machine['torch']} · numpy {machine['numpy']} · Pillow {machine['pillow']} · "
        f"transformers {machine['transformers']} · onnxruntime {machine['onnxruntime']}",
        "",
    ]
    rows: list[dict[str, Any]] = payload["results"]
    if rows:
        columns: list[str] = []
        for row in rows:
            columns.extend(key for key in row if key not in columns)
        lines += ["## Results", ""]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in rows:
            lines.append("| " + " | ".join(markdown_cell(row.get(c)) for c in columns) + " |")
        lines.append("")
    ratios: dict[str, Any] = payload["ratios"]
    goals: dict[str, Any] = payload["goals"]
    lines += [
        "## Ratios (bigger is better)",
        "",
        "| ratio | value | goal | met |",
        "|---|---|---|---|",
    ]
    for name in list(ratios) + [g for g in goals if g not in ratios]:
        value, goal = ratios.get(name), goals.get(name)
        met = "—" if goal is None else ("✅" if value is not None and value >= goal else "❌")
        lines.append(f"| {name} | {markdown_cell(value)} | {markdown_cell(goal)} | {met} |")
    if payload.get("notes"):
        lines += ["", "## Notes", "", str(payload["notes"])]
    return "\n".join(lines) + "\n"


def write_results(
    name: str,
    results: list[dict[str, Any]],
    ratios: dict[str, float],
    goals: dict[str, float],
    notes: str = "",
) -> tuple[Path, Path]:
    """Write ``results/NAME.json`` and ``results/NAME.md``; return both paths."""
    payload: dict[str, Any] = {
        "benchmark": name,
        "machine": machine_info(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": results,
        "ratios": ratios,
        "goals": goals,
    }
    if notes:
        payload["notes"] = notes
    payload = json_safe(payload)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS_DIR / f"{name}.json"
    md_path = RESULTS_DIR / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(_markdown(payload))
    return json_path, md_path


def print_ratios(
    ratios: dict[str, float], goals: dict[str, float], paths: tuple[Path, Path]
) -> None:
    """Print each ratio against its goal, then where the results were written."""
    for name, value in ratios.items():
        goal = goals.get(name)
        mark = "" if goal is None else (" ✅" if value >= goal else f" ❌ (goal {goal})")
        print(f"  {name}: {value}{mark}")
    print(f"wrote {paths[0]} and {paths[1]}")
