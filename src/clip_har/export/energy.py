"""Energy per image, where the platform exposes power: NVML on an NVIDIA GPU, RAPL on a
CPU when ``/sys/class/powercap`` is readable. Otherwise it is reported as unavailable,
with the reason, and never invented. See docs/export.md#energy.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_har.devices import parse_device

log = logging.getLogger(__name__)

POWERCAP_ROOT = Path("/sys/class/powercap")
_PACKAGE_ZONE = re.compile(r"intel-rapl:\d+")  # top level only: subzones are intel-rapl:N:M


@dataclass
class EnergyReading:
    """Filled in when a :meth:`EnergyMeter.measure` block exits; ``joules`` stays ``None``
    when the meter is unavailable or the counter could not be read."""

    joules: float | None = None
    seconds: float | None = None

    def per_item(self, count: int) -> float | None:
        """Joules per item (e.g. per image) over ``count`` items, or ``None``."""
        if self.joules is None or count <= 0:
            return None
        return self.joules / count

    @property
    def watts(self) -> float | None:
        """Mean power over the block, or ``None``."""
        if self.joules is None or not self.seconds:
            return None
        return self.joules / self.seconds


class EnergyMeter:
    """A cumulative energy counter. Subclasses set ``source`` and implement :meth:`_read`;
    this base class alone is the meter of a platform without one (``source == "none"``)."""

    source: str = "none"

    def __init__(self, reason: str | None = None) -> None:
        self.available = reason is None and self.source != "none"
        self.reason = reason if reason is not None or self.available else "no energy counter"

    def _read(self) -> Any:
        """A snapshot of the counters; :meth:`_joules` turns two snapshots into joules."""
        raise NotImplementedError

    def _joules(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    @contextmanager
    def measure(self) -> Iterator[EnergyReading]:
        """Measure the energy used while the block runs: ``with meter.measure() as r: ...``
        then ``r.joules`` (``None`` when unavailable or unreadable)."""
        reading = EnergyReading()
        started = time.perf_counter()
        start = self._safe_read() if self.available else None
        try:
            yield reading
        finally:
            reading.seconds = time.perf_counter() - started
            end = self._safe_read() if start is not None else None
            if start is not None and end is not None:
                reading.joules = self._joules(start, end)

    def _safe_read(self) -> Any:
        try:
            return self._read()
        except Exception as error:  # a counter that vanished mid-run: no number, not a crash
            log.warning("%s energy counter could not be read: %s", self.source, error)
            return None

    def describe(self) -> dict[str, str | bool | None]:
        """``{"source", "available", "reason"}`` for a benchmark's machine section."""
        return {"source": self.source, "available": self.available, "reason": self.reason}

    def __repr__(self) -> str:
        state = "available" if self.available else f"unavailable: {self.reason}"
        return f"{type(self).__name__}({self.source}, {state})"


class RaplMeter(EnergyMeter):
    """CPU package energy from the Linux powercap RAPL interface."""

    source = "rapl"

    def __init__(self, powercap_root: Path = POWERCAP_ROOT) -> None:
        self.root = Path(powercap_root)
        self.zones: list[Path] = []
        self._ranges: dict[Path, int] = {}
        super().__init__(self._probe())

    def _probe(self) -> str | None:
        """``None`` when every package counter is readable, else why not."""
        if not self.root.is_dir():
            return (
                f"no RAPL powercap interface at {self.root} (not a Linux host with an Intel/AMD "
                "CPU, or a VM/container that does not expose it)"
            )
        zones = []
        for zone in sorted(self.root.iterdir()):
            if not _PACKAGE_ZONE.fullmatch(zone.name):
                continue
            name = _read_text(zone / "name")
            if name is not None and not name.startswith("package"):
                continue  # e.g. "psys", the whole platform, which already includes the packages
            zones.append(zone)
        if not zones:
            return f"no RAPL package zone (intel-rapl:N) under {self.root}"
        for zone in zones:
            for leaf in ("energy_uj", "max_energy_range_uj"):
                path = zone / leaf
                try:
                    value = int(path.read_text().strip())
                except PermissionError:
                    return (
                        f"{path} is not readable by this user (Linux makes RAPL counters "
                        "root-only since 5.10); run as root or grant read access"
                    )
                except (OSError, ValueError) as error:
                    return f"cannot read RAPL counter {path} ({error})"
                if leaf == "max_energy_range_uj":
                    self._ranges[zone] = value
        self.zones = zones
        return None

    def _read(self) -> dict[Path, int]:
        return {zone: int((zone / "energy_uj").read_text().strip()) for zone in self.zones}

    def _joules(self, start: dict[Path, int], end: dict[Path, int]) -> float:
        total = 0
        for zone in self.zones:
            delta = end[zone] - start[zone]
            if delta < 0:  # the counter wrapped around max_energy_range_uj
                delta += self._ranges[zone] + 1
            total += delta
        return total / 1e6


class NvmlMeter(EnergyMeter):
    """Whole-GPU energy from NVML (package ``nvidia-ml-py``, imported lazily)."""

    source = "nvml"

    def __init__(self, device_index: int = 0) -> None:
        self.device_index = device_index
        self._nvml: Any = None
        self._handle: Any = None
        super().__init__(self._probe())

    def _probe(self) -> str | None:
        try:
            import pynvml
        except ImportError:
            return "pynvml is not installed (pip install nvidia-ml-py)"
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            return f"NVML could not start ({error}): no NVIDIA driver is loaded on this machine"
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except pynvml.NVMLError as error:
            pynvml.nvmlShutdown()
            return f"NVML has no GPU {self.device_index} ({error})"
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except pynvml.NVMLError as error:
            name = pynvml.nvmlDeviceGetName(handle)
            pynvml.nvmlShutdown()
            if isinstance(error, pynvml.NVMLError_NotSupported):
                return (
                    f"GPU {self.device_index} ({name}) does not report total energy "
                    "(nvmlDeviceGetTotalEnergyConsumption is not supported; it needs Volta or "
                    "newer)"
                )
            return f"cannot read the energy of GPU {self.device_index} ({name}): {error}"
        self._nvml, self._handle = pynvml, handle
        return None

    def _read(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def _joules(self, start: int, end: int) -> float:
        return (end - start) / 1e3

    def close(self) -> None:
        """Release NVML (the meter is unavailable afterwards)."""
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml, self._handle = None, None
            self.available, self.reason = False, "closed"


def energy_meter(device: str) -> EnergyMeter:
    """The meter for ``device``: NVML for ``cuda`` / ``cuda:N``, RAPL for anything else.
    It may be unavailable (``available`` False, ``reason`` says why, joules ``None``)."""
    parsed = parse_device(device)
    if parsed.is_cuda:
        meter: EnergyMeter = NvmlMeter(parsed.cuda_index)
    else:
        meter = RaplMeter()
    if not meter.available:
        log.info("energy per image unavailable on %s: %s", device, meter.reason)
    return meter


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
