"""Table cells that stay readable on a narrow terminal (80 columns when stdout is not one).

Columns of short identifiers (a format, a precision, a status, a class name) and numbers are
added with ``no_wrap=True``: Rich shrinks the wrappable columns first, so these stay whole.
Paths go in a :class:`PathCell`, which breaks a path after a ``/`` rather than inside a name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.measure import Measurement
from rich.text import Text

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

__all__ = ["PathCell"]

_PARTS = re.compile(r"[^/]*/|[^/]+")  # "a/b/c.pt" -> "a/", "b/", "c.pt"


class PathCell:
    """A path shown whole when it fits its column, otherwise broken after a ``/``; a single
    part wider than the column is folded inside it (never cut). Not markup: no escaping."""

    def __init__(self, path: str | Path, style: str = "") -> None:
        self.text = str(path)
        self.style = style
        self.parts = _PARTS.findall(self.text) or [""]

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        longest = max(cell_len(word) for word in re.split(r"[/\s]", self.text))
        return Measurement(longest, cell_len(self.text)).clamp(max_width=options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(options.max_width, 1)
        lines = [""]
        for part in self.parts:
            if lines[-1] and cell_len(lines[-1] + part) > width:
                lines.append("")
            lines[-1] += part
        yield Text("\n".join(lines), style=self.style, overflow="fold")
