"""Ground layer: device names (``cpu``, ``cuda``, ``cuda:N``), parsed in one place.

Torch-free, so that settings and the CLI can check a device before any runtime loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from clip_har.errors import UsageError

DEVICE_NAMES = "cpu, cuda or cuda:N"
_DEVICE = re.compile(r"^(?:cpu|cuda(?::(?P<index>\d+))?)$")


@dataclass(frozen=True)
class Device:
    """A parsed device: its type and, for ``cuda:N``, the GPU index."""

    type: Literal["cpu", "cuda"]
    index: int | None = None

    @property
    def is_cuda(self) -> bool:
        return self.type == "cuda"

    @property
    def cuda_index(self) -> int:
        """The GPU index (``cuda`` alone means GPU 0)."""
        return self.index or 0

    def __str__(self) -> str:
        """The canonical name, as torch and ONNX Runtime read it."""
        return self.type if self.index is None else f"{self.type}:{self.index}"


def parse_device(name: str) -> Device:
    """Parse ``cpu``, ``cuda`` or ``cuda:N`` (surrounding spaces ignored)."""
    text = name.strip()
    match = _DEVICE.match(text)
    if match is None:
        raise UsageError(f"device must be {DEVICE_NAMES}, got '{name}'")
    if text == "cpu":
        return Device("cpu")
    return Device("cuda", None if match["index"] is None else int(match["index"]))
